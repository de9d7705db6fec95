"""Semantic segmentation sets in the COCO layout the detection tools write: ``annotations.json`` + ``masks/``.

A folder that :func:`~vitkit.data.canvas.write_coco` wrote with masks (the generated canvases, the converted
Penn-Fudan set) holds ``images/NAME.png``, ``masks/NAME.png`` (per pixel 0 = background, k = the k-th category)
and ``annotations.json``, whose image list and categories :class:`SegmentationDataset` reads; the classes are
``background`` then the categories.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .canvas import BadRecords, bad_image, coco_channels, decode_u8, read_coco, stack_same_size
from .images import load_label_map

__all__ = ["SegmentationDataset"]


class SegmentationDataset(Dataset):
    """Images and per-pixel class masks held in memory; items are ``(image, index)`` like
    :class:`~vitkit.data.canvas.CocoDetection` (the mask of item ``i`` is ``masks[i]``).

    ``raw`` (N, C, H, W) uint8 and ``masks`` (N, H, W) int64, resized to ``image_size`` when given (bilinear for
    images, nearest for masks); otherwise all images must share a size. Images are decoded by
    :func:`~vitkit.data.images.decode_image` (EXIF orientation applied; ``channels`` 1 or 3, default ``None``: the
    majority of the images' own counts). A mask is a label map in its image's *stored* pixel grid and moves with
    the image's EXIF orientation (:func:`~vitkit.data.images.load_label_map`).
    """

    modality = "segmentation"

    def __init__(
        self, root: str | os.PathLike, annotations: str = "annotations.json", channels: int | None = None,
        image_size: int | tuple[int, int] | None = None, on_error: str = "raise",
    ) -> None:  # fmt: skip
        root = Path(root)
        path, coco = read_coco(root, annotations)
        self.root = root
        self.classes = ["background"] + [c["name"] for c in coco["categories"]]
        bad = BadRecords(path, on_error)
        kept = [img for img in coco["images"] if not bad_image(root, img, bad)]
        if not kept:
            raise ValueError(f"{path}: no readable image records ({len(bad.skipped)} skipped)")
        channels = coco_channels(root, {**coco, "images": kept}, channels)
        images, masks = [], []
        self.file_names = [str(img["file_name"]) for img in kept]  # as the JSON names them
        for img in kept:
            mask_path = root / "masks" / (Path(img["file_name"]).stem + ".png")
            if not mask_path.exists():
                raise FileNotFoundError(
                    f"no mask for {img['file_name']}: expected {mask_path} (write the set with masks)"
                )
            image, orientation, stored = decode_u8(root / img["file_name"], channels, image_size)
            mask = load_label_map(mask_path, orientation, image_size, stored_size=stored)
            images.append(image)
            masks.append(torch.from_numpy(mask.astype("int64")))
        self.raw = stack_same_size(images, path)
        self.masks = torch.stack(masks)
        top = int(self.masks.max())
        if top >= len(self.classes):
            raise ValueError(f"{root}/masks hold class {top}, but there are {len(self.classes)} classes")
        self.targets = torch.arange(len(images))
        self.num_channels = int(self.raw.shape[1])
        self.skipped, self.num_skipped = bad.skipped, len(bad.skipped)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.raw[index].float() / 255, index
