"""Multi-object canvases from real Fashion-MNIST / MNIST items, with exact boxes and masks, in COCO format.

:func:`make_canvases` places ``objects`` random items (resized to a random scale) at random places on a blank
canvas, deterministically for a seed; each object's box is the tight box of its visible pixels and the semantic
mask holds ``class + 1`` where an object's pixel shows (0 = background; later objects cover earlier ones).
:func:`write_coco` writes PNGs + a COCO ``annotations.json`` (boxes ``[x, y, w, h]``) that
:class:`CocoDetection` -- or pycocotools -- reads back.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .images import DecodedImage, decode_image, majority_channels, orient_boxes

__all__ = ["make_canvases", "distort_item", "write_coco", "CocoDetection"]

log = logging.getLogger(__name__)


def make_canvases(
    items: Tensor,
    labels: Tensor,
    num_images: int,
    canvas: int = 64,
    objects: tuple[int, int] = (1, 4),
    scale: tuple[float, float] = (0.5, 1.2),
    seed: int = 0,
    threshold: float = 0.1,
    distort: float = 0.0,
) -> tuple[Tensor, list[dict[str, Tensor]], Tensor]:
    """(images (N, 1, canvas, canvas) uint8, targets [{"boxes" xyxy pixels, "labels"}], masks (N, canvas, canvas)).

    ``items`` (M, 1, h, w) uint8 or float in [0, 1]; each object is an item scaled by a factor in ``scale``.
    ``distort`` > 0 first gives each item a random affine distortion (:func:`distort_item`; the classic MNIST
    augmentation, Simard et al. 2003, without the elastic part), so that a training set holds new shapes, not only
    new placements of the same items; 0 draws no random number for it (the canvases of a seed stay the same).

    Raises:
        ValueError: a negative ``distort``.
    """
    if distort < 0:
        raise ValueError(f"make_canvases: distort must be >= 0, got {distort}")
    if canvas < 6 or not 0 <= objects[0] <= objects[1] or not 0 < scale[0] <= scale[1]:
        raise ValueError(
            f"make_canvases: needs canvas >= 6 pixels (got {canvas}), 0 <= objects min <= max (got {objects}) "
            f"and 0 < scale min <= max (got {scale})"
        )
    g = torch.Generator().manual_seed(int(seed))
    items = items.float() / 255 if items.dtype == torch.uint8 else items.float()
    images = torch.zeros(num_images, 1, canvas, canvas)
    masks = torch.zeros(num_images, canvas, canvas, dtype=torch.long)
    targets = []
    for n in range(num_images):
        k = int(torch.randint(objects[0], objects[1] + 1, (1,), generator=g))
        boxes, classes = [], []
        for _ in range(k):
            i = int(torch.randint(len(items), (1,), generator=g))
            f = scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=g))
            size = max(6, min(canvas, round(items.shape[-1] * f)))
            source = distort_item(items[i : i + 1], distort, g) if distort else items[i : i + 1]
            item = F.interpolate(
                source, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )[0, 0]
            y = int(torch.randint(canvas - size + 1, (1,), generator=g))
            x = int(torch.randint(canvas - size + 1, (1,), generator=g))
            shown = item > threshold
            if not shown.any():
                continue
            region = images[n, 0, y : y + size, x : x + size]
            images[n, 0, y : y + size, x : x + size] = torch.where(shown, item, region)
            masks[n, y : y + size, x : x + size][shown] = int(labels[i]) + 1
            boxes.append((x, y, size, i))
            classes.append(int(labels[i]))
        # boxes from the *visible* pixels of each object, after later objects were drawn over it
        final, kept = [], []
        for (x, y, size, _), c in zip(boxes, classes, strict=True):
            ys, xs = torch.nonzero(masks[n, y : y + size, x : x + size] == c + 1, as_tuple=True)
            if len(ys) < 4:
                continue  # hidden almost entirely under later objects
            final.append(
                [x + xs.min().item(), y + ys.min().item(), x + xs.max().item() + 1, y + ys.max().item() + 1]
            )
            kept.append(c)
        targets.append({"boxes": torch.tensor(final, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(kept, dtype=torch.long)})  # fmt: skip
    return (images * 255).round().to(torch.uint8), targets, masks


def distort_item(item: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """``item`` (1, C, h, w) float under a random affine map about its centre: a rotation of up to 15 degrees, a
    shear of up to 0.3 and a stretch of up to 15% along each axis, all times ``strength`` (bilinear, zeros outside)."""
    u = (torch.rand(4, generator=generator) * 2 - 1) * strength  # uniform in [-strength, strength]
    angle, shear = math.radians(15.0) * float(u[0]), 0.3 * float(u[1])
    rotate = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    # affine_grid maps output to input coordinates: the inverse stretch makes the item larger for u > 0
    stretch = torch.diag(1 / (1 + 0.15 * u[2:]))
    theta = torch.cat([rotate @ torch.tensor([[1.0, shear], [0.0, 1.0]]) @ stretch, torch.zeros(2, 1)], 1)
    grid = F.affine_grid(theta[None], list(item.shape), align_corners=False)
    return F.grid_sample(item, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def write_coco(
    out_dir: str | os.PathLike, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]],
    classes: Sequence[str], masks: Tensor | Sequence[Tensor] | None = None,
) -> Path:  # fmt: skip
    """PNG files + ``annotations.json`` (COCO: images, annotations with ``bbox`` [x, y, w, h], categories).

    ``images`` (N, C, H, W) uint8, or a list of (C, H, W) of different sizes; boxes in ``targets`` are xyxy
    pixels. With ``masks`` (N, H, W: 0 = background, k = category k, or a list of (H, W)), each image's
    semantic mask is written as ``masks/<image name>.png`` (what :class:`~vitkit.data.SegmentationDataset` reads).
    """
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if masks is not None:
        top = max((int(m.max()) for m in masks), default=0)  # no images: an empty, valid set
        if top > min(255, len(classes)):
            raise ValueError(f"mask values run to {top}; there are {len(classes)} classes")
        (out / "masks").mkdir(exist_ok=True)
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}  # fmt: skip
    ann_id = 1
    for n, (img, t) in enumerate(zip(images, targets, strict=True)):
        name = f"images/{n:06d}.png"
        Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()).save(
            out / name
        )
        if masks is not None:
            Image.fromarray(masks[n].to(torch.uint8).numpy()).save(out / "masks" / f"{n:06d}.png")
        coco["images"].append(
            {"id": n + 1, "file_name": name, "height": int(img.shape[-2]), "width": int(img.shape[-1])}
        )
        for box, label in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            coco["annotations"].append({"id": ann_id, "image_id": n + 1, "category_id": label + 1,
                                        "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            ann_id += 1
    path = out / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def read_coco(root: Path, annotations: str = "annotations.json") -> tuple[Path, dict[str, Any]]:
    """(path, parsed JSON) of a COCO annotation file, checked for its images / annotations / categories."""
    path = root / annotations
    if not path.exists():
        raise FileNotFoundError(f"COCO annotations not found: {path}")
    coco = json.loads(path.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{path} is not COCO detection JSON: no {key!r}")
    if not coco["images"]:
        raise ValueError(f"{path} lists no images")
    return path, coco


class BadRecords:
    """Bad COCO records (images and boxes): raised at once (``on_error='raise'``) or skipped and counted, with a
    line each naming the file, the record and the problem (``--on-bad-image``)."""

    def __init__(self, path: Path, on_error: str) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.path, self.on_error, self.skipped = path, on_error, []

    def __call__(self, record: str, problem: str) -> None:
        message = f"{self.path}: {record}: {problem}"
        if self.on_error == "raise":
            raise ValueError(message)
        self.skipped.append(message)
        log.warning("skipped %s", message)


def image_file(root: Path, img: dict[str, Any]) -> str | None:
    """The problem with an image record's ``file_name`` (None when it is a readable path inside ``root``)."""
    name = img.get("file_name")
    if not isinstance(name, str) or not name:
        return "no file_name"
    if Path(name).is_absolute() or ".." in Path(name).parts:
        return f"file_name {name!r} points outside {root} (absolute or '..' paths are refused)"
    if not (root / name).is_file():
        return f"file_name {name!r}: no such file"
    return None


