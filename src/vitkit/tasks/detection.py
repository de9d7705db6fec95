"""Detection: DETR on a COCO-format dataset (``vitkit detect train --data coco:DIR``).

:class:`Detection` trains with DETR's set loss, through :class:`~vitkit.tasks.dense.DenseTask`
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
from .base import Batch
from .dense import DenseTask

__all__ = ["Detection", "coco_map", "detections", "draw_detections"]

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


class Detection(DenseTask):
    """DETR training; ``cfg.dataset`` is ``coco:DIR`` (``DIR/train``, ``DIR/val``), ``cfg.model`` a ``detr`` model."""

    name = "detection"
    dataset_type = CocoDetection
    model_type = DETR
    example_model = "detr_vit_canvas"
    default_model = "detr_vit_canvas"
    loss_label = "set loss"
    quality_curve = ("Box AP50", "validation AP50 (COCO)", "AP50", "max")

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        self.criterion = SetCriterion(len(self.classes)).to(self.device)

    def _targets(self, dataset: CocoDetection, index: Tensor) -> list[dict[str, Tensor]]:
        return [{k: v.to(self.device) for k, v in dataset.annotations[i].items()} for i in index.tolist()]

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        outputs = model(batch["inputs"])
        return {
            "loss": self.criterion(outputs, self._targets(self.train_data, batch["index"]))[0],
            "output": outputs,
        }

    def eval_step(self, model: nn.Module, batch: Batch, final: bool) -> tuple[dict, Any]:
        index = batch["index"]
        outputs = model(batch["inputs"])
        loss = float(self.criterion(outputs, self._targets(self.val_data, index))[0]) * len(index)
        sizes = [self.val_data.sizes[i] for i in index.tolist()]
        return {"loss": loss, "count": len(index)}, dict(
            zip(index.tolist(), detections(outputs, sizes), strict=True)
        )

    def metrics(self, sums: dict[str, Any], kept: list[Any], model: nn.Module) -> dict[str, Any]:
        """The set loss, and COCO box AP / AP50 / AP75 (pycocotools) over the whole validation split."""
        out: dict[str, Any] = {"val_loss": sums.get("loss", 0.0) / max(sums.get("count", 0), 1)}
        results = {i: r for share in kept for i, r in share.items()}
        if self.dist.is_main and len(results) == len(self.val_data):
            found = coco_map(self.val_data, [results[i] for i in range(len(self.val_data))])
            out.update({f"val_{k}": v for k, v in found.items()})
        out["detections"] = [results[i] for i in sorted(results)]
        return out

    def draw(self, result: dict[str, Any], run_dir: Path) -> None:
        draw_detections(self.val_data, result["detections"], run_dir / "predictions.png")

    @classmethod
    def predict(cls, model: nn.Module, inputs: list[Any], source, out_dir: Path, threshold: float = 0.5,
                **options: Any) -> list:  # fmt: skip
        """Boxes (xyxy pixels of the image as given), classes and scores of each image's detections above
        ``threshold``; the image with its boxes drawn in ``out_dir``."""
        from .inputs import output_stem, read_images

        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        classes = list((model.data_config or {})["classes"])
        x, images, names = read_images(inputs, model.data_config)
        with torch.inference_mode():
            found = detections(model(x), [tuple(im.shape[:2]) for im in images])
        out_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for i, (name, image, r) in enumerate(zip(names, images, found, strict=True)):
            keep = r["scores"] >= threshold
            boxes = [{"label": classes[int(c)], "score": float(s), "box": [round(float(v), 2) for v in b]}
                     for b, s, c in zip(r["boxes"][keep], r["scores"][keep], r["labels"][keep], strict=True)]  # fmt: skip
            png = draw_boxes(image, boxes, out_dir / f"{output_stem(name, i)}-boxes.png")
            results.append({"path": name, "boxes": boxes, "drawing": str(png)})
        return results

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        lines = []
        for r in results:
            lines.append(f"{r['path']}: {len(r['boxes'])} objects (drawn in {r['drawing']})")
            lines += [f"  {b['label']} {b['score']:.2f} at {b['box']}" for b in r["boxes"]]
        return "\n".join(lines)

    @classmethod
    def report(cls, summary: dict[str, Any]) -> str:
        nan = float("nan")
        return f"val AP50: {summary.get('val_AP50', nan):.3f}  AP: {summary.get('val_AP', nan):.3f}"


def draw_boxes(image, boxes: list[dict[str, Any]], out_png: Path, scale: int = 4) -> Path:
    """An (H, W, C) uint8 image with ``boxes`` (``{"label", "score", "box": xyxy}``) drawn in red, enlarged."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..weights.files import atomic_write

    arr = np.asarray(image)
    im = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr).convert("RGB")
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    for b in boxes:
        draw.rectangle([v * scale for v in b["box"]], outline=(230, 0, 0), width=2)
        draw.text(
            (b["box"][0] * scale + 2, b["box"][1] * scale + 1),
            f"{b['label']}: {b['score']:.2f}",
            fill=(230, 0, 0),
        )
    return atomic_write(out_png, lambda tmp: im.save(tmp, format="PNG"))


def draw_detections(dataset: CocoDetection, results: list[dict], out_png: str | Path, n: int = 8,
                    min_score: float = 0.5) -> Path:  # fmt: skip
    """Validation images with ground truth (green) and predictions above ``min_score`` (red, class: score)."""
    from PIL import Image, ImageDraw

    from ..weights.files import atomic_write

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
