"""What detection and segmentation share: COCO-layout folders, per-image labels looked up by index, no
label-blind image augmentation, and a model (DETR, Segmenter) whose ViT backbone may start pre-trained.

``cfg.dataset`` is ``coco:DIR`` (``DIR/train`` and ``DIR/val``, each with ``annotations.json``); the in-memory
loader hands out (images, item indices), so batching and exact resume stay the engine's. With ``init_from`` (a
vitkit run or model file: a supervised ViT or an MAE run's encoder) the backbone takes that ViT's architecture and
weights, its position table resampled to the images here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..registry import create_model
from ..weights import load_pretrained
from ..weights.pretrained import recorded_grid
from .base import Batch, Task
from .finetune import pretrained_backbone, trained_model
from .inputs import ImageInput

__all__ = ["DenseTask", "coco_root"]

log = logging.getLogger(__name__)


def coco_root(name: str) -> Path:
    """``coco:DIR`` -> DIR."""
    if not name.startswith("coco:"):
        raise ValueError(
            f"detection / segmentation data is named coco:DIR (DIR/train and DIR/val with annotations.json), "
            f"got {name!r}"
        )
    return Path(name[5:]).expanduser()


class DenseTask(Task):
    """Base of :class:`~vitkit.tasks.detection.Detection` and :class:`~vitkit.tasks.segmentation.Segmentation`.

    Subclasses set ``dataset_type`` (built as ``dataset_type(folder, image_size=...)``), ``model_type`` and
    ``example_model``, and give the loss, evaluation and drawings.
    """

    # no image augmentation: it would move the pixels but not the boxes / masks
    options = frozenset({"init_from", "on_bad_image"})
    dataset_type: ClassVar[type] = object
    model_type: ClassVar[type] = nn.Module
    example_model: ClassVar[str] = ""
    continues_trained = False  # build_model took every weight from a model of this task (init_from)

    def build_data(self, train_data=None, val_data=None):
        root = coco_root(self.cfg.dataset)
        kw = dict(image_size=self.cfg.model_args.get("img_size"), on_error=self.cfg.on_bad_image)
        self.train_data = train_data if train_data is not None else self.dataset_type(root / "train", **kw)
        self.val_data = val_data if val_data is not None else self.dataset_type(root / "val", **kw)
        return self.train_data, self.val_data

    @property
    def classes(self) -> list[str]:
        return list(self.train_data.classes)

    def build_model(self, in_chans: int) -> nn.Module:
        """The registry model for the data's classes, channels and image size; its backbone from ``init_from``."""
        cfg = self.cfg
        h = int(self.train_data.raw.shape[-2])
        args: dict[str, Any] = {"num_classes": len(self.classes), "in_chans": in_chans, "img_size": h,
                                **cfg.model_args}  # fmt: skip
        state = None
        if cfg.init_from:
            trained = trained_model(cfg.init_from, self.model_type)
            self.continues_trained = trained is not None
            if trained is not None:
                return self._continue(trained, in_chans, h)
            args["backbone"], args["backbone_args"], state = pretrained_backbone(cfg.init_from, in_chans)
        model = create_model(cfg.model, **args)
        if not isinstance(model, self.model_type):
            raise ValueError(
                f"{self.name} needs a {self.model_type.__name__} model (e.g. {self.example_model}), got {cfg.model!r}"
            )
        if state is not None:
            load_pretrained(
                model.backbone, state, ignore_head=True, old_grid=recorded_grid(args["backbone_args"])
            )
            log.info("%s backbone (%s) from %s", self.name, args["backbone"], cfg.init_from)
        return model

    # what --model-args may change in a model trained on from every weight: rates, not the architecture
    RATE_ARGS: ClassVar[frozenset[str]] = frozenset({"drop_rate"})
    CONTINUE_ARGS: ClassVar[frozenset[str]] = RATE_ARGS
    # modules those arguments may add (their weights start from their initialisation), as state-dict key prefixes
    ADDED_MODULES: ClassVar[tuple[str, ...]] = ()

    def _continue(self, trained: nn.Module, in_chans: int, img_size: int) -> nn.Module:
        """A copy of ``trained`` (this task's model from ``init_from``: its architecture, every weight, the mean/std
        it was trained with), ``cfg.model_args`` applied where they change a rate (``CONTINUE_ARGS``).

        Raises:
            ValueError: other classes (names, or their number), channels or image size than the data here, or a
                model argument that changes the architecture; each named.
        """
        config, source = dict(trained.config), self.cfg.init_from
        recorded = getattr(trained, "data_config", None) or {}
        have = {"classes": recorded.get("classes") or config["num_classes"],
                "channels": config["backbone_args"].get("in_chans"),
                "image size": config["backbone_args"].get("img_size")}  # fmt: skip
        need = {"classes": self.classes if recorded.get("classes") else len(self.classes), "channels": in_chans,
                "image size": img_size}  # fmt: skip
        for what, value in have.items():
            if value != need[what]:
                raise ValueError(
                    f"{self.name}: {source} was trained for {what} {value}; {self.cfg.dataset} has {need[what]} "
                    f"(to start only a backbone, --from a ViT run: a classifier or an MAE run)"
                )
        changed = sorted(k for k, v in self.cfg.model_args.items() if config.get(k, object()) != v)
        if set(changed) - self.CONTINUE_ARGS:
            raise ValueError(
                f"{self.name}: model_args {changed} would change the architecture of {source}; training on from "
                f"every weight may change only {sorted(self.CONTINUE_ARGS)}"
            )
        model = self._load_continued(trained, changed)
        # normalise as the weights were trained, not with this data's statistics
        if recorded.get("mean") is not None:
            model.pretrained_cfg = {"mean": recorded["mean"], "std": recorded["std"]}
        name = getattr(trained, "model_name", "")
        if name:  # the architecture the weights came with, in config.yaml too
            model.model_name = self.cfg.model = name
        log.info("%s: every weight from %s (%s)", self.name, source, name or type(trained).__name__)
        return model

    def _load_continued(self, trained: nn.Module, changed: list[str]) -> nn.Module:
        """``trained``'s architecture with ``cfg.model_args``, every weight loaded; a module those arguments add
        (``ADDED_MODULES``) starts from its initialisation, and once trained is not changed by them."""
        state, source = trained.state_dict(), self.cfg.init_from
        kept = [k for k in state if k.startswith(self.ADDED_MODULES)] if self.ADDED_MODULES else []
        if kept and set(changed) - self.RATE_ARGS:
            raise ValueError(
                f"{self.name}: model_args {changed} would change the trained {kept[0].split('.')[0]} of {source}; "
                f"training on from every weight may change only {sorted(self.RATE_ARGS)}"
            )
        model = type(trained)(**{**trained.config, **self.cfg.model_args})
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(self.ADDED_MODULES) for k in missing):
            raise ValueError(
                f"{self.name}: model_args {changed} leave weights of {source} without a place "
                f"({sorted(unexpected)[:3]}) or need new ones ({sorted(missing)[:3]})"
            )
        if missing:
            added = ", ".join(sorted({k.split(".")[0] for k in missing}))
            log.info("%s: %s new, from its initialisation", self.name, added)
        return model

    def setup(self, model: nn.Module) -> None:
        self.images = ImageInput(self.cfg, self.train_data, model, self.device, augment=False,
                                 memory_format=self.memory_format)  # fmt: skip

    def train_batch(self, batch) -> Batch:
        x, index = batch
        return {"inputs": self.images(x, train=False), "index": index, "size": index.shape[0]}

    eval_batch = train_batch

    def data_config(self) -> dict[str, Any]:
        return {"task": self.name, "dataset": self.cfg.dataset, "classes": self.classes, "modality": self.name,
                **self.images.data_config()}  # fmt: skip

    def summary(self, result: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        return {**super().summary(result, model), "init_from": self.cfg.init_from}

    def draw(self, result: dict[str, Any], run_dir: Path) -> None:
        """Draw the validation predictions in ``result`` into the run directory."""
        raise NotImplementedError

    def artifacts(self, model: nn.Module, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """``eval.json`` (the validation figures) and the drawings."""
        figures = {k: v for k, v in self.summary(result, model).items() if k.startswith("val_")}
        (run_dir / "eval.json").write_text(json.dumps(figures, indent=2))
        self.draw(result, run_dir)
        return {}
