"""IDX files (the original MNIST / Fashion-MNIST format) and the datasets built on them."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .base import DatasetNotFoundError, TensorImageDataset, check_split
from .download import download_file

__all__ = ["IDXError", "read_idx", "write_idx", "IDXDataset", "MNIST", "FashionMNIST"]

IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dim
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(ValueError):
    """A corrupt, truncated or unexpected IDX file; the message names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"bad IDX file {self.path}: {reason}")


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        is_gzip = f.read(2) == b"\x1f\x8b"
    if not is_gzip:
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except EOFError:
        raise IDXError(path, "gzip stream is truncated (the download may be incomplete)") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise IDXError(path, f"gzip data is corrupt ({e})") from None


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped, detected by content) into a native-endian array.

    Checks the magic number (``expected_magic`` if given, e.g. 0x803 for uint8 images) and that
    the payload size equals the size the header declares; failures raise :class:`IDXError`.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise IDXError(path, f"file too short for an IDX header ({len(buf)} bytes)")
    magic = int.from_bytes(buf[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise IDXError(path, f"magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    zero, code, ndim = buf[:2], buf[2], buf[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise IDXError(path, f"invalid magic number 0x{magic:08x} (not an IDX file?)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IDXError(path, f"truncated header: {ndim} dimensions need {header} bytes, file has {len(buf)}")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    if 0 in dims:
        raise IDXError(path, f"header declares dimensions {dims}: an empty array (no items to read)")
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    got = len(buf) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise IDXError(path, f"{what}: header says {dims} -> {expected} data bytes, found {got}")
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped if ``path`` ends in .gz); used by the tests."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    arr = np.asarray(array)
    code = codes[arr.dtype.newbyteorder("=")]
    payload = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload += arr.astype(_IDX_DTYPES[code]).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


class IDXDataset(TensorImageDataset):
    """Base for datasets stored as an (images, labels) pair of IDX files per split.

    ``root`` may be the folder holding the files, or a parent holding one of ``folder_names``
    (e.g. ``root/fashion-mnist`` or the torchvision layout ``root/FashionMNIST/raw``). Files may be
    gzipped (``.gz``) or not. ``download=True`` fetches missing files from the official mirrors
    into ``root/<folder_names[0]>`` and verifies their MD5.
    """

    name: ClassVar[str] = "idx"
    default_classes: ClassVar[list[str]] = []
    folder_names: ClassVar[tuple[str, ...]] = ()
    files: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    md5: ClassVar[dict[str, str]] = {}
    mirrors: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, split: str = "train", download: bool = False) -> None:
        self.split = check_split(split, tuple(self.files))
        self.root = Path(root).expanduser()
        folder = self.find_folder(self.root, split)
        if folder is None and download:
            folder = self.download(self.root / self.folder_names[0], split)
        if folder is None:
            raise DatasetNotFoundError(
                self.name, self._candidates(self.root), f"{' and '.join(self.files[split])} (or without .gz)"
            )
        img_file, lbl_file = (self._existing(folder, f) for f in self.files[split])
        images = read_idx(img_file, IDX_IMAGES_MAGIC)
        labels = read_idx(lbl_file, IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise IDXError(img_file, f"{len(images)} images but {lbl_file.name} has {len(labels)} labels")
        if labels.size and labels.max() >= len(self.default_classes):
            raise IDXError(lbl_file, f"label {labels.max()} outside [0, {len(self.default_classes)})")
        self.folder = folder
        super().__init__(
            torch.from_numpy(images).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
            self.default_classes,
        )

    @classmethod
    def _candidates(cls, root: Path) -> list[Path]:
        return [root] + [root / f for f in cls.folder_names]

    @staticmethod
    def _existing(folder: Path, name: str) -> Path:
        gz = folder / name
        return gz if gz.is_file() else folder / name.removesuffix(".gz")

    @classmethod
    def find_folder(cls, root: Path, split: str) -> Path | None:
        """The first candidate folder holding both files of ``split``, else None."""
        for folder in cls._candidates(root):
            if all(cls._existing(folder, f).is_file() for f in cls.files[split]):
                return folder
        return None

    @classmethod
    def download(cls, folder: Path, split: str) -> Path:
        """Download the split's files into ``folder`` (MD5-verified) and return it."""
        for name in cls.files[split]:
            if not (folder / name).is_file():
                download_file([m + name for m in cls.mirrors], folder / name, md5=cls.md5[name])
        return folder


class MNIST(IDXDataset):
    """MNIST handwritten digits: 60,000 train / 10,000 test, 1x28x28."""

    name = "mnist"
    default_classes = [str(i) for i in range(10)]
    folder_names = ("mnist", "MNIST/raw", "MNIST")
    md5 = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    mirrors = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/")


class FashionMNIST(IDXDataset):
    """Zalando Fashion-MNIST: 60,000 train / 10,000 test, 1x28x28, 10 clothing classes."""

    name = "fashion-mnist"
    default_classes = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]  # fmt: skip
    folder_names = ("fashion-mnist", "FashionMNIST/raw", "FashionMNIST", "fashion_mnist")
    md5 = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
