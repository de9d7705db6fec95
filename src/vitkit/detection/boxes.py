"""Box formats and overlaps. Boxes are float tensors (..., 4): ``xyxy`` corners or ``cxcywh`` centre + size."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_xywh_to_xyxy",
    "box_area",
    "box_iou",
    "generalized_box_iou",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO's ``[x, y, width, height]`` -> corners."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _union_inter(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return union, inter


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    union, inter = _union_inter(a, b)
    return inter / union.clamp(min=1e-12)


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of xyxy boxes, in [-1, 1]: IoU - (C - U) / C with C
    the area of the smallest box enclosing both. Degenerate boxes (x1 < x0) are an error."""
    if (a[:, 2:] < a[:, :2]).any() or (b[:, 2:] < b[:, :2]).any():
        raise ValueError("generalized_box_iou needs xyxy boxes with x1 >= x0 and y1 >= y0")
    union, inter = _union_inter(a, b)
    iou = inter / union.clamp(min=1e-12)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    enclosing = (rb - lt).clamp(min=0).prod(-1)
    return iou - (enclosing - union) / enclosing.clamp(min=1e-12)
