"""DETR's bipartite matching: each ground-truth object gets the one prediction that costs least (Hungarian)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """Cost = ``cost_class`` * (-p(class)) + ``cost_bbox`` * L1(boxes) + ``cost_giou`` * (-GIoU), per image.

    ``forward(pred_logits (B, Q, C+1), pred_boxes (B, Q, 4) cxcywh in [0, 1], targets)`` where each target is
    ``{"labels": (n,), "boxes": (n, 4) cxcywh}``; returns one ``(prediction indices, target indices)`` pair per
    image (``scipy.optimize.linear_sum_assignment``, optimal).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        from ..models._checks import check_args

        check_args("HungarianMatcher", nonnegative={"cost_class": cost_class, "cost_bbox": cost_bbox,
                                                    "cost_giou": cost_giou})  # fmt: skip
        if cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("all matching costs are zero")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, gt_boxes: Tensor) -> Tensor:
        """(Q, n) matching cost of one image."""
        prob = logits.float().softmax(-1)
        cost = -self.cost_class * prob[:, labels]
        cost = cost + self.cost_bbox * torch.cdist(boxes.float(), gt_boxes.float(), p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes.float()), box_cxcywh_to_xyxy(gt_boxes.float()))
        return cost - self.cost_giou * giou

    @torch.no_grad()
    def forward(self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict[str, Tensor]]):
        # as DETR: one (B*Q, all objects) cost matrix for the batch, then each image's block solved on its own
        # (one batched computation instead of B small ones; the same costs)
        sizes = [len(t["labels"]) for t in targets]
        empty = torch.zeros(0, dtype=torch.long)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]
        batch, queries = pred_logits.shape[:2]
        cost = self.cost_matrix(
            pred_logits.flatten(0, 1), pred_boxes.flatten(0, 1),
            torch.cat([t["labels"] for t in targets]), torch.cat([t["boxes"] for t in targets]),
        ).view(batch, queries, -1).cpu()  # fmt: skip
        out = []
        for b, block in enumerate(cost.split(sizes, -1)):
            if sizes[b] == 0:
                out.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(block[b].numpy())
            out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return out
