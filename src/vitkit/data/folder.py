"""Datasets of image files: a class-per-folder tree (:class:`ImageFolder`) or a CSV/JSONL manifest."""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetNotFoundError, TensorImageDataset
from .images import IMG_EXTENSIONS, BadImageError, is_image_file, load_image, majority_channels, to_tensor

__all__ = ["FileImageDataset", "ImageFolder", "ManifestDataset", "read_manifest"]

log = logging.getLogger(__name__)

PATH_KEYS = ("path", "image", "file", "filename", "filepath", "image_path")
LABEL_KEYS = ("label", "class", "target", "category", "class_name")


def _size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


class FileImageDataset(Dataset):
    """Images decoded lazily from ``samples`` = [(path, class index)].

    Items are ``(float32 CHW tensor in [0, 1], int)``, decoded by :func:`~vitkit.data.images.decode_image` (EXIF
    orientation applied, any mode converted) to ``channels`` (1 or 3; ``None``: the majority of the files' own
    counts, ties 3, so a folder of grayscale images with one RGB photo loads as grayscale and the reverse as RGB)
    and resized to ``image_size`` (H, W) when given (needed to batch images of different sizes).

    Unreadable files: ``on_error='raise'`` raises :class:`BadImageError` naming the file;
    ``on_error='skip'`` logs a warning, records ``(path, reason)`` in ``skipped`` and returns the next
    readable sample instead (so ``len`` stays fixed). ``prescan=True`` decodes everything up front and
    drops bad files from ``samples``, so nothing is substituted later. Note that with DataLoader workers
    each worker keeps its own ``skipped`` list; prescan or :meth:`preload` to get one count.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        image_size: int | Sequence[int] | None = None,
        channels: int | None = 3,
        on_error: str = "skip",
        prescan: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if channels not in (1, 3, None):
            raise ValueError(f"channels must be 1, 3 or None, got {channels}")
        self.samples = [(str(p), int(y)) for p, y in samples]
        if channels is None:
            channels = majority_channels(p for p, _ in self.samples)
        self.targets = torch.tensor([y for _, y in self.samples], dtype=torch.long)
        self.classes = list(classes)
        self.image_size = _size(image_size)
        self.num_channels = channels
        self.on_error = on_error
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()
        if prescan:
            self.prescan()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> np.ndarray:
        """Decode sample ``index`` to uint8 (H, W, C); raises :class:`BadImageError`."""
        return load_image(self.samples[index][0], self.num_channels, self.image_size)

    def _record(self, index: int, err: BadImageError) -> None:
        self._bad.add(index)
        self.skipped.append((err.path, err.reason))
        log.warning(
            "skipping unreadable image %s: %s (%d skipped so far)", err.path, err.reason, self.num_skipped
        )

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        n = len(self.samples)
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                arr = self.load(j)
            except BadImageError as e:
                if self.on_error == "raise":
                    raise
                self._record(j, e)
                continue
            x = to_tensor(arr)
            return (self.transform(x) if self.transform else x), self.samples[j][1]
        if not n:
            raise IndexError(index)
        raise BadImageError(self.samples[index][0], "no readable image left in the dataset")

    def prescan(self) -> int:
        """Decode every file now; drop unreadable ones (or raise, per ``on_error``). Returns the number dropped."""
        good = []
        for i, (path, y) in enumerate(self.samples):
            try:
                self.load(i)
                good.append((path, y))
            except BadImageError as e:
                if self.on_error == "raise":
                    raise
                self.skipped.append((e.path, e.reason))
        dropped = len(self.samples) - len(good)
        self.samples, self._bad = good, set()
        self.targets = torch.tensor([y for _, y in good], dtype=torch.long)
        if dropped:
            warnings.warn(
                f"{type(self).__name__}: skipped {dropped} unreadable image(s); see .skipped", stacklevel=2
            )
        return dropped

    def preload(self) -> TensorImageDataset:
        """Decode everything into a :class:`TensorImageDataset` (uint8), for :class:`TensorBatchLoader`.

        Unreadable files are skipped or raise per ``on_error``; ``image_size`` must be set unless all images
        already share one size.
        """
        xs, ys = [], []
        for i, (_, y) in enumerate(self.samples):
            try:
                xs.append(self.load(i))
                ys.append(y)
            except BadImageError as e:
                if self.on_error == "raise":
                    raise
                self._record(i, e)
        if len({x.shape for x in xs}) > 1:
            raise ValueError(
                "images have different sizes; pass image_size=(H, W) to preload them as one tensor"
            )
        if not xs:
            raise ValueError(f"{type(self).__name__}: no readable images to preload")
        ds = TensorImageDataset(torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2), ys, self.classes)
        ds.skipped, ds.num_skipped = list(self.skipped), self.num_skipped  # type: ignore[attr-defined]
        return ds

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, classes={len(self.classes)}, skipped={self.num_skipped})"
        )


class ImageFolder(FileImageDataset):
    """``root/<class>/**/*.{jpg,jpeg,png,webp,bmp,gif,tif,tiff}``; classes are the sorted sub-folder names.

    An empty class folder triggers a warning but stays in ``classes`` (so class indices stay the same
    across splits that share the class list); pass ``classes`` to fix the list and order yourself.
    Hidden files/folders and files with other extensions are ignored.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | Sequence[int] | None = None,
        channels: int | None = 3,
        on_error: str = "skip",
        classes: Sequence[str] | None = None,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
        prescan: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError("image folder", [self.root], "a folder with one sub-folder per class")
        if classes is None:
            classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
            if not classes:
                raise ValueError(f"{self.root}: no class sub-folders (expected root/<class>/<image files>)")
        samples: list[tuple[str, int]] = []
        for idx, name in enumerate(classes):
            folder = self.root / name
            files = sorted(
                p
                for p in (folder.rglob("*") if folder.is_dir() else [])
                if p.is_file()
                and is_image_file(p, extensions)
                and not any(s.startswith(".") for s in p.relative_to(folder).parts)
            )
            if not files:
                warnings.warn(
                    f"class folder {folder} has no images; keeping class {name!r} (index {idx}) in the class list",
                    stacklevel=2,
                )
            samples.extend((str(p), idx) for p in files)
        if not samples:
            raise ValueError(
                f"{self.root}: no image files with extensions {extensions} under the class folders"
            )
        super().__init__(samples, classes, image_size, channels, on_error, prescan, transform)


