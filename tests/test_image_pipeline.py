"""One image pipeline: the COCO/segmentation loaders, the classification loaders and inference decode a file to
the same pixels (EXIF orientation, mode conversion, channel count), and COCO boxes / masks move with the EXIF
orientation (they refer to the stored pixel grid)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import (
    FileImageDataset,
    ImageFolder,
    decode_image,
    load_image,
    orient_boxes,
    orient_label_map,
)
from vitkit.data.canvas import CocoDetection
from vitkit.data.segmentation import SegmentationDataset
from vitkit.detection.boxes import box_cxcywh_to_xyxy

H, W = 20, 32  # stored size: not square, so a rotation that forgot to swap the axes shows
RECT = (4, 2, 8, 6)  # x, y, w, h of the bright rectangle, in the stored pixel grid


def _scene(mode: str = "RGB") -> Image.Image:
    """A dark image with a bright rectangle at RECT, in ``mode``."""
    a = np.full((H, W, 3), 20, np.uint8)
    x, y, w, h = RECT
    a[y : y + h, x : x + w] = (250, 240, 230)
    a[0, 0] = (200, 30, 30)  # one coloured corner pixel, so a flip shows too
    img = Image.fromarray(a)
    if mode == "P":
        return img.quantize(8)
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(np.full((H, W), 200, np.uint8)))
        return img
    return img.convert(mode)


def _save(img: Image.Image, path: Path, orientation: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    img.save(path, **kw)
    return path


def _coco(root: Path, files: list[str], boxes: list[list[float]] | None = None) -> None:
    """annotations.json for ``files`` (each with one box, default RECT), width/height of the stored grid."""
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "rect"}]}
    for i, name in enumerate(files):
        with Image.open(root / name) as im:
            w, h = im.size
        coco["images"].append({"id": i + 1, "file_name": name, "width": w, "height": h})
        box = list(boxes[i] if boxes else RECT)
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    (root / "annotations.json").write_text(json.dumps(coco))


CASES = {
    "gray": ("L", "png", 1),
    "palette": ("P", "png", 1),
    "rgba": ("RGBA", "png", 1),
    "cmyk": ("CMYK", "tif", 1),
    "exif6": ("RGB", "png", 6),
    "exif3": ("RGB", "png", 3),
    "exif8": ("RGB", "png", 8),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("channels", [1, 3])
def test_coco_loader_gives_the_classification_loaders_pixels(tmp_path, case, channels):
    mode, ext, orientation = CASES[case]
    path = _save(_scene(mode), tmp_path / "coco" / "images" / f"{case}.{ext}", orientation)
    _coco(tmp_path / "coco", [f"images/{case}.{ext}"])
    coco = CocoDetection(tmp_path / "coco", channels=channels)
    x_coco, _ = coco[0]

    _save(_scene(mode), tmp_path / "folder" / "cls" / f"{case}.{ext}", orientation)
    folder = ImageFolder(tmp_path / "folder", channels=channels)
    x_folder, _ = folder[0]
    files = FileImageDataset([(str(path), 0)], ["cls"], channels=channels)
    expected = torch.from_numpy(load_image(path, channels).transpose(2, 0, 1).copy()).float() / 255

    assert x_coco.shape == (channels, *(coco.sizes[0]))
    assert (
        torch.equal(x_coco, x_folder) and torch.equal(x_coco, files[0][0]) and torch.equal(x_coco, expected)
    )
    upright = (W, H) if orientation in (6, 8) else (H, W)
    assert coco.sizes[0] == upright and coco.orientations[0] == orientation

    # inference decodes the same file, and the same file opened as a PIL image, identically
    from vitkit.predict import _load_item

    assert torch.equal(_load_item(str(path), channels, 0), expected)
    with Image.open(path) as im:
        assert torch.equal(_load_item(im, channels, 0), expected)


def _bright_box(x: torch.Tensor) -> list[int]:
    """xywh of the pixels brighter than mid-grey in a (C, H, W) image in [0, 1]."""
    ys, xs = torch.nonzero(x.mean(0) > 0.5, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_moves_coco_boxes_and_masks_with_the_pixels(tmp_path, orientation):
    root = tmp_path / "coco"
    _save(_scene(), root / "images" / "a.png", orientation)
    mask = np.zeros((H, W), np.uint8)  # stored grid, like the box
    x, y, w, h = RECT
    mask[y : y + h, x : x + w] = 1
    (root / "masks").mkdir()
    Image.fromarray(mask).save(root / "masks" / "a.png")
    _coco(root, ["images/a.png"])

    det = CocoDetection(root)
    img, _ = det[0]
    Hu, Wu = det.sizes[0]
    assert img.shape[1:] == (Hu, Wu)
    box = box_cxcywh_to_xyxy(det.annotations[0]["boxes"])[0] * torch.tensor([Wu, Hu, Wu, Hu])
    x0, y0, x1, y1 = box.round().int().tolist()
    assert [x0, y0, x1 - x0, y1 - y0] == _bright_box(img)  # the box lands on the bright rectangle
    assert (img.mean(0)[y0:y1, x0:x1] > 0.5).all()

    seg = SegmentationDataset(root)
    assert torch.equal(seg.raw[0], det.raw[0])
    assert torch.equal(seg.masks[0].bool(), img.mean(0) > 0.5)  # the mask moved with the pixels

    # resizing keeps the normalised boxes and resizes the mask by nearest neighbour
    small = SegmentationDataset(root, image_size=(Hu // 2, Wu // 2))
    assert small.masks.shape[1:] == (Hu // 2, Wu // 2)
    assert CocoDetection(root, image_size=16).annotations[0]["boxes"].allclose(det.annotations[0]["boxes"])


def test_orient_helpers_agree_with_pillow():
    mask = np.zeros((H, W), np.uint8)
    mask[3:9, 5:17] = 1
    for orientation in range(1, 9):
        moved = orient_label_map(mask, orientation)
        assert np.array_equal(moved, np.asarray(orient_label_map(Image.fromarray(mask), orientation)))
        ys, xs = np.nonzero(moved)
        want = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert orient_boxes([[5, 3, 12, 6]], orientation, (H, W)).tolist() == [want]
        xyxy = orient_boxes([[5, 3, 17, 9]], orientation, (H, W), fmt="xyxy")[0].tolist()
        assert xyxy == [want[0], want[1], want[0] + want[2], want[1] + want[3]]


def test_mixed_channel_folder_loads_to_the_majority_or_the_declared_count(tmp_path):
    gray, rgb = _scene("L"), _scene("RGB")
    for name, kinds in {"mostly_gray": ["L", "L", "RGB"], "mostly_rgb": ["RGB", "RGB", "L"]}.items():
        root = tmp_path / name
        files = [f"images/{i}.png" for i in range(len(kinds))]
        for f, k in zip(files, kinds, strict=True):
            _save(gray if k == "L" else rgb, root / f)
            _save(gray if k == "L" else rgb, root / "cls" / Path(f).name)
        _coco(root, files)
        want = 1 if name == "mostly_gray" else 3
        coco = CocoDetection(root)  # channels=None: the majority
        assert coco.num_channels == want and coco.raw.shape == (3, want, H, W)
        folder = ImageFolder(root, classes=["cls"], channels=None)
        assert folder.num_channels == want and all(folder[i][0].shape[0] == want for i in range(3))
        for declared in (1, 3):  # a declared count wins
            assert CocoDetection(root, channels=declared).num_channels == declared
            assert ImageFolder(root, classes=["cls"], channels=declared)[2][0].shape[0] == declared


def test_decode_image_reports_orientation_and_stored_size(tmp_path):
    path = _save(_scene(), tmp_path / "r.png", 6)
    out = decode_image(path, None)
    assert out.orientation == 6 and out.stored_size == (H, W) and out.pixels.shape == (W, H, 3)
    assert decode_image(_save(_scene("L"), tmp_path / "g.png"), None).pixels.shape == (H, W, 1)
    with open(path, "rb") as f:
        assert np.array_equal(decode_image(f.read(), 3).pixels, out.pixels)  # bytes in, same pixels
