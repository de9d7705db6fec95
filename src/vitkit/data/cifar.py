"""CIFAR-10/100 from the official python batches, and CIFAR-10 from a JPEG archive (with a decode cache)."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import lzma
import os
import tarfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .._cache import default_cache_dir
from .base import DatasetNotFoundError, TensorImageDataset, check_split
from .download import download_file
from .images import BadImageError, load_image
from .safe_pickle import safe_load_pickle

__all__ = ["CIFAR10_CLASSES", "CIFAR10", "CIFAR100", "CIFAR10JPEG", "default_cache_dir"]

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ----------------------------------------------------------------------------------------- python batches
class CIFAR10(TensorImageDataset):
    """CIFAR-10 from the official ``cifar-10-batches-py`` pickles (50,000 train / 10,000 test, 3x32x32).

    ``root`` may be the batches folder itself or a parent holding it (also ``root/cifar10/...``).
    The pickles are read with a restricted unpickler (:mod:`vitkit.data.safe_pickle`) that refuses
    anything but numpy arrays and plain containers. ``download=True`` fetches and MD5-checks the
    official archive into ``root`` and extracts it.
    """

    name: ClassVar[str] = "cifar10"
    base_folder: ClassVar[str] = "cifar-10-batches-py"
    split_files: ClassVar[dict[str, list[str]]] = {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
    }
    meta_file: ClassVar[str] = "batches.meta"
    label_key: ClassVar[str] = "labels"
    names_key: ClassVar[str] = "label_names"
    url: ClassVar[str] = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5: ClassVar[str] = "c58f30108f718f92721af3b95e74349a"

    def __init__(self, root: str | Path, split: str = "train", download: bool = False) -> None:
        self.split = check_split(split)
        self.root = Path(root).expanduser()
        folder = self.find_folder(self.root)
        if folder is None and download:
            folder = self.download(self.root)
        if folder is None:
            raise DatasetNotFoundError(self.name, self._candidates(self.root), f"{self.base_folder}/")
        self.folder = folder
        xs, ys = [], []
        for fname in self.split_files[split]:
            x, y = self._read_batch(folder / fname)
            xs.append(x)
            ys.append(y)
        images = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32))
        super().__init__(images, torch.from_numpy(np.concatenate(ys)), self._read_classes(folder))

    def _read_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        batch = safe_load_pickle(path)
        if not isinstance(batch, dict) or "data" not in batch or self.label_key not in batch:
            raise ValueError(
                f"{path}: not a CIFAR batch (expected a dict with 'data' and '{self.label_key}')"
            )
        data = np.asarray(batch["data"])
        labels = np.asarray(batch[self.label_key], dtype=np.int64)
        if (
            data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32
            or len(data) != len(labels)
        ):
            raise ValueError(
                f"{path}: unexpected CIFAR batch layout: data {data.dtype}{data.shape}, {len(labels)} labels"
            )
        return data, labels

    def _read_classes(self, folder: Path) -> list[str]:
        meta = folder / self.meta_file
        if meta.is_file():
            names = safe_load_pickle(meta).get(self.names_key)
            if names:
                return [str(n) for n in names]
        return list(CIFAR10_CLASSES)

    @classmethod
    def _candidates(cls, root: Path) -> list[Path]:
        return [
            root,
            root / cls.base_folder,
            root / cls.name / cls.base_folder,
            root / cls.name.upper() / cls.base_folder,
        ]

    @classmethod
    def find_folder(cls, root: Path) -> Path | None:
        for d in cls._candidates(root):
            if all((d / f).is_file() for files in cls.split_files.values() for f in files):
                return d
        return None

    @classmethod
    def download(cls, root: Path) -> Path:
        archive = root / cls.url.rsplit("/", 1)[1]
        if not archive.is_file():
            download_file([cls.url], archive, md5=cls.md5)
        with tarfile.open(archive, "r:gz") as tf:
            tf.extractall(root, filter="data")
        return root / cls.base_folder


class CIFAR100(CIFAR10):
    """CIFAR-100 from ``cifar-100-python`` (``label_type='fine'`` 100 classes or ``'coarse'`` 20)."""

    name = "cifar100"
    base_folder = "cifar-100-python"
    split_files = {"train": ["train"], "test": ["test"]}
    meta_file = "meta"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    md5 = "eb9058c3a382ffc7106e4002c42a8d85"

    def __init__(
        self, root: str | Path, split: str = "train", download: bool = False, label_type: str = "fine"
    ):
        if label_type not in ("fine", "coarse"):
            raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
        self.label_key = f"{label_type}_labels"
        self.names_key = f"{label_type}_label_names"
        super().__init__(root, split, download)

    def _read_classes(self, folder: Path) -> list[str]:
        meta = folder / self.meta_file
        if not meta.is_file():
            raise DatasetNotFoundError(self.name, [meta], "the 'meta' file with the class names")
        return [str(n) for n in safe_load_pickle(meta)[self.names_key]]


# ----------------------------------------------------------------------------------------- JPEG archive
def _iter_tar_fast(raw: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield (name, bytes) of regular files from an uncompressed ustar/pax buffer.

    Much faster than :mod:`tarfile` for 60k tiny members. Raises ValueError on anything it does not
    understand (the caller then falls back to :mod:`tarfile`).
    """
    pos, n, long_name = 0, len(raw), None
    while pos + 512 <= n:
        h = raw[pos : pos + 512]
        if h.count(0) == 512:
            return
        chk = int(h[148:156].strip(b"\0 ") or b"0", 8)
        if chk != sum(h[:148]) + 8 * 32 + sum(h[156:]):
            raise ValueError(f"bad tar header checksum at offset {pos}")
        size = int(h[124:136].strip(b"\0 ") or b"0", 8)
        kind = h[156:157]
        body = raw[pos + 512 : pos + 512 + size]
        pos += 512 + (size + 511) // 512 * 512
        if kind in (b"0", b"\0"):
            name = h[0:100].split(b"\0", 1)[0].decode()
            prefix = h[345:500].split(b"\0", 1)[0].decode() if h[257:262] == b"ustar" else ""
            yield (long_name or (f"{prefix}/{name}" if prefix else name)), body
            long_name = None
        elif kind == b"x":  # pax header: may carry the real path of the next member
            for rec in body.decode("utf-8", "replace").split("\n"):
                if " path=" in rec:
                    long_name = rec.split(" path=", 1)[1]
        elif kind == b"L":  # GNU long name
            long_name = body.rstrip(b"\0").decode()
        elif kind not in (b"5", b"g"):  # directories and global pax headers carry no file
            raise ValueError(f"unsupported tar member type {kind!r}")