def box_problem(a: dict[str, Any], size: tuple[int, int], known: dict[int, int]) -> str | None:
    """The problem with an annotation (None when fine): unknown category, missing / malformed / non-finite box, no
    area, or a box more than a pixel outside its (height, width) image."""
    if a.get("category_id") not in known:
        return f"category_id {a.get('category_id')!r} is not among the categories"
    box = a.get("bbox")
    if (
        not isinstance(box, (list, tuple))
        or len(box) != 4
        or not all(isinstance(v, (int, float)) for v in box)
    ):
        return f"bbox {box!r} is not [x, y, width, height]"
    if not all(math.isfinite(v) for v in box):
        return f"bbox {box} is not finite"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"bbox {box} has no area (width and height must be > 0)"
    H, W = size
    if x < -1 or y < -1 or x + w > W + 1 or y + h > H + 1:
        return f"bbox {box} lies outside the {W}x{H} image"
    return None


def bad_image(root: Path, img: dict[str, Any], bad: BadRecords) -> bool:
    problem = image_file(root, img)
    if problem:
        bad(f"image {img.get('id')!r}", problem)
    return problem is not None


def _bad_box(
    a: dict[str, Any], img: dict[str, Any], stored: tuple[int, int], known: dict, bad: BadRecords
) -> bool:
    problem = box_problem(a, stored, known)
    if problem:
        bad(f"annotation {a.get('id')!r} of image {img['file_name']!r}", problem)
    return problem is not None


