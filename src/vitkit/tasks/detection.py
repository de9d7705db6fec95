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

import numpy as np
import torch
from torch import Tensor, nn

from ..data.canvas import CocoDetection
from ..detection import SetCriterion, box_cxcywh_to_xyxy
from ..models.detr import DETR
from .base import Batch
from .dense import DenseTask

__all__ = ["Detection", "coco_map", "detections", "detection_sheet", "draw_detections", "draw_boxes"]

log = logging.getLogger(__name__)


@torch.no_grad()
def detections(
    outputs: dict[str, Tensor], sizes: list[tuple[int, int]], top_k: int | None = None, pairs: bool = False
) -> list[dict]:
    """DETR outputs -> per image ``{"boxes": (N, 4) xyxy pixels, "scores": (N,), "labels": (N,)}``, best first.

    ``sizes``: each image's (height, width) in pixels (a list or a (B, 2) tensor). By default (DETR) each
    query's best real class, the ``top_k`` best queries (all without it). ``pairs=True`` (Deformable DETR's
    post-processing): the image's ``top_k`` (default 100, COCO's detections per image) best (query, class)
    pairs, so a query may be reported under several classes.

    Raises:
        ValueError: as many ``sizes`` as images are needed; a negative ``top_k``.
    """
    prob = outputs["pred_logits"].float().softmax(-1)[..., :-1]  # (B, Q, C): the last class is "no object"
    if len(sizes) != prob.shape[0]:
        raise ValueError(f"detections: {len(sizes)} image sizes for a batch of {prob.shape[0]}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"detections: top_k must be >= 0, got {top_k}")
    if not len(sizes):
        return []
    num_classes = prob.shape[-1]
    if pairs:
        scores, flat = prob.flatten(1).topk(min(100 if top_k is None else top_k, prob[0].numel()), dim=-1)
        queries, labels = flat // num_classes, flat % num_classes
    else:
        scores, labels = prob.max(-1)
        queries = scores.argsort(dim=-1, descending=True)[:, :top_k]
        scores, labels = scores.gather(1, queries), labels.gather(1, queries)
    scale = torch.tensor([[w, h, w, h] for h, w in torch.as_tensor(sizes).tolist()], dtype=prob.dtype,
                         device=prob.device)  # fmt: skip
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"].float()) * scale[:, None]
    return [
        {
            "boxes": boxes[b, queries[b]].cpu(),
            "scores": scores[b].cpu().clone(),  # own storage: the results are pickled across ranks per image
            "labels": labels[b].cpu().clone(),
        }
        for b in range(len(sizes))
    ]


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
    options = DenseTask.options | {"cls_loss_coef", "freeze_detector"}
    dataset_type = CocoDetection
    model_type = DETR
    example_model = "detr_vit_canvas"
    default_model = "detr_vit_canvas"
    loss_label = "set loss"
    quality_curve = ("Box AP50", "validation AP50 (COCO)", "AP50", "max")

    # the box classifier (second stage) learns from the ground-truth boxes, each moved as a decoder's box would be
    # off: its centre by N(0, BOX_JITTER) of its width / height, its size times exp(N(0, BOX_JITTER))
    BOX_JITTER = 0.08
    BOX_LABEL_SMOOTHING = 0.1
    # a second stage may be added to a detector without one (its arguments then change; it starts fresh)
    CONTINUE_ARGS = DenseTask.CONTINUE_ARGS | {"box_classifier", "box_crop"}
    ADDED_MODULES = ("box_classifier.",)

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        self.criterion = SetCriterion(len(self.classes), weight_class=self.cfg.cls_loss_coef).to(self.device)
        self.second_stage = getattr(model, "box_classifier", None) is not None
        if self.cfg.freeze_detector:
            if not self.second_stage:
                raise ValueError(
                    "freeze_detector trains only the box classifier, and this model has none "
                    """(--model-args '{"box_classifier": 32}' adds one)"""
                )
            if not self.continues_trained:
                raise ValueError(
                    "freeze_detector keeps the detector as it is: it needs --from (init_from) a trained detector, "
                    f"got {self.cfg.init_from or 'none'}"
                )
            self.frozen_modules = [m for name, m in model.named_children() if name != "box_classifier"]
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("box_classifier."))

    def _targets(self, dataset: CocoDetection, index: Tensor) -> list[dict[str, Tensor]]:
        return [{k: v.to(self.device) for k, v in dataset.annotations[i].items()} for i in index.tolist()]

    def _jittered(self, targets: list[dict[str, Tensor]]) -> list[Tensor]:
        out = []
        for t in targets:
            box = t["boxes"].float()
            shift = torch.randn_like(box[:, :2]) * self.BOX_JITTER * box[:, 2:]
            scale = torch.exp(torch.randn_like(box[:, 2:]) * self.BOX_JITTER)
            out.append(torch.cat([box[:, :2] + shift, box[:, 2:] * scale], -1))
        return out

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        """DETR's set loss; with a box classifier, plus its cross-entropy on the jittered ground-truth boxes (alone
        with ``freeze_detector``: the set loss would train nothing)."""
        targets = self._targets(self.train_data, batch["index"])
        if not self.second_stage:
            outputs = model(batch["inputs"])
            return {"loss": self.criterion(outputs, targets)[0], "output": outputs}
        outputs = model(batch["inputs"], self._jittered(targets))
        labels = torch.cat([t["labels"] for t in targets]).to(self.device)
        box_loss = nn.functional.cross_entropy(
            outputs["box_logits"].float(), labels, label_smoothing=self.BOX_LABEL_SMOOTHING
        ) if len(labels) else outputs["box_logits"].sum() * 0  # fmt: skip
        if self.cfg.freeze_detector:
            return {"loss": box_loss, "output": outputs}
        return {"loss": self.criterion(outputs, targets)[0] + box_loss, "output": outputs}

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
                draw: bool = True, **options: Any) -> list:  # fmt: skip
        """Boxes (xyxy pixels of the image as given), classes and scores of each image's detections above
        ``threshold``; with ``draw`` (not when serving) the image with its boxes drawn in ``out_dir``
        (:func:`draw_boxes`: ``<image>-boxes.png``, its name under ``"drawing"``)."""
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
            results.append({"path": name, "boxes": boxes})
            if draw:
                best = float(r["scores"].max()) if len(r["scores"]) else None
                title = name if name.startswith("<") else Path(name).name
                png = draw_boxes(
                    image, boxes, out_dir / f"{output_stem(name, i)}-boxes.png", title, threshold, best
                )
                results[-1]["drawing"] = str(png)
        return results

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        lines = []
        for r in results:
            drawn = f" (drawn in {r['drawing']})" if r.get("drawing") else ""
            lines.append(f"{r['path']}: {len(r['boxes'])} objects{drawn}")
            lines += [f"  {b['label']} {b['score']:.2f} at {b['box']}" for b in r["boxes"]]
        return "\n".join(lines)

    @classmethod
    def training_mode(cls, options: dict[str, Any]) -> str:
        return "box classifier only" if options.get("freeze_detector") else "full"

    @classmethod
    def report(cls, summary: dict[str, Any]) -> str:
        nan = float("nan")
        return f"val AP50: {summary.get('val_AP50', nan):.3f}  AP: {summary.get('val_AP', nan):.3f}"


