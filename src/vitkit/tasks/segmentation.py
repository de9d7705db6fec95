"""Semantic segmentation: a Segmenter on COCO + masks folders (``vitkit segment train``).

:class:`Segmentation` is a :class:`~vitkit.tasks.dense.DenseTask` (COCO folders, per-image masks
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
from .base import Batch
from .dense import DenseTask
from .drawings import PALETTE, overlay

__all__ = ["Segmentation", "segmentation_sheet", "draw_segmentation", "PALETTE"]


class Segmentation(DenseTask):
    """Segmenter training; ``cfg.dataset`` is ``coco:DIR`` whose splits hold ``masks/``."""

    name = "segmentation"
    dataset_type = SegmentationDataset
    model_type = Segmenter
    example_model = "segmenter_vit_canvas"
    default_model = "segmenter_vit_canvas"
    selection = ("val_mIoU", "max")
    loss_label = "pixel loss"
    quality_curve = ("mIoU", "validation mean IoU", "mIoU", "max")

    def _masks(self, dataset: SegmentationDataset, index: Tensor) -> Tensor:
        return dataset.masks[index.cpu()].to(self.device, non_blocking=True)

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        logits = model(batch["inputs"])
        return {
            "loss": F.cross_entropy(logits.float(), self._masks(self.train_data, batch["index"])),
            "output": logits,
        }

    def eval_step(self, model: nn.Module, batch: Batch, final: bool) -> tuple[dict, Any]:
        index, n = batch["index"], len(self.classes)
        logits = model(batch["inputs"]).float()
        masks = self._masks(self.val_data, index)
        pred = logits.argmax(1)
        sums = {"loss": float(F.cross_entropy(logits, masks, reduction="sum")), "count": masks.numel(),
                "confusion": segmentation_metrics(pred, masks, n)["confusion"]}  # fmt: skip
        kept = dict(zip(index.tolist(), pred.to(torch.uint8).cpu(), strict=True)) if final else None
        return sums, kept

    def metrics(self, sums: dict[str, Any], kept: list[Any], model: nn.Module) -> dict[str, Any]:
        """Per-pixel loss, pixel accuracy and mIoU (over the classes present) on the validation split."""
        n = len(self.classes)
        confusion = sums.get("confusion", torch.zeros(n, n))
        metrics = confusion_metrics(confusion.reshape(n, n))
        out: dict[str, Any] = {
            "val_loss": sums.get("loss", 0.0) / max(sums.get("count", 0), 1), "val_pixel_acc": metrics["pixel_acc"],
            "val_mIoU": metrics["mIoU"], "val_iou": [None if math.isnan(v) else v for v in metrics["iou"]],
        }  # fmt: skip
        if kept:
            predictions = {i: p for share in kept for i, p in share.items()}
            out["predictions"] = torch.stack([predictions[i] for i in sorted(predictions)])
        return out

    def summary(self, result: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        return {"val_loss": result["val_loss"], "val_pixel_acc": result["val_pixel_acc"],
                "val_mIoU": result["val_mIoU"], "val_iou": dict(zip(self.classes, result["val_iou"], strict=True)),
                "decoder": getattr(model, "decoder_type", None), "init_from": self.cfg.init_from}  # fmt: skip

    def draw(self, result: dict[str, Any], run_dir: Path) -> None:
        draw_segmentation(self.val_data, result["predictions"], run_dir / "overlays.png")

    @classmethod
    def predict(cls, model: nn.Module, inputs: list[Any], source, out_dir: Path, **options: Any) -> list:
        """Each image's class map at its own size: a mask PNG (pixel value = class index), an overlay PNG, and the
        share of the image each class covers."""
        from PIL import Image

        from ..weights.files import atomic_write
        from .inputs import output_stem, read_images

        classes = list((model.data_config or {})["classes"])
        x, images, names = read_images(inputs, model.data_config)
        out_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for i, (name, image) in enumerate(zip(names, images, strict=True)):
            with torch.inference_mode():
                logits = F.interpolate(model(x[i : i + 1]).float(), size=image.shape[:2], mode="bilinear")
            mask = logits[0].argmax(0).to(torch.uint8)
            stem = out_dir / output_stem(name, i)
            mask_png = atomic_write(
                f"{stem}-mask.png", lambda t, m=mask: Image.fromarray(m.numpy()).save(t, format="PNG")
            )
            pixels = torch.from_numpy(image.reshape(*image.shape[:2], -1)).permute(2, 0, 1)
            over = overlay(pixels, mask).numpy()
            overlay_png = atomic_write(
                f"{stem}-overlay.png", lambda t, o=over: Image.fromarray(o).save(t, format="PNG")
            )
            counts = torch.bincount(mask.flatten().long(), minlength=len(classes)).float() / mask.numel()
            cover = {classes[c]: round(float(v), 4) for c, v in enumerate(counts.tolist()) if v > 0}
            results.append(
                {"path": name, "mask": str(mask_png), "overlay": str(overlay_png), "classes": cover}
            )
        return results

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        return "\n".join(
            f"{r['path']}: {r['classes']}\n  mask {r['mask']}, overlay {r['overlay']}" for r in results
        )

    @classmethod
    def report(cls, summary: dict[str, Any]) -> str:
        return f"val mIoU: {summary['val_mIoU']:.3f}  pixel acc: {summary['val_pixel_acc']:.4f}"


def segmentation_sheet(dataset: SegmentationDataset, predictions: Tensor, n: int = 6) -> Any:
    """The Figure of :func:`draw_segmentation`: rows of the first ``n`` validation images (titled with their file
    names), their ground truth and predicted masks as coloured overlays, a legend of the class colours."""
    from .drawings import segmentation_figure

    names = getattr(dataset, "file_names", None)
    k = min(n, len(dataset))
    titles = [Path(names[i]).name if names else f"image #{i}" for i in range(k)]
    return segmentation_figure([dataset.raw[i] for i in range(k)], [predictions[i] for i in range(k)],
                               dataset.classes, titles, truth=[dataset.masks[i] for i in range(k)])  # fmt: skip


def draw_segmentation(
    dataset: SegmentationDataset, predictions: Tensor, out_png: str | Path, n: int = 6
) -> Path:
    """Write :func:`segmentation_sheet` (``overlays.png`` of a segmentation run) to ``out_png``."""
    from .drawings import save

    return save(segmentation_sheet(dataset, predictions, n), out_png)