def coco_channels(root: Path, coco: dict[str, Any], channels: int | None) -> int:
    """The channel count a COCO set loads with: ``channels`` when declared, else the majority of its images' own
    counts (:func:`~vitkit.data.images.majority_channels`: ties give 3)."""
    if channels is not None:
        return channels
    return majority_channels(root / img["file_name"] for img in coco["images"])


def decode_u8(path: Path, channels: int, size: int | tuple[int, int] | None) -> DecodedImage:
    """:func:`~vitkit.data.images.decode_image` as a (C, H, W) uint8 tensor in ``pixels``."""
    out = decode_image(path, channels, size)
    return out._replace(pixels=torch.from_numpy(np.ascontiguousarray(out.pixels.transpose(2, 0, 1))))


def stack_same_size(images: list[Tensor], path: Path) -> Tensor:
    """One (N, ...) tensor, or a ValueError naming ``path`` when the sizes differ."""
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise ValueError(
            f"{path}: images of different sizes {sorted(shapes)[:3]}...; pass image_size to resize"
        )
    return torch.stack(images)


class CocoDetection(Dataset):
    """A COCO-format detection set (``annotations.json`` + images) held in memory.

    ``raw`` (N, C, H, W) uint8 holds the images (resized to ``image_size`` when given; otherwise they must share a
    size), decoded by :func:`~vitkit.data.images.decode_image` like every vitkit image: EXIF orientation applied,
    any mode converted to ``channels`` (1 or 3; default ``None``: the majority of the images' own counts, ties 3).
    Boxes in the JSON refer to the stored pixel grid (what ``write_coco`` and EXIF-unaware tools write); when an
    image carries an EXIF orientation they are moved with it (:func:`~vitkit.data.images.orient_boxes`), and
    ``sizes[i]`` is the upright (height, width). ``annotations[i]`` is ``{"boxes": (n, 4) cxcywh normalised to [0, 1], "labels": (n,)}`` with class
    indices in the JSON's category order (COCO ids kept in ``category_ids``); ``targets`` are the item indices, so
    batch loaders hand out (images, indices) and the boxes are looked up by index. Items are ``(image, index)``.
    """

    modality = "detection"

    def __init__(
        self, root: str | os.PathLike, annotations: str = "annotations.json", channels: int | None = None,
        image_size: int | tuple[int, int] | None = None, on_error: str = "raise",
    ) -> None:  # fmt: skip
        root = Path(root)
        path, coco = read_coco(root, annotations)
        self.root, self.annotation_file = root, path
        self.category_ids = [c["id"] for c in coco["categories"]]
        self.classes = [c["name"] for c in coco["categories"]]
        index = {cid: i for i, cid in enumerate(self.category_ids)}
        per_image: dict[int, list[dict]] = {img.get("id"): [] for img in coco["images"]}
        for a in coco["annotations"]:
            per_image.setdefault(a.get("image_id"), []).append(a)
        bad = BadRecords(path, on_error)
        kept = [img for img in coco["images"] if not bad_image(root, img, bad)]
        channels = coco_channels(root, {**coco, "images": kept}, channels)
        images, self.annotations, self.image_ids, self.sizes = [], [], [], []
        self.orientations: list[int] = []
        self.file_names: list[str] = []  # as the JSON names them (drawings title their panels with them)
        for img in kept:
            image, orientation, stored = decode_u8(root / img["file_name"], channels, image_size)
            H, W = stored if orientation < 5 else stored[::-1]  # 5..8 swap the axes
            images.append(image)
            self.sizes.append((H, W))
            self.orientations.append(orientation)
            anns = [a for a in per_image[img["id"]] if not a.get("iscrowd", 0)]
            anns = [a for a in anns if not _bad_box(a, img, stored, index, bad)]
            xywh = orient_boxes([a["bbox"] for a in anns], orientation, stored)
            scale = torch.tensor([W, H, W, H], dtype=torch.float32)
            cxcywh = torch.cat([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], 1) / scale
            labels = torch.tensor([index[a["category_id"]] for a in anns], dtype=torch.long)
            self.annotations.append({"boxes": cxcywh, "labels": labels})
            self.image_ids.append(img["id"])
            self.file_names.append(str(img["file_name"]))
        if not images:
            raise ValueError(f"{path}: no readable image records ({len(bad.skipped)} skipped)")
        self.raw = stack_same_size(images, path)
        self.targets = torch.arange(len(images))
        self.num_channels = int(self.raw.shape[1])
        self.skipped, self.num_skipped = bad.skipped, len(bad.skipped)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.raw[index].float() / 255, index
