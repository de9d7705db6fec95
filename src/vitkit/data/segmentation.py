"""Semantic segmentation sets in the COCO layout the detection tools write: ``annotations.json`` + ``masks/``.

A folder that :func:`~vitkit.data.canvas.write_coco` wrote with masks (the generated canvases, the converted
Penn-Fudan set) holds ``images/NAME.png``, ``masks/NAME.png`` (per pixel 0 = background, k = the k-th category)
and ``annotations.json``, whose image list and categories :class:`SegmentationDataset` reads; the classes are
``background`` then the categories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SegmentationDataset"]


class SegmentationDataset(Dataset):
    """Images and per-pixel class masks held in memory; items are ``(image, index)`` like
    :class:`~vitkit.data.canvas.CocoDetection` (the mask of item ``i`` is ``masks[i]``).

    ``raw`` (N, C, H, W) uint8 and ``masks`` (N, H, W) int64, resized to ``image_size`` when given (bilinear for
    images, nearest for masks); otherwise all images must share a size.
    """

    modality = "segmentation"

    def __init__(
        self, root: str | os.PathLike, annotations: str = "annotations.json", channels: int | None = None,
        image_size: int | tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        from PIL import Image

        root = Path(root)
        path = root / annotations
        if not path.exists():
            raise FileNotFoundError(f"segmentation annotations not found: {path}")
        coco = json.loads(path.read_text())
        if not coco.get("images"):
            raise ValueError(f"{path} lists no images")
        self.root = root
        self.classes = ["background"] + [c["name"] for c in coco.get("categories", [])]
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        images, masks = [], []
        for img in coco["images"]:
            mask_path = root / "masks" / (Path(img["file_name"]).stem + ".png")
            if not mask_path.exists():
                raise FileNotFoundError(
                    f"no mask for {img['file_name']}: expected {mask_path} (write the set with masks)"
                )
            with Image.open(root / img["file_name"]) as im, Image.open(mask_path) as m:
                mode = {1: "L", 3: "RGB"}.get(channels or 0, im.mode if im.mode in ("L", "RGB") else "RGB")
                im = im.convert(mode)
                if m.size != im.size:
                    raise ValueError(
                        f"{mask_path} is {m.size[0]}x{m.size[1]}, its image {im.width}x{im.height}"
                    )
                if size is not None and (im.height, im.width) != tuple(size):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                    m = m.resize((size[1], size[0]), Image.NEAREST)
                arr, mask = np.asarray(im), np.asarray(m)
            if mask.ndim != 2:
                raise ValueError(
                    f"{mask_path} must be a single-channel class-index PNG, got shape {mask.shape}"
                )
            t = torch.from_numpy(arr.copy())
            images.append(t[None] if t.ndim == 2 else t.permute(2, 0, 1))
            masks.append(torch.from_numpy(mask.astype(np.int64)))
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) > 1:
            raise ValueError(
                f"{path}: images of different sizes {sorted(shapes)[:3]}...; pass image_size to resize"
            )
        self.raw = torch.stack(images)
        self.masks = torch.stack(masks)
        top = int(self.masks.max())
        if top >= len(self.classes):
            raise ValueError(f"{root}/masks hold class {top}, but there are {len(self.classes)} classes")
        self.targets = torch.arange(len(images))
        self.num_channels = int(self.raw.shape[1])

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.raw[index].float() / 255, index
