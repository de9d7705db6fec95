"""Image classification: a ViT (or ResNet) on labelled images, with fine-tuning and DeiT distillation as options.

Cross-entropy with label smoothing (soft targets under mixup / cutmix), top-1 accuracy while training and on the
validation split; at the end ``eval.json`` (top-1/top-5, per-class precision/recall/F1, confusion matrix),
``confusion_matrix.png``. :class:`ClassifierTask` holds what image and text classification share.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Batch, Task, dataset_label
from .inputs import AUGMENT_OPTIONS, ImageInput

__all__ = ["ClassifierTask", "ImageClassification"]

log = logging.getLogger(__name__)

FINETUNE_OPTIONS = frozenset({"init_from", "finetune_mode", "freeze_blocks", "layer_decay"})
DISTILL_OPTIONS = frozenset({"teacher", "distill", "distill_alpha", "distill_tau"})
MIX_OPTIONS = frozenset({"mixup", "cutmix", "mix_prob"})


class ClassifierTask(Task):
    """What image and text classification share: labels, cross-entropy, accuracy, confusion matrix."""

    selection: ClassVar[tuple[str, str]] = ("val_acc", "max")
    loss_label: ClassVar[str] = "cross-entropy"

    def __init__(self, cfg, device, dist) -> None:
        super().__init__(cfg, device, dist)
        self.loss_fn = self.default_loss

    def subset(self, train_data):
        if self.cfg.train_subset is None:
            return train_data
        from ..data import stratified_subset

        return stratified_subset(train_data, self.cfg.train_subset, self.cfg.seed)

    @property
    def classes(self) -> list[str]:
        return list(self.train_data.classes)

    def default_loss(self, logits: Tensor, target: Tensor, inputs: Tensor | None = None) -> Tensor:
        if target.dtype.is_floating_point:  # soft targets from mixup/cutmix (smoothing already applied)
            return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), target, label_smoothing=self.cfg.label_smoothing)

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        output = model(batch["inputs"])
        return {"loss": self.loss_fn(output, batch["target"], batch["inputs"]), "output": output}

    def train_counts(self, batch: Batch, output: Any) -> dict[str, Tensor]:
        logits = output[0] if isinstance(output, tuple) else output  # a distilled ViT's class head
        return {"acc": (logits.detach().argmax(-1) == batch["labels"]).sum()}

    def eval_step(self, model: nn.Module, batch: Batch, final: bool) -> tuple[dict, Any]:
        logits, y = model(batch["inputs"]).float(), batch["labels"]
        sums = {"loss": F.cross_entropy(logits, y, reduction="sum").item(), "correct": int((logits.argmax(-1) == y).sum()),
                "count": len(y)}  # fmt: skip
        return sums, ((logits.cpu(), y.cpu()) if final else None)

    def metrics(self, sums: dict[str, Any], kept: list[Any], model: nn.Module) -> dict[str, Any]:
        count = max(sums.get("count", 0), 1)
        out: dict[str, Any] = {
            "val_loss": sums.get("loss", 0.0) / count,
            "val_acc": sums.get("correct", 0) / count,
        }
        if kept:
            out["logits"] = torch.cat([lg for lg, _ in kept])
            out["targets"] = torch.cat([t for _, t in kept])
        return out

    def artifacts(self, model: nn.Module, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        from ..metrics import classification_metrics
        from ..plots import plot_confusion_matrix

        metrics = classification_metrics(result["logits"], result["targets"], self.classes)
        (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
        plot_confusion_matrix(metrics["confusion_matrix"], self.classes, run_dir / "confusion_matrix.png")
        return {k: metrics[k] for k in ("top1", "top5", "macro_f1") if k in metrics}

    @classmethod
    def predict(
        cls, model: nn.Module, inputs: list[Any], source, out_dir, topk: int = 5, **options: Any
    ) -> list:
        """Top-``topk`` classes of each image (:func:`vitkit.predict.predict`)."""
        from ..predict import predict

        return predict(model, inputs, topk=topk)

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        from ..predict import format_predictions

        return format_predictions(results)

    @classmethod
    def report(cls, summary: dict[str, Any]) -> str:
        return f"val top-1: {summary['val_acc']:.4f}  best: {summary['best_val_acc']:.4f}"


class ImageClassification(ClassifierTask):
    """A classifier of images; ``init_from`` fine-tunes pre-trained weights, ``teacher`` distills (DeiT)."""

    name = "classification"
    options = frozenset(
        {"on_bad_image", "train_subset", "label_smoothing", "drop_path", *AUGMENT_OPTIONS, *MIX_OPTIONS,
         *FINETUNE_OPTIONS, *DISTILL_OPTIONS}
    )  # fmt: skip
    default_model = "vit_digits"

    def build_data(self, train_data=None, val_data=None):
        from ..data import build_dataset

        cfg = self.cfg
        if train_data is None:
            train_data = build_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, on_error=cfg.on_bad_image)
        self.train_data = self.subset(train_data)
        if val_data is None:
            val_data = build_dataset(
                cfg.dataset, cfg.val_split, data_dir=cfg.data_dir, on_error=cfg.on_bad_image
            )
        self.val_data = val_data
        return self.train_data, self.val_data

    def build_model(self, in_chans: int) -> nn.Module:
        """The configured model: from the registry, or from pre-trained weights when ``init_from`` is set."""
        from ..registry import create_model
        from .finetune import build_from_pretrained

        cfg, n = self.cfg, len(self.classes)
        if cfg.init_from:
            model = build_from_pretrained(
                cfg.init_from, n, in_chans, cfg.model, cfg.model_args, cfg.drop_path
            )
            cfg.model = (
                getattr(model, "model_name", "") or cfg.model
            )  # the architecture the weights came with
        else:
            model = create_model(cfg.model, num_classes=n, in_chans=in_chans, drop_path_rate=cfg.drop_path,
                                 **cfg.model_args)  # fmt: skip
        return model

    def prepare_model(self, model: nn.Module) -> nn.Module:
        from .finetune import apply_mode

        self.frozen_modules = apply_mode(model, self.cfg.finetune_mode, self.cfg.freeze_blocks)  # fixed parts
        return model

    def run_name(self) -> str:
        kind = f"finetune-{self.cfg.model}" if self.cfg.init_from else self.cfg.model
        return f"{kind}-{dataset_label(self.cfg.dataset)}"

    def setup(self, model: nn.Module) -> None:
        from ..data import MixupCutmix

        cfg = self.cfg
        self.images = ImageInput(cfg, self.train_data, model, self.device, memory_format=self.memory_format)
        self.mix = (
            MixupCutmix(cfg.mixup, cfg.cutmix, cfg.mix_prob, label_smoothing=cfg.label_smoothing,
                        num_classes=len(self.classes))
            if cfg.mixup > 0 or cfg.cutmix > 0 else None
        )  # fmt: skip
        if cfg.teacher:
            self.loss_fn = self._distillation_loss(model)

    def _distillation_loss(self, model: nn.Module):
        """DeiT distillation from ``cfg.teacher``; a distilled ViT student returns both heads' logits in training."""
        from .distill import DistillationLoss, TeacherInput, load_teacher

        cfg, images = self.cfg, self.images
        teacher = load_teacher(cfg.teacher, self.device).to(memory_format=self.memory_format)
        data = getattr(teacher, "data_config", None) or {}
        if data.get("in_chans") not in (None, images.in_chans):
            raise ValueError(
                f"teacher {cfg.teacher} takes {data['in_chans']}-channel images but {cfg.dataset} has "
                f"{images.in_chans}"
            )
        adapt = TeacherInput(images.mean, images.std, data.get("mean", images.mean), data.get("std", images.std),
                             data.get("img_size")).to(self.device)  # fmt: skip
        if getattr(model, "distilled", False):
            model.distilled_training = True
        return DistillationLoss(
            teacher, self.default_loss, cfg.distill, cfg.distill_alpha, cfg.distill_tau, adapt
        )

    def train_batch(self, batch) -> Batch:
        x, y = batch
        y = y.to(self.device, non_blocking=True)
        x = self.images(x, train=True)
        target = y
        if self.mix is not None:
            x, target = self.mix(x, y)
        return {"inputs": x, "labels": y, "target": target, "size": y.shape[0]}

    def eval_batch(self, batch) -> Batch:
        x, y = batch
        y = y.to(self.device)
        return {"inputs": self.images(x, train=False), "labels": y, "size": y.shape[0]}

    def finalize(self, model: nn.Module) -> nn.Module:
        from .finetune import fold_probe_heads

        fold_probe_heads(model)  # a linear probe's BatchNorm folds into its linear layer: a plain ViT again
        return model

    def data_config(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "dataset": self.cfg.dataset,
            "classes": self.classes,
            **self.images.data_config(),
        }