# ----------------------------------------------------------------------------------------- manifests
def _find_key(keys: Sequence[str], wanted: Sequence[str]) -> str | None:
    low = {k.strip().lower(): k for k in keys}
    return next((low[w] for w in wanted if w in low), None)


def read_manifest(path: str | Path) -> list[tuple[int, str, Any, str | None]]:
    """Rows ``(line number, image path, raw label, split or None)`` of a CSV/TSV (header optional),
    JSONL or JSON-list manifest. Columns/keys: path|image|file|filename, label|class|target, optional split."""
    path = Path(path)
    rows: list[tuple[int, str, Any, str | None]] = []
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            records = list(enumerate(json.loads(text), 1))
        else:
            records = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: invalid JSON ({e})") from None
        for n, rec in records:
            if isinstance(rec, (list, tuple)) and len(rec) >= 2:
                rows.append((n, str(rec[0]), rec[1], None))
                continue
            pk = _find_key(list(rec), PATH_KEYS) if isinstance(rec, dict) else None
            lk = _find_key(list(rec), LABEL_KEYS) if isinstance(rec, dict) else None
            if pk is None or lk is None:
                raise ValueError(f"{path}:{n}: expected an object with 'path' and 'label' keys, got {rec!r}")
            sk = _find_key(list(rec), ("split",))
            rows.append((n, str(rec[pk]), rec[lk], str(rec[sk]) if sk else None))
        return rows
    with open(path, newline="", encoding="utf-8") as f:
        table = [r for r in csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",")]
    if not table:
        return rows
    header = [c.strip().lower() for c in table[0]]
    pi, li, si, start = 0, 1, None, 0
    if any(k in header for k in PATH_KEYS) and any(k in header for k in LABEL_KEYS):
        pi = next(header.index(k) for k in PATH_KEYS if k in header)
        li = next(header.index(k) for k in LABEL_KEYS if k in header)
        si = header.index("split") if "split" in header else None
        start = 1
    for n, r in enumerate(table[start:], start + 1):
        if not any(c.strip() for c in r):
            continue
        if len(r) <= max(pi, li, si or 0):
            raise ValueError(f"{path}:{n}: expected path and label columns, got {r!r}")
        rows.append((n, r[pi].strip(), r[li].strip(), r[si].strip() if si is not None else None))
    return rows


