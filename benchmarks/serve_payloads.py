"""The files of the fault cases (:mod:`serve_faults`): odd, broken and hostile images, built in memory.

Builders take the server's limits (most ignore them) and are cached: a case that repeats costs nothing.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image

BOUNDARY = "vitkit-fault-boundary"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><rect width="28" height="28"/></svg>'


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@lru_cache
def noise_png(seed: int, size: int = 28, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, len(mode))
    return _save(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode), "PNG")


def random_bytes(_=None) -> bytes:
    return np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def truncated_jpeg(_=None) -> bytes:
    rgb = np.random.default_rng(8).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _save(Image.fromarray(rgb), "JPEG")
    return data[: len(data) // 2]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, zdata: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zdata) + _chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with a token of pixel data."""
    return _png(width, height, zlib.compress(b"\0" * 64))


def zero_size_png(_=None) -> bytes:
    return png_header_only(0, 0)


def corrupt_png(_=None) -> bytes:
    data = bytearray(noise_png(9, 32))
    data[60] ^= 0xFF  # inside IDAT: its CRC no longer matches
    return bytes(data)


def _zeros_zlib(length: int, block: int = 2**24) -> bytes:
    """zlib data of ``length`` zero bytes, without deflating them all: blocks ended by a full flush are
    independent of what came before, so one is repeated; the Adler-32 of zeros is (length mod 65521, 1)."""
    c = zlib.compressobj(9)
    n, rest = divmod(length, block)
    first = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    last = c.compress(bytes(rest)) + c.flush()
    adler = ((length % 65521) << 16) | 1
    return first + again * (n - 1) + last[:-4] + adler.to_bytes(4, "big")


@lru_cache
def zero_bomb_png(_=None) -> bytes:
    """A real 30000x30000 black PNG (every row filter 0, all pixels 0): 900 Mpixels in ~0.9 MB."""
    return _png(30_000, 30_000, _zeros_zlib(30_000 * 30_001))


@lru_cache
def wide_png(_=None) -> bytes:
    """1 x 39,000,000 pixels: under a 40 Mpixel limit, an absurd shape."""
    return _png(39_000_000, 1, _zeros_zlib(39_000_001))


@lru_cache
def gzip_bomb(_=None) -> bytes:
    """20 MB of zeros gzipped (~20 kB): the server must not inflate it."""
    return gzip.compress(bytes(20 * 2**20), 9)


def multipart(parts: list[tuple[str, str, str, bytes]]) -> bytes:
    out = b""
    for name, filename, ctype, data in parts:
        out += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"  # fmt: skip
    return out + f"--{BOUNDARY}--\r\n".encode()


@lru_cache
def many_parts(_=None) -> bytes:
    """1,100 tiny file parts (the parser allows 1,000 files)."""
    return multipart([("file", f"{i}.png", "image/png", b"x") for i in range(1100)])


# ------------------------------------------------------------------------------ odd but valid images
def lab_tiff(_=None) -> bytes:
    return _save(Image.new("LAB", (28, 28), (255, 128, 128)), "TIFF")


def cmyk_jpeg(_=None) -> bytes:
    return _save(Image.new("CMYK", (28, 28), (0, 255, 0, 40)), "JPEG")


def png_16bit(_=None) -> bytes:
    return _save(Image.fromarray(np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 80), "PNG")


def palette_png_transparency(_=None) -> bytes:
    img = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 4, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    return _save(img, "PNG", transparency=0)


def animated_gif(_=None) -> bytes:
    frames = [Image.new("L", (28, 28), v) for v in (0, 128, 255)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated_jpeg(_=None) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    img = Image.fromarray(np.random.default_rng(10).integers(0, 256, (20, 40, 3), dtype=np.uint8))
    return _save(img, "JPEG", exif=exif)


def rgba_png(_=None) -> bytes:
    return noise_png(11, 28, "RGBA")


def float_tiff(_=None) -> bytes:
    return _save(
        Image.fromarray(np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28), mode="F"), "TIFF"
    )


ODD_IMAGES = [  # (case name, image/<subtype> and file extension, builder)
    ("lab_tiff", "tiff", lab_tiff),
    ("cmyk_jpeg", "jpeg", cmyk_jpeg),
    ("png_16bit", "png", png_16bit),
    ("palette_png_transparency", "png", palette_png_transparency),
    ("animated_gif", "gif", animated_gif),
    ("exif_rotated_jpeg", "jpeg", exif_rotated_jpeg),
    ("rgba_png", "png", rgba_png),
    ("float_tiff", "tiff", float_tiff),
]