def _iter_archive(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) for the regular files of a .tar / .tar.xz / .tar.gz archive."""
    try:
        if path.name.endswith((".xz", ".txz")):
            raw = lzma.open(path).read()
        elif path.name.endswith((".gz", ".tgz")):
            raw = gzip.open(path).read()
        else:
            raw = path.read_bytes()
    except (lzma.LZMAError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"corrupt or truncated archive {path}: {type(e).__name__}: {e}") from None
    try:
        yield from list(_iter_tar_fast(raw))
        return
    except ValueError as e:
        log.debug("fast tar reader gave up on %s (%s); using tarfile", path, e)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            members = [(m.name, f.read()) for m in tf if m.isfile() and (f := tf.extractfile(m)) is not None]
    except tarfile.TarError as e:
        raise ValueError(f"corrupt tar archive {path}: {e}") from None
    yield from members


class CIFAR10JPEG(TensorImageDataset):
    """CIFAR-10 stored as JPEGs: ``cifar10-jpeg.tar.xz`` holding ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg``.

    ``root`` may be the archive, a folder holding it (or ``cifar10-jpeg/`` holding it), or an
    already-extracted folder with ``train/`` and ``test/``. The archive is read directly (nothing is
    extracted to disk); decoded uint8 pixels of both splits are cached in ``cache_dir`` (default
    :func:`default_cache_dir`) as one ``.npz`` keyed on the source's path, size and mtime, so later
    loads take well under a second. Class order is :data:`CIFAR10_CLASSES`; within a class images
    are in file-name order. ``on_error='skip'`` drops undecodable images (``skipped`` lists them).
    """

    name: ClassVar[str] = "cifar10-jpeg"
    archive_name: ClassVar[str] = "cifar10-jpeg.tar.xz"
    cache_version: ClassVar[int] = 1

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        on_error: str = "skip",
    ) -> None:
        self.split = check_split(split)
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.root = Path(root).expanduser()
        self.source = self.find_source(self.root)
        if self.source is None:
            raise DatasetNotFoundError(
                self.name,
                self._candidates(self.root),
                f"{self.archive_name} or an extracted folder with train/ test/",
            )
        self.on_error = on_error
        self.cache_file: Path | None = None
        arrays = None
        if use_cache:
            self.cache_file = (
                Path(cache_dir or default_cache_dir()).expanduser() / f"{self.name}-{self._key()}.npz"
            )
            arrays = self._read_cache(self.cache_file, split)
        if arrays is None:
            arrays = self._decode_all()
            if self.cache_file is not None:
                self._write_cache(self.cache_file, arrays)
        x = arrays[f"{split}_x"]
        skipped = arrays[f"{split}_skipped"]
        self.skipped: list[tuple[str, str]] = [(str(p), str(r)) for p, r in skipped.reshape(-1, 2)]
        self.num_skipped = len(self.skipped)
        if self.num_skipped and on_error == "raise":
            raise BadImageError(*self.skipped[0])
        if self.num_skipped:
            warnings.warn(f"{self.name}/{split}: skipped {self.num_skipped} unreadable images", stacklevel=2)
        super().__init__(
            torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(arrays[f"{split}_y"]), CIFAR10_CLASSES
        )

    # -- locating the data
    @classmethod
    def _candidates(cls, root: Path) -> list[Path]:
        sub = root / "cifar10-jpeg"
        return [root / cls.archive_name, sub / cls.archive_name, root, sub, sub / "cifar10-jpeg"]

    @classmethod
    def find_source(cls, root: Path) -> Path | None:
        """The archive or extracted folder to read, or None."""
        if root.is_file():
            return root
        for c in cls._candidates(root):
            if c.is_file() or (c.is_dir() and (c / "train").is_dir() and (c / "test").is_dir()):
                return c
        return None

    # -- cache
    def _key(self) -> str:
        src = self.source.resolve()
        if src.is_file():
            st = src.stat()
            ident = f"{src}|{st.st_size}|{st.st_mtime_ns}"
        else:
            files = sorted(p for p in src.rglob("*") if p.is_file())
            ident = f"{src}|" + "|".join(
                f"{p.relative_to(src)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files
            )
        return hashlib.sha256(f"v{self.cache_version}|{ident}".encode()).hexdigest()[:16]

    @staticmethod
    def _read_cache(path: Path, split: str) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in (f"{split}_x", f"{split}_y", f"{split}_skipped")}
        except Exception as e:  # a partial or corrupt cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s)", path, e)
            return None

    @staticmethod
    def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("could not write the decode cache %s (%s); the next load will decode again", path, e)

    # -- decoding
    def _members(self) -> Iterator[tuple[str, bytes]]:
        if self.source.is_file():
            yield from _iter_archive(self.source)
            return
        for p in sorted(self.source.glob("*/*/*")):
            if p.is_file():
                yield f"{self.source.name}/{p.relative_to(self.source).as_posix()}", p.read_bytes()

    def _decode_all(self) -> dict[str, np.ndarray]:
        """Decode every image of both splits (about 20 s for the 60k archive)."""
        cls_index = {c: i for i, c in enumerate(CIFAR10_CLASSES)}
        found: dict[str, list[tuple[int, str, bytes]]] = {"train": [], "test": []}
        for name, data in self._members():
            parts = name.split("/")
            if (
                len(parts) < 3
                or parts[-3] not in found
                or not name.lower().endswith((".jpg", ".jpeg", ".png"))
            ):
                continue
            if parts[-2] not in cls_index:
                raise ValueError(f"{self.source}: unknown class folder {parts[-2]!r} in {name}")
            found[parts[-3]].append((cls_index[parts[-2]], name, data))
        if not found["train"] and not found["test"]:
            raise ValueError(f"{self.source}: no <split>/<class>/*.jpg images inside")
        out: dict[str, np.ndarray] = {}
        for split, items in found.items():
            items.sort(key=lambda t: (t[0], t[1]))
            xs, ys, bad = [], [], []
            for label, name, data in items:
                where = f"{self.source}::{name}"
                try:
                    xs.append(load_image(io.BytesIO(data), 3, size=(32, 32), name=where))
                    ys.append(label)
                except BadImageError as e:
                    bad.append((e.path, e.reason))
            out[f"{split}_x"] = np.stack(xs) if xs else np.zeros((0, 32, 32, 3), np.uint8)
            out[f"{split}_y"] = np.asarray(ys, dtype=np.int64)
            out[f"{split}_skipped"] = np.asarray(bad, dtype=str).reshape(-1, 2)
        return out
