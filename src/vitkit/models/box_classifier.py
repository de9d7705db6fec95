"""A second stage for DETR: a small CNN names the object in each box from the image's own pixels.

A set-prediction decoder classifies an object from the patch tokens around it; where objects overlap inside the
same few patches (digits drawn over digits on MNIST canvases) it mistakes one for the other. As in the two-stage
detectors (Faster R-CNN's RoI head, Ren et al. 2015), the box is cropped from the input image's pixels, not
the patch tokens (:func:`box_crops`, RoIAlign's bilinear sampling on a square around the box, resampled to a fixed
side) and classified again
(:class:`BoxClassifier`); :class:`~vitkit.models.detr.DETR` multiplies the two class distributions (a product of
experts), so the box's score stays the decoder's objectness times the agreed class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BoxClassifier", "box_crops"]


def box_crops(images: Tensor, boxes: Tensor, size: int, margin: float = 0.15) -> Tensor:
    """Square crops of ``images`` around ``boxes``, resampled to ``size`` x ``size`` (bilinear, zeros outside).

    Args:
        images: (B, C, H, W).
        boxes: (B, N, 4): each image's boxes, cxcywh in [0, 1] of the image (DETR's box format).
        size: the crop's side in pixels.
        margin: the square's side is the box's longer side (in pixels) times ``1 + margin``.

    Returns:
        (B, N, C, size, size).
    """
    (b, c, h, w), n = images.shape, boxes.shape[1]
    boxes = boxes.to(images.dtype)
    cx, cy = boxes[..., 0] * w, boxes[..., 1] * h
    side = torch.maximum(boxes[..., 2] * w, boxes[..., 3] * h).clamp(min=1.0) * (1 + margin)
    steps = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) / size - 0.5  # pixel centres
    xs = (cx[..., None] + steps * side[..., None]) / w * 2 - 1  # (B, N, size), grid_sample's [-1, 1]
    ys = (cy[..., None] + steps * side[..., None]) / h * 2 - 1
    grid = torch.stack(
        [xs[:, :, None, :].expand(-1, -1, size, -1), ys[..., None].expand(-1, -1, -1, size)], -1
    )
    # every box of an image in one grid (B, N * size, size, 2): no indexing by image, so any batch size exports
    crops = F.grid_sample(
        images, grid.flatten(1, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return crops.view(b, c, n, size, size).transpose(1, 2)


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class BoxClassifier(nn.Module):
    """Class logits of the object in each box: ``forward(images (B, C, H, W), boxes (B, N, 4) cxcywh in [0, 1])
    -> (B, N, num_classes)``.

    The crop (``crop_size`` pixels square, :func:`box_crops`) goes through four 3x3 conv-BN-ReLU layers of
    ``width``, ``2 width``, ``4 width``, ``4 width`` channels (2x2 max-pooling after the second and third), global
    average pooling and a linear layer.
    """

    def __init__(self, in_chans: int, num_classes: int, width: int = 32, crop_size: int = 20) -> None:
        super().__init__()
        if crop_size < 8:  # two 2x2 poolings, and BatchNorm needs more than one value a channel
            raise ValueError(
                f"BoxClassifier: crop_size (DETR's box_crop) must be >= 8 pixels, got {crop_size}"
            )
        self.crop_size = crop_size
        self.features = nn.Sequential(
            *_conv(in_chans, width), *_conv(width, 2 * width), nn.MaxPool2d(2),
            *_conv(2 * width, 4 * width), nn.MaxPool2d(2), *_conv(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(4 * width, num_classes)

    def classify(self, crops: Tensor) -> Tensor:
        """Crops (M, C, crop_size, crop_size) -> class logits (M, num_classes)."""
        return self.head(self.features(crops))

    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        crops = box_crops(images, boxes, self.crop_size)
        return self.classify(crops.flatten(0, 1)).unflatten(0, boxes.shape[:2])
