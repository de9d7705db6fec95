"""Object detection: box operations, Hungarian matching and DETR's set loss, synthetic canvases, COCO data."""

from .boxes import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou
from .matcher import HungarianMatcher
from .set_loss import SetCriterion

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_iou",
    "generalized_box_iou",
    "HungarianMatcher",
    "SetCriterion",
]
