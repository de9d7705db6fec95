"""DETR's set prediction loss: matched predictions learn their object's class and box, the rest 'no object'."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import HungarianMatcher

__all__ = ["SetCriterion"]


class SetCriterion(nn.Module):
    """Cross-entropy over all queries (the 'no object' class weighted by ``eos_coef``) + L1 and GIoU box losses over
    the matched ones, normalised by the number of objects; the same for every auxiliary decoder layer's output.

    ``forward(outputs, targets) -> (total loss, {name: value})`` with ``outputs = {"pred_logits", "pred_boxes",
    "aux_outputs": [{...}, ...]}``.
    """

    def __init__(
        self, num_classes: int, matcher: HungarianMatcher | None = None, eos_coef: float = 0.1,
        weight_class: float = 1.0, weight_bbox: float = 5.0, weight_giou: float = 2.0,
    ) -> None:  # fmt: skip
        super().__init__()
        from ..models._checks import check_args

        check_args(
            "SetCriterion",
            nonnegative={"num_classes": num_classes, "eos_coef": eos_coef, "weight_class": weight_class,
                         "weight_bbox": weight_bbox, "weight_giou": weight_giou},
            integers=("num_classes",),
        )  # fmt: skip
        if weight_class == weight_bbox == weight_giou == 0:
            raise ValueError("SetCriterion: all loss weights are zero")
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.weights = {"class": weight_class, "bbox": weight_bbox, "giou": weight_giou}
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef  # the last class is "no object"
        self.register_buffer("class_weight", class_weight)

    def _single(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]], num_objects: float):
        matches = self.matcher(logits, boxes, targets)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device
        )
        src_boxes, tgt_boxes = [], []
        for b, (rows, cols) in enumerate(matches):
            target_classes[b, rows.to(logits.device)] = targets[b]["labels"][cols].to(logits.device)
            src_boxes.append(boxes[b, rows.to(logits.device)])
            tgt_boxes.append(targets[b]["boxes"][cols].to(boxes.device))
        src, tgt = torch.cat(src_boxes).float(), torch.cat(tgt_boxes).float()
        if (
            len(src) == 0 and float(self.class_weight[-1]) == 0
        ):  # every query weighs 0: no class loss, not 0/0
            loss_class = logits.sum() * 0
        else:  # the weighted mean over queries
            loss_class = F.cross_entropy(
                logits.float().transpose(1, 2), target_classes, weight=self.class_weight
            )
        if len(src):
            loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_objects
            giou = generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)).diagonal()
            loss_giou = (1 - giou).sum() / num_objects
        else:
            loss_bbox = loss_giou = boxes.sum() * 0
        return {"class": loss_class, "bbox": loss_bbox, "giou": loss_giou}

    def forward(
        self, outputs: dict, targets: list[dict[str, Tensor]], num_objects: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """(weighted total, {term: value}). The box terms are sums over matched objects divided by
        ``num_objects`` (default: the objects of ``targets``; data-parallel training passes the mean over ranks, as
        DETR does, so every rank's objects weigh alike)."""
        if num_objects is None:
            num_objects = float(sum(len(t["labels"]) for t in targets))
        num_objects = max(1.0, float(num_objects))
        layers = [outputs] + list(outputs.get("aux_outputs", []))
        total = outputs["pred_logits"].new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        for i, out in enumerate(layers):
            losses = self._single(out["pred_logits"], out["pred_boxes"], targets, num_objects)
            for name, value in losses.items():
                total = total + self.weights[name] * value
                if i == 0:
                    parts[name] = float(value.detach())
        return total, parts
