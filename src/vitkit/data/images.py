"""Robust image decoding with Pillow: any common mode in, uint8 ``L`` or ``RGB`` out, clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMG_EXTENSIONS", "BadImageError", "load_image", "to_tensor", "is_image_file"]

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


def _convert(img: Image.Image, channels: int, background: tuple[int, int, int]) -> Image.Image:
    """Convert any Pillow mode to ``L`` (channels=1) or ``RGB`` (channels=3)."""
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        img, mode = _to_8bit_gray(img), "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):  # composite on a solid background
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*background, 255))
        img, mode = Image.alpha_composite(bg, rgba).convert("RGB"), "RGB"
    target = "L" if channels == 1 else "RGB"
    return img if mode == target else img.convert(target)


def load_image(
    path: str | Path | IO[bytes],
    channels: int = 3,
    size: int | tuple[int, int] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    name: str | None = None,
) -> np.ndarray:
    """Decode ``path`` (a file path or binary file object) to a uint8 array of shape (H, W, channels).

    Grayscale, palette, RGBA/LA (alpha composited on ``background``), CMYK/YCbCr/LAB, 1-bit and
    16/32-bit images are converted to ``L`` (``channels=1``) or ``RGB`` (``channels=3``). EXIF
    orientation is applied and animated images give their first frame. ``size`` (H, W) resizes
    with antialiased bilinear filtering. Any failure raises :class:`BadImageError` naming the file
    (or ``name``, for file objects).
    """
    where = name or (path if isinstance(path, (str, Path)) else getattr(path, "name", "<stream>"))
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode fully now: truncated data raises here, not later
                img = ImageOps.exif_transpose(img) or img
                img = _convert(img, channels, background)
                if size is not None:
                    h, w = (size, size) if isinstance(size, int) else size
                    if img.size != (w, h):
                        img = img.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise BadImageError(where, "file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(where, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombError) as e:
        raise BadImageError(where, f"{type(e).__name__}: {e}") from None
    except Image.DecompressionBombWarning as e:
        raise BadImageError(where, f"decompression bomb: {e}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[-1] != channels or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadImageError(where, f"unexpected decoded shape {arr.shape}")
    return arr


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) array -> float32 (C, H, W) tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255)
