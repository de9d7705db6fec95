"""The one image decoder of vitkit: every dataset (folders, manifests, COCO, Penn-Fudan, canvases) and every
inference path (predict, evaluate, serve, explain, compress) reads images through :func:`decode_image`.

decode -> EXIF orientation (tag 0x0112 applied, so pixels are seen as displayed) -> mode conversion (grayscale,
palette, RGBA/LA composited on a background, CMYK/YCbCr/LAB, 1-bit, 16/32-bit and float scaled to 8 bits) ->
``L`` or ``RGB`` for the target channel count -> optional resize. :func:`load_image` is its pixel array.

Annotations (COCO boxes, segmentation masks) refer to the raw *stored* pixel grid, as written by tools that do not
read EXIF (``write_coco``, most labelling tools, the COCO JSON ``width``/``height``): a dataset that applies the
orientation moves them with :func:`orient_boxes` / :func:`orient_label_map`, by the same transpose.

Channel count of a dataset: the declared one (``channels=1`` or ``3``); with ``channels=None`` the majority of
the images' own counts (:func:`image_channels`: 1 for grayscale modes and gray palettes, else 3; a tie gives 3),
so one grayscale photo among RGB ones (or the reverse) is converted instead of failing to stack.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageCms, UnidentifiedImageError

__all__ = [
    "IMG_EXTENSIONS",
    "BadImageError",
    "DecodedImage",
    "decode_image",
    "load_image",
    "load_label_map",
    "image_channels",
    "majority_channels",
    "orient_boxes",
    "orient_label_map",
    "to_tensor",
    "is_image_file",
]

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class BadImageError(OSError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, missing)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) through pickling (DataLoader workers)
        return (type(self), (self.path, self.reason))


def is_image_file(path: str | Path, extensions: tuple[str, ...] = IMG_EXTENSIONS) -> bool:
    """True if ``path`` has one of ``extensions`` (case-insensitive)."""
    return str(path).lower().endswith(extensions)


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float single-channel image to 8-bit ``L``."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a8 = (a.astype(np.float32) / 257.0).round()
    elif img.mode == "F":
        a = np.nan_to_num(a.astype(np.float32))
        a8 = a * 255.0 if a.size and float(a.max()) <= 1.0 else a
    else:  # 'I' (32-bit signed): 16-bit PNGs open like this on older Pillow
        a = a.astype(np.float64)
        hi = float(a.max()) if a.size else 0.0
        a8 = a if hi <= 255 else (a / 257.0 if hi <= 65535 else a * (255.0 / hi))
    return Image.fromarray(np.clip(np.round(a8), 0, 255).astype(np.uint8), mode="L")


@functools.cache
def _lab_to_srgb():
    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )


def _convert(img: Image.Image, channels: int, background: tuple[int, int, int]) -> Image.Image:
    """Convert any Pillow mode to ``L`` (channels=1) or ``RGB`` (channels=3)."""
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        img, mode = _to_8bit_gray(img), "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode == "LAB":  # Pillow cannot convert() it: CIE L*a*b* -> sRGB through a colour transform (littlecms)
        img, mode = ImageCms.applyTransform(img, _lab_to_srgb()), "RGB"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):  # composite on a solid background
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*background, 255))
        img, mode = Image.alpha_composite(bg, rgba).convert("RGB"), "RGB"
    target = "L" if channels == 1 else "RGB"
    return img if mode == target else img.convert(target)


EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the Pillow transpose that shows the stored pixels upright (as ImageOps.exif_transpose)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_GRAY_MODES = ("1", "L", "LA", "La", "I", "F")

ImageSource = Any  # str | Path | binary file object | bytes | PIL.Image.Image


class DecodedImage(NamedTuple):
    """What :func:`decode_image` returns."""

    pixels: np.ndarray  # uint8 (H, W, channels), upright, resized when asked
    orientation: int  # the EXIF orientation that was applied (1 = none)
    stored_size: tuple[int, int]  # (height, width) of the stored pixel grid, before orientation and resize


def _where(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<PIL image>"
    return getattr(source, "name", "<stream>")


def _size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image; 1 when absent or invalid."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block must not make the image unreadable
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def image_channels(img: Image.Image) -> int:
    """The image's own channel count: 1 for grayscale modes (also 16-bit, float, 1-bit, LA and gray palettes),
    else 3. Needs only the header (and palette), not the decoded pixels."""
    mode = img.mode
    if mode in _GRAY_MODES or mode.startswith("I;16"):
        return 1
    if mode in ("P", "PA"):
        pal = img.getpalette() or []
        rgb = np.asarray(pal[: len(pal) // 3 * 3], dtype=np.int32).reshape(-1, 3)
        return 1 if len(rgb) and bool((rgb == rgb[:, :1]).all()) else 3
    return 3


def majority_channels(sources: Iterable[ImageSource]) -> int:
    """The channel count most of ``sources`` have on their own (:func:`image_channels`); ties and no readable
    image give 3. Reads only the headers; unreadable files are left out of the count."""
    counts = {1: 0, 3: 0}
    for source in sources:
        try:
            if isinstance(source, Image.Image):
                counts[image_channels(source)] += 1
                continue
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                counts[image_channels(img)] += 1
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
            continue
    return 1 if counts[1] > counts[3] else 3


def _decode_opened(
    img: Image.Image, channels: int | None, size: tuple[int, int] | None, background: tuple[int, int, int]
) -> DecodedImage:
    img.load()  # decode fully now: truncated data raises here, not later
    stored = (img.height, img.width)
    orientation = exif_orientation(img)
    if orientation != 1:
        img = img.transpose(_TRANSPOSE[orientation])
    img = _convert(img, channels or image_channels(img), background)
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.array(img, dtype=np.uint8)
    return DecodedImage(arr[:, :, None] if arr.ndim == 2 else arr, orientation, stored)


def decode_image(
    source: ImageSource,
    channels: int | None = 3,
    size: int | tuple[int, int] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    name: str | None = None,
) -> DecodedImage:
    """Decode ``source`` (a path, binary file object, ``bytes`` or PIL image) upright to uint8 (H, W, channels).

    ``channels`` 1 (``L``) or 3 (``RGB``); ``None`` keeps the image's own count (:func:`image_channels`).
    Grayscale, palette, RGBA/LA (alpha composited on ``background``), CMYK/YCbCr/LAB, 1-bit and 16/32-bit
    images are converted; the EXIF orientation is applied; animated images give their first frame. ``size``
    (H, W) resizes with antialiased bilinear filtering. Any failure raises :class:`BadImageError` naming the file
    (or ``name``). Returns the pixels, the orientation applied and the stored (height, width).
    """
    where = _where(source, name)
    if channels not in (1, 3, None):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                out = _decode_opened(source, channels, _size(size), background)
            else:
                with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                    out = _decode_opened(img, channels, _size(size), background)
    except FileNotFoundError:
        raise BadImageError(where, "file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(where, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombError) as e:
        raise BadImageError(where, f"{type(e).__name__}: {e}") from None
    except Image.DecompressionBombWarning as e:
        raise BadImageError(where, f"decompression bomb: {e}") from None
    arr = out.pixels
    if (channels is not None and arr.shape[-1] != channels) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadImageError(where, f"unexpected decoded shape {arr.shape}")
    return out


def load_image(
    path: ImageSource,
    channels: int | None = 3,
    size: int | tuple[int, int] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    name: str | None = None,
) -> np.ndarray:
    """The uint8 (H, W, channels) pixels of :func:`decode_image` (same arguments)."""
    return decode_image(path, channels, size, background, name).pixels


def load_label_map(
    source: ImageSource,
    orientation: int = 1,
    size: int | tuple[int, int] | None = None,
    name: str | None = None,
    stored_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A class-index map (single-channel PNG: mode L, P or I) as stored, no conversion, no EXIF of its own, moved by
    the ``orientation`` of the image it annotates and resized (nearest) to ``size`` (H, W). Returns (H, W)
    integers. A multi-channel file raises :class:`BadImageError`; a stored (height, width) other than
    ``stored_size`` (its image's, when given) raises ValueError."""
    where = _where(source, name)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()
            if img.mode not in ("1", "L", "P", "I", "I;16", "F") and not img.mode.startswith("I;16"):
                raise BadImageError(where, f"a label map must have one channel, got mode {img.mode}")
            if stored_size is not None and (img.height, img.width) != tuple(stored_size):
                raise ValueError(
                    f"{where} is {(img.height, img.width)}, its image {tuple(stored_size)} (height, width)"
                )
            img = orient_label_map(img, orientation)
            s = _size(size)
            if s is not None and img.size != (s[1], s[0]):
                img = img.resize((s[1], s[0]), Image.Resampling.NEAREST)
            return np.array(img)
    except FileNotFoundError:
        raise BadImageError(where, "file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(where, "not a recognised image format") from None
    except BadImageError:
        raise
    except (OSError, SyntaxError, EOFError) as e:
        raise BadImageError(where, f"{type(e).__name__}: {e}") from None


def orient_label_map(mask: Any, orientation: int) -> Any:
    """Move a mask in the stored pixel frame (PIL image or (H, W) array) by the transpose of EXIF ``orientation``."""
    method = _TRANSPOSE.get(orientation)
    if method is None:
        return mask
    if isinstance(mask, Image.Image):
        return mask.transpose(method)
    a = np.asarray(mask)
    a = {
        2: lambda m: m[:, ::-1],
        3: lambda m: m[::-1, ::-1],
        4: lambda m: m[::-1],
        5: lambda m: m.swapaxes(0, 1),
        6: lambda m: np.rot90(m, -1),
        7: lambda m: np.rot90(m, 2).swapaxes(0, 1),
        8: lambda m: np.rot90(m, 1),
    }[orientation](a)
    return np.ascontiguousarray(a)


def orient_boxes(
    boxes: Any, orientation: int, stored_size: tuple[int, int], fmt: str = "xywh"
) -> torch.Tensor:
    """Boxes in the stored pixel frame of an image of ``stored_size`` (height, width) -> the same boxes after the
    transpose of EXIF ``orientation`` (what :func:`decode_image` applies). ``fmt`` ``'xywh'`` (COCO) or ``'xyxy'``;
    pixel units; returns float32 (n, 4) in ``fmt``."""
    if fmt not in ("xywh", "xyxy"):
        raise ValueError(f"fmt must be 'xywh' or 'xyxy', got {fmt!r}")
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if orientation not in _TRANSPOSE:
        return b.clone()
    x0, y0 = b[:, 0], b[:, 1]
    x1, y1 = (x0 + b[:, 2], y0 + b[:, 3]) if fmt == "xywh" else (b[:, 2], b[:, 3])
    H, W = stored_size
    # where a stored point (x, y) lands once the image is shown upright
    move = {
        2: lambda x, y: (W - x, y),
        3: lambda x, y: (W - x, H - y),
        4: lambda x, y: (x, H - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (H - y, x),
        7: lambda x, y: (H - y, W - x),
        8: lambda x, y: (y, W - x),
    }[orientation]
    ax, ay = move(x0, y0)
    bx, by = move(x1, y1)
    nx0, nx1 = torch.minimum(ax, bx), torch.maximum(ax, bx)
    ny0, ny1 = torch.minimum(ay, by), torch.maximum(ay, by)
    if fmt == "xywh":
        return torch.stack([nx0, ny0, nx1 - nx0, ny1 - ny0], 1)
    return torch.stack([nx0, ny0, nx1, ny1], 1)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) array -> float32 (C, H, W) tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255)