def _as_int(label: Any) -> int | None:
    if isinstance(label, bool):
        return None
    if isinstance(label, int):
        return label
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        return int(label)
    return None


class ManifestDataset(FileImageDataset):
    """Images listed in a CSV/TSV/JSONL/JSON manifest of (path, label) rows.

    Labels are class names or integer indices. Without ``classes``, integer labels give classes
    ``'0'..'max'`` and names give the sorted unique names. A label outside ``classes``:
    ``on_bad_label='raise'`` -> ValueError naming the manifest line and image path; ``'skip'`` drops
    the row and records ``(line, path, label)`` in ``bad_labels``. Relative paths are resolved
    against ``root`` (default: the manifest's folder). With a ``split`` column, ``split`` selects rows;
    without one all rows are used.
    """

    def __init__(
        self,
        path: str | Path,
        classes: Sequence[str] | None = None,
        root: str | Path | None = None,
        image_size: int | Sequence[int] | None = None,
        channels: int | None = 3,
        on_error: str = "skip",
        on_bad_label: str = "raise",
        split: str | None = None,
        prescan: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if on_bad_label not in ("skip", "raise"):
            raise ValueError(f"on_bad_label must be 'skip' or 'raise', got {on_bad_label!r}")
        self.manifest = Path(path).expanduser()
        if not self.manifest.is_file():
            raise DatasetNotFoundError(
                "manifest", [self.manifest], "a CSV/JSONL manifest of (path, label) rows"
            )
        self.root = Path(root).expanduser() if root is not None else self.manifest.parent
        rows = read_manifest(self.manifest)
        if split is not None and any(r[3] is not None for r in rows):
            rows = [r for r in rows if r[3] == split]
        if classes is None:
            ints = [_as_int(r[2]) for r in rows]
            if rows and all(i is not None for i in ints):
                classes = [str(i) for i in range(max(max(ints), -1) + 1)]  # type: ignore[type-var]
            else:
                classes = sorted({str(r[2]).strip() for r in rows})
        classes = list(classes)
        index = {c: i for i, c in enumerate(classes)}
        self.bad_labels: list[tuple[int, str, Any]] = []
        samples = []
        for n, p, label, _ in rows:
            y = index.get(label.strip()) if isinstance(label, str) else None
            if y is None and (i := _as_int(label)) is not None and 0 <= i < len(classes):
                y = i
            full = Path(p) if Path(p).is_absolute() else self.root / p
            if y is None:
                if on_bad_label == "raise":
                    shown = classes if len(classes) <= 20 else classes[:20] + ["..."]
                    raise ValueError(
                        f"{self.manifest}:{n}: label {label!r} of {full} is not one of the classes {shown}"
                    )
                self.bad_labels.append((n, str(full), label))
                continue
            samples.append((str(full), y))
        if self.bad_labels:
            warnings.warn(
                f"{self.manifest}: skipped {len(self.bad_labels)} row(s) with labels outside the class list; "
                "see .bad_labels",
                stacklevel=2,
            )
        if not samples:
            raise ValueError(f"{self.manifest}: no usable rows" + (f" for split {split!r}" if split else ""))
        super().__init__(samples, classes, image_size, channels, on_error, prescan, transform)

    @property
    def num_bad_labels(self) -> int:
        return len(self.bad_labels)
