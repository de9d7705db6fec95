"""Detection with the Trainer: DETR on a COCO-format dataset (``vitkit detect train --data coco:DIR``).

:class:`DetectionTrainer` is the :class:`~vitkit.train.trainer.Trainer` (image normalisation, schedule,
checkpoints and exact resume, torchrun) with DETR's set loss, through :class:`~vitkit.train.dense.DenseTaskTrainer`
(COCO folders, boxes looked up by item index, a backbone pre-trained in vitkit via ``init_from``). Evaluation reports the set loss
and COCO box AP / AP50 / AP75 from pycocotools on the validation split; the end of training draws the predictions
on validation images (``predictions.png``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.canvas import CocoDetection
from ..detection import SetCriterion, box_cxcywh_to_xyxy
from ..models.detr import DETR
from .dense import DenseTaskTrainer
from .distributed import all_reduce_sum
from .trainer import fit_trainer

__all__ = ["DetectionTrainer", "train_detection", "coco_map", "detections"]

log = logging.getLogger(__name__)


@torch.no_grad()
def detections(
    outputs: dict[str, Tensor], sizes: list[tuple[int, int]], top_k: int | None = None
) -> list[dict]:
    """DETR outputs -> per image {"boxes" xyxy pixels, "scores", "labels"} (each query's best real class)."""
    prob = outputs["pred_logits"].float().softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    out = []
    for b, (h, w) in enumerate(sizes):
        boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"][b].float()) * torch.tensor(
            [w, h, w, h], device=prob.device
        )
        order = scores[b].argsort(descending=True)[:top_k]
        out.append(
            {"boxes": boxes[order].cpu(), "scores": scores[b, order].cpu(), "labels": labels[b, order].cpu()}
        )
    return out


def coco_map(dataset: CocoDetection, results: list[dict]) -> dict[str, float]:
    """COCO box AP, AP50, AP75 (pycocotools) of per-image detections in dataset order."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets = []
    for image_id, r in zip(dataset.image_ids, results, strict=True):
        for box, score, label in zip(
            r["boxes"].tolist(), r["scores"].tolist(), r["labels"].tolist(), strict=True
        ):
            dets.append({"image_id": image_id, "category_id": dataset.category_ids[label],
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})  # fmt: skip
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO(str(dataset.annotation_file))
        evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50, ap75 = (float(v) for v in evaluator.stats[:3])
    return {"AP": max(ap, 0.0), "AP50": max(ap50, 0.0), "AP75": max(ap75, 0.0)}


class DetectionTrainer(DenseTaskTrainer):
    """DETR training; ``cfg.dataset`` is ``coco:DIR`` (``DIR/train``, ``DIR/val``), ``cfg.model`` a ``detr`` model."""

    modality_name = "detection"
    dataset_type = CocoDetection
    model_type = DETR
    example_model = "detr_vit_canvas"

    def build_model(self, in_chans: int) -> nn.Module:
        model = super().build_model(in_chans)
        self.criterion = SetCriterion(len(self.classes))
        return model

    def _targets(self, dataset: CocoDetection, index: Tensor) -> list[dict[str, Tensor]]:
        return [{k: v.to(self.device) for k, v in dataset.annotations[i].items()} for i in index.tolist()]

    def _default_loss(self, outputs: dict, index: Tensor, images: Tensor | None = None) -> Tensor:
        self.criterion.to(self.device)
        return self.criterion(outputs, self._targets(self.train_data, index))[0]

    @torch.inference_mode()
    def evaluate(self, model: nn.Module | None = None, return_outputs: bool = False) -> dict[str, Any]:
        model = model or self.model
        was_training = model.training
        model.eval()
        self.criterion.to(self.device)
        loss_sum, count, results = 0.0, 0, {}
        for x, index in self.val_loader:
            outputs = model(self._prepare(x, train=False))
            loss_sum += float(self.criterion(outputs, self._targets(self.val_data, index))[0]) * len(index)
            count += len(index)
            sizes = [self.val_data.sizes[i] for i in index.tolist()]
            for i, r in zip(index.tolist(), detections(outputs, sizes), strict=True):
                results[i] = r
        model.train(was_training)
        loss_sum, count = all_reduce_sum(loss_sum, count, device=self.device)
        out: dict[str, Any] = {"val_loss": loss_sum / max(count, 1)}
        if self.is_main and len(results) == len(self.val_data):
            metrics = coco_map(self.val_data, [results[i] for i in range(len(self.val_data))])
            out.update({f"val_{k}": v for k, v in metrics.items()})
        if return_outputs:
            out["detections"] = [results[i] for i in range(len(results))]
        return out

    loss_label = "set loss"

    def summary_figures(self, result: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        return {k: result[k] for k in ("val_AP", "val_AP50", "val_AP75") if k in result}

    def draw(self, result: dict[str, Any]) -> None:
        draw_detections(self.val_data, result["detections"], self.run_dir / "predictions.png")


def draw_detections(dataset: CocoDetection, results: list[dict], out_png: str | Path, n: int = 8,
                    min_score: float = 0.5) -> Path:  # fmt: skip
    """Validation images with ground truth (green) and predictions above ``min_score`` (red, class: score)."""
    from PIL import Image, ImageDraw

    from ..weights.io import atomic_write

    tiles = []
    for i in range(min(n, len(dataset))):
        img = dataset.raw[i]
        im = Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()).convert(
            "RGB"
        )
        h, w = dataset.sizes[i]
        im = im.resize((w, h)).resize((w * 4, h * 4), Image.NEAREST)
        draw = ImageDraw.Draw(im)
        gt = box_cxcywh_to_xyxy(dataset.annotations[i]["boxes"]) * torch.tensor([w, h, w, h]) * 4
        for box in gt.tolist():
            draw.rectangle(box, outline=(0, 200, 0), width=2)
        r = results[i]
        for box, score, label in zip(
            r["boxes"].tolist(), r["scores"].tolist(), r["labels"].tolist(), strict=True
        ):
            if score >= min_score:
                draw.rectangle([v * 4 for v in box], outline=(230, 0, 0), width=2)
                draw.text(
                    (box[0] * 4 + 2, box[1] * 4 + 1),
                    f"{dataset.classes[label]}: {score:.2f}",
                    fill=(230, 0, 0),
                )
        tiles.append(im)
    width, height = sum(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (width, height), "white")
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width
    return atomic_write(out_png, lambda tmp: sheet.save(tmp, format="PNG"))


def train_detection(
    recipe: str | None = None, config_file: str | Path | None = None, resume: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:  # fmt: skip
    """Python API of ``vitkit detect train``."""
    return fit_trainer(DetectionTrainer, recipe, config_file, resume, **overrides)
