"""Semantic segmentation with the Trainer: a Segmenter on COCO + masks folders (``vitkit segment train``).

:class:`SegmentationTrainer` is the :class:`~vitkit.train.dense.DenseTaskTrainer` (COCO folders, per-image masks
looked up by item index, a backbone pre-trained in vitkit via ``init_from``) with per-pixel cross-entropy.
Evaluation reports the loss, pixel accuracy and mIoU on the validation split; the end of training draws image /
ground truth / prediction overlays (``overlays.png``) and saves the per-class IoU (``eval.json``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.segmentation import SegmentationDataset
from ..models.segmenter import Segmenter, confusion_metrics, segmentation_metrics
from .dense import DenseTaskTrainer
from .distributed import all_reduce_sum
from .trainer import fit_trainer

__all__ = ["SegmentationTrainer", "train_segmentation", "draw_segmentation", "PALETTE"]

# background black, then distinct colours (tab10)
PALETTE = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip


class SegmentationTrainer(DenseTaskTrainer):
    """Segmenter training; ``cfg.dataset`` is ``coco:DIR`` whose splits hold ``masks/``."""

    modality_name = "segmentation"
    dataset_type = SegmentationDataset
    model_type = Segmenter
    example_model = "segmenter_vit_canvas"

    def _masks(self, dataset: SegmentationDataset, index: Tensor) -> Tensor:
        return dataset.masks[index.cpu()].to(self.device, non_blocking=True)

    def _default_loss(self, logits: Tensor, index: Tensor, images: Tensor | None = None) -> Tensor:
        return F.cross_entropy(logits.float(), self._masks(self.train_data, index))

    @torch.inference_mode()
    def evaluate(self, model: nn.Module | None = None, return_outputs: bool = False) -> dict[str, Any]:
        """Per-pixel loss, pixel accuracy and mIoU (over the classes present) on the validation split."""
        model = model or self.model
        was_training = model.training
        model.eval()
        num_classes = len(self.classes)
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=self.device)
        loss_sum, count, predictions = 0.0, 0, {}
        for x, index in self.val_loader:
            logits = model(self._prepare(x, train=False)).float()
            masks = self._masks(self.val_data, index)
            loss_sum += float(F.cross_entropy(logits, masks, reduction="sum"))
            count += masks.numel()
            pred = logits.argmax(1)
            confusion += segmentation_metrics(pred, masks, num_classes)["confusion"]
            if return_outputs:
                predictions.update(zip(index.tolist(), pred.to(torch.uint8).cpu(), strict=True))
        model.train(was_training)
        loss_sum, count, *cells = all_reduce_sum(loss_sum, count, *confusion.flatten(), device=self.device)
        metrics = confusion_metrics(torch.tensor(cells).reshape(num_classes, num_classes))
        out: dict[str, Any] = {
            "val_loss": loss_sum / max(count, 1), "val_pixel_acc": metrics["pixel_acc"], "val_mIoU": metrics["mIoU"],
            "val_iou": [None if math.isnan(v) else v for v in metrics["iou"]],
        }  # fmt: skip
        if return_outputs:
            out["predictions"] = torch.stack([predictions[i] for i in range(len(predictions))])
        return out

    loss_label = "pixel loss"

    def summary_figures(self, result: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        return {"val_pixel_acc": result["val_pixel_acc"], "val_mIoU": result["val_mIoU"],
                "val_iou": dict(zip(self.classes, result["val_iou"], strict=True)),
                "decoder": getattr(model, "decoder_type", None)}  # fmt: skip

    def draw(self, result: dict[str, Any]) -> None:
        draw_segmentation(self.val_data, result["predictions"], self.run_dir / "overlays.png")


def _overlay(image: Tensor, mask: Tensor, alpha: float = 0.55) -> Tensor:
    """(C, H, W) uint8 image and (H, W) class map -> (H, W, 3) uint8, classes > 0 tinted with their colour."""
    rgb = (image.expand(3, -1, -1) if image.shape[0] == 1 else image).permute(1, 2, 0).float()
    colours = torch.tensor(
        [PALETTE[i % len(PALETTE)] for i in range(int(mask.max()) + 1)], dtype=torch.float32
    )
    tinted = (1 - alpha) * rgb + alpha * colours[mask.long()]
    return torch.where((mask > 0)[..., None], tinted, rgb).round().to(torch.uint8)


def draw_segmentation(
    dataset: SegmentationDataset, predictions: Tensor, out_png: str | Path, n: int = 6, scale: int = 3
) -> Path:
    """Rows of validation images: the image, the ground-truth mask and the predicted mask as coloured overlays."""
    from PIL import Image

    from ..weights.io import atomic_write

    rows = []
    for i in range(min(n, len(dataset))):
        img = dataset.raw[i]
        panels = [_overlay(img, torch.zeros_like(dataset.masks[i])), _overlay(img, dataset.masks[i]),
                  _overlay(img, predictions[i])]  # fmt: skip
        rows.append(torch.cat(panels, dim=1))
    sheet = Image.fromarray(torch.cat(rows, dim=0).numpy())
    sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)
    return atomic_write(out_png, lambda tmp: sheet.save(tmp, format="PNG"))


def train_segmentation(
    recipe: str | None = None, config_file: str | Path | None = None, resume: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:  # fmt: skip
    """Python API of ``vitkit segment train``."""
    return fit_trainer(SegmentationTrainer, recipe, config_file, resume, **overrides)
