"""Penn-Fudan pedestrians (170 images, 345 people) -> the COCO + masks layout of the detection and segmentation tools.

The archive (``penn-fudan/PennFudanPed-webp.tar.xz`` under the data directory) holds lossless WebP images and
instance masks (0 = background, k = pedestrian k). :func:`convert_penn_fudan` writes ``OUT/train`` and ``OUT/val``
(a seeded split), each with PNG images, person-vs-background masks and an ``annotations.json`` whose boxes are the
tight boxes of the instance masks (as in the torchvision tutorial). The data's licence forbids redistribution:
write it to a local folder, never into a repository.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from .canvas import write_coco
from .images import decode_image, load_label_map

__all__ = ["convert_penn_fudan", "PENN_FUDAN_ARCHIVE"]

PENN_FUDAN_ARCHIVE = "penn-fudan/PennFudanPed-webp.tar.xz"


def _read_archive(archive: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, RGB image (H, W, 3) uint8, instance mask (H, W)) for every image, sorted by name.

    Images go through :func:`~vitkit.data.images.decode_image` (EXIF orientation applied, converted to RGB); each
    instance mask, in its image's stored pixel grid, is moved by the same orientation."""
    images, masks = {}, {}
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if not member.isfile() or name.parent.name not in ("PNGImages_webp", "PedMasks"):
                continue
            data, where = tar.extractfile(member).read(), f"{archive}:{member.name}"
            if name.parent.name == "PNGImages_webp":
                images[name.stem] = decode_image(data, 3, name=where)
            else:
                masks[name.stem.removesuffix("_mask")] = (data, where)
    missing = sorted(set(images) ^ set(masks))
    if missing or not images:
        raise ValueError(f"{archive}: images and masks do not pair up (unpaired: {missing[:5]})")
    out = []
    for stem in sorted(images):
        image, (data, where) = images[stem], masks[stem]
        mask = load_label_map(data, image.orientation, name=where, stored_size=image.stored_size)
        out.append((stem, image.pixels, mask))
    return out


def convert_penn_fudan(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, val: int = 50, seed: int = 0
) -> dict[str, int]:
    """Write the COCO + masks folders ``out_dir/train`` and ``out_dir/val`` (``val`` images, a seeded split).

    Returns the number of images and people per split.
    """
    archive = Path(data_dir).expanduser() / PENN_FUDAN_ARCHIVE
    if not archive.exists():
        raise FileNotFoundError(f"Penn-Fudan archive not found: {archive}")
    items = _read_archive(archive)
    if not 0 < val < len(items):
        raise ValueError(f"val must be between 1 and {len(items) - 1}, got {val}")
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    counts = {}
    for split, picks in (("train", sorted(order[val:])), ("val", sorted(order[:val]))):
        images, targets, masks = [], [], []
        for i in picks:
            _, image, instances = items[i]
            boxes = []
            for k in np.unique(instances)[1:]:  # 0 is background
                ys, xs = np.nonzero(instances == k)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            images.append(torch.from_numpy(image.copy()).permute(2, 0, 1))
            targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.zeros(len(boxes), dtype=torch.long)})  # fmt: skip
            masks.append(torch.from_numpy((instances > 0).astype(np.uint8)))
        write_coco(Path(out_dir) / split, images, targets, ["person"], masks)
        counts[f"{split}_images"] = len(picks)
        counts[f"{split}_people"] = sum(len(t["labels"]) for t in targets)
    return counts
