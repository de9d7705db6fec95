"""What detection and segmentation training share: COCO-layout folders, per-image labels looked up by index,
no label-blind image augmentation, and a model (DETR, Segmenter) whose ViT backbone may start pre-trained.

``cfg.dataset`` is ``coco:DIR`` (``DIR/train`` and ``DIR/val``, each with ``annotations.json``); the in-memory
loader hands out (images, item indices), so batching and exact resume stay the Trainer's. With ``init_from`` (a
vitkit run or model file: a supervised ViT or an MAE run's encoder) the backbone takes that ViT's architecture and
weights, its position table resampled to the images here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import create_model
from ..weights import load_pretrained
from .finetune import pretrained_backbone
from .trainer import Trainer

__all__ = ["DenseTaskTrainer", "coco_root"]

log = logging.getLogger(__name__)


def coco_root(name: str) -> Path:
    """``coco:DIR`` -> DIR."""
    if not name.startswith("coco:"):
        raise ValueError(
            f"detection / segmentation data is named coco:DIR (DIR/train and DIR/val with annotations.json), "
            f"got {name!r}"
        )
    return Path(name[5:]).expanduser()


class DenseTaskTrainer(Trainer):
    """Base of :class:`~vitkit.train.detect.DetectionTrainer` and :class:`~vitkit.train.segment.SegmentationTrainer`.

    Subclasses set ``modality_name``, ``dataset_type`` (built as ``dataset_type(folder, image_size=...)``),
    ``model_type`` and ``example_model``, and give the loss and evaluation.
    """

    modality_name = "detection"
    dataset_type: type = object
    model_type: type = nn.Module
    example_model = ""

    def __init__(self, cfg, **kwargs: Any) -> None:
        moves = {"hflip": cfg.hflip, "pad_crop": cfg.pad_crop, "rrc_scale": cfg.rrc_scale, "mixup": cfg.mixup,
                 "cutmix": cfg.cutmix, "randaugment": cfg.randaugment, "trivialaugment": cfg.trivialaugment,
                 "random_erasing": cfg.random_erasing, "teacher": cfg.teacher}  # fmt: skip
        used = [k for k, v in moves.items() if v]
        if used:
            raise ValueError(
                f"{self.modality_name} training does not move its labels with image augmentation: drop {used}"
            )
        super().__init__(cfg, **kwargs)

    def detect_modality(self, train_data=None) -> str:
        return self.modality_name

    def _build_dataset(self, split: str):
        folder = coco_root(self.cfg.dataset) / ("train" if split == "train" else "val")
        return self.dataset_type(folder, image_size=self.cfg.model_args.get("img_size"))

    def build_model(self, in_chans: int) -> nn.Module:
        """The registry model for the data's classes, channels and image size; its backbone from ``init_from``."""
        cfg = self.cfg
        h = int(self.train_data.raw.shape[-2])
        args: dict[str, Any] = {"num_classes": len(self.classes), "in_chans": in_chans, "img_size": h,
                                **cfg.model_args}  # fmt: skip
        state = None
        if cfg.init_from:
            args["backbone"], args["backbone_args"], state = pretrained_backbone(cfg.init_from, in_chans)
        model = create_model(cfg.model, **args)
        if not isinstance(model, self.model_type):
            raise ValueError(
                f"{self.modality_name} needs a {self.model_type.__name__} model (e.g. {self.example_model}), "
                f"got {cfg.model!r}"
            )
        if state is not None:
            load_pretrained(model.backbone, state, ignore_head=True)
            log.info("%s backbone (%s) from %s", self.modality_name, args["backbone"], cfg.init_from)
        return model

    def count_correct(self, outputs, targets: Tensor) -> Tensor:
        return torch.zeros((), device=self.device)  # the task's metrics come from evaluate()

    def data_config(self) -> dict[str, Any]:
        return {**super().data_config(), "modality": self.modality_name}

    # ------------------------------------------------------------ the end of training
    loss_label = "loss"

    def summary_figures(self, result: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        """The task's figures from ``evaluate(model, return_outputs=True)`` for the summary."""
        raise NotImplementedError

    def draw(self, result: dict[str, Any]) -> None:
        """Draw the validation predictions in ``result`` into the run directory."""
        raise NotImplementedError

    def finish(self, stopped_early: bool = False) -> dict[str, Any]:
        """Save the model; write its validation figures (``eval.json``), drawings, curves and the summary."""
        from ..plots import plot_training_curves
        from ..weights.io import save as save_model

        model = self.final_model()
        result = self.evaluate(model, return_outputs=True)
        summary: dict[str, Any] = {
            "run_dir": str(self.run_dir), "epochs": self.epoch, "val_loss": result["val_loss"],
            **self.summary_figures(result, model), "elapsed_s": self.history[-1]["elapsed"] if self.history else 0.0,
            "params": sum(p.numel() for p in model.parameters()), "train_samples": len(self.train_data),
            "init_from": self.cfg.init_from, "world_size": self.dist.world_size, "stopped_early": stopped_early,
        }  # fmt: skip
        if not self.is_main:
            return summary
        save_model(model, self.run_dir / "model.safetensors", data_config=self.data_config())
        (self.run_dir / "eval.json").write_text(
            json.dumps({k: v for k, v in summary.items() if k.startswith("val_")}, indent=2)
        )
        self.draw(result)
        plot_training_curves(
            self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", loss_label=self.loss_label
        )
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