def draw_boxes(image, boxes: list[dict[str, Any]], out_png: Path, title: str = "", threshold: float = 0.5,
               best: float | None = None) -> Path:  # fmt: skip
    """An (H, W, C) uint8 image with its ``boxes`` (``{"label", "score", "box": xyxy}``, all scored ``threshold``
    or more) drawn in red, titled ``title`` and the count; without boxes it says none passed (``best``: the best
    score seen)."""
    from .drawings import detection_figure, save

    fig = detection_figure([np.asarray(image)], [boxes], [title], threshold, best=[best], cols=1)
    return save(fig, out_png)


def detection_sheet(dataset: CocoDetection, results: list[dict], n: int = 8, min_score: float = 0.5) -> Any:
    """The Figure of :func:`draw_detections`: the first ``n`` validation images, each titled with its file name
    and the count of predictions scored ``min_score`` or more, drawn in red with their class and score over the
    ground truth (green, dashed); a panel without such boxes says so."""
    from .drawings import detection_figure

    images, boxes, truth, titles, best, extents = [], [], [], [], [], []
    names = getattr(dataset, "file_names", None)
    for i in range(min(n, len(dataset))):
        h, w = dataset.sizes[i]
        images.append(dataset.raw[i].permute(1, 2, 0).numpy())
        extents.append((h, w))
        titles.append(Path(names[i]).name if names else f"image #{i}")
        ann = dataset.annotations[i]
        gt = box_cxcywh_to_xyxy(ann["boxes"]) * torch.tensor([w, h, w, h])
        truth.append(
            [
                {"label": dataset.classes[int(c)], "box": b}
                for b, c in zip(gt.tolist(), ann["labels"], strict=True)
            ]
        )
        r = results[i]
        keep = r["scores"] >= min_score
        boxes.append([{"label": dataset.classes[int(c)], "score": float(s), "box": b.tolist()}
                      for b, s, c in zip(r["boxes"][keep], r["scores"][keep], r["labels"][keep], strict=True)])  # fmt: skip
        best.append(float(r["scores"].max()) if len(r["scores"]) else None)
    return detection_figure(images, boxes, titles, min_score, truth=truth, best=best, extents=extents)


def draw_detections(dataset: CocoDetection, results: list[dict], out_png: str | Path, n: int = 8,
                    min_score: float = 0.5) -> Path:  # fmt: skip
    """Write :func:`detection_sheet` (``predictions.png`` of a detection run) to ``out_png``."""
    from .drawings import save

    return save(detection_sheet(dataset, results, n, min_score), out_png)
