"""Build datasets by name, find the data folder, and per-dataset normalisation statistics."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .base import DatasetNotFoundError, TensorImageDataset
from .cifar import CIFAR10, CIFAR10JPEG, CIFAR100
from .datasets import DigitsDataset
from .folder import ImageFolder, ManifestDataset
from .idx import MNIST, FashionMNIST
from .pairs import pairs_dataset

__all__ = [
    "DATASET_STATS",
    "build_dataset",
    "dataset_stats",
    "list_datasets",
    "resolve_data_dir",
    "canonical_name",
]

Stats = tuple[tuple[float, ...], tuple[float, ...]]

# (mean, std) per channel of the training split, on [0, 1] pixels.
DATASET_STATS: dict[str, Stats] = {
    "digits": ((0.3054,), (0.3761,)),  # DigitsDataset('train'), seed 0; all 1,797 images: 0.3053 / 0.3760
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar10-jpeg": ((0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)),  # measured on the JPEG train split
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_BUILDERS: dict[str, type[Dataset]] = {
    "digits": DigitsDataset,
    "mnist": MNIST,
    "fashion-mnist": FashionMNIST,
    "cifar10": CIFAR10,
    "cifar10-jpeg": CIFAR10JPEG,
    "cifar100": CIFAR100,
}
_ALIASES = {
    "sklearn-digits": "digits",
    "fmnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "cifar10_jpeg": "cifar10-jpeg",
    "cifar10jpeg": "cifar10-jpeg",
}
# Generic options a caller may pass for any dataset; dropped where a dataset has no such option.
_OPTIONAL_KW = {"on_error", "image_size", "channels", "download", "prescan"}


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset` (plus the ``folder:<path>`` / ``manifest:<path>`` forms)."""
    return [*_BUILDERS, "folder:<path>", "manifest:<path>"]


def canonical_name(name: str) -> str:
    """Lower-case ``name`` and resolve aliases (``fmnist`` -> ``fashion-mnist``)."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder: ``data_dir`` if given, else ``$VITKIT_DATA``, else ``./data``."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get("VITKIT_DATA") or "data"
    return Path(chosen).expanduser()


def _call(cls: type, *args: Any, **kw: Any) -> Any:
    params = inspect.signature(cls.__init__).parameters
    kw = {k: v for k, v in kw.items() if k in params or k not in _OPTIONAL_KW}
    return cls(*args, **kw)


def _split_folder(base: Path, split: str) -> Path | None:
    names = {"train": ["train"], "test": ["test", "val", "valid", "validation"]}.get(
        split, [split, "val", "valid", "validation"] if split in ("val", "valid", "validation") else [split]
    )
    for n in names:
        if (base / n).is_dir():
            return base / n
    has_splits = any((base / n).is_dir() for n in ("train", "test", "val", "valid", "validation"))
    return base if split in ("train", "all") and not has_splits else None


def _local_path(spec: str, data_dir: str | Path | None) -> Path:
    p = Path(spec).expanduser()
    if not p.is_absolute() and not p.exists() and (resolve_data_dir(data_dir) / p).exists():
        return resolve_data_dir(data_dir) / p
    return p


def build_dataset(name: str, split: str = "train", data_dir: str | Path | None = None, **kw: Any) -> Dataset:
    """Build a dataset by name: ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar10-jpeg``,
    ``cifar100``, ``folder:<path>``, ``manifest:<path>`` or ``pairs:<path>`` (image-text pairs,
    :func:`~vitkit.data.pairs.pairs_dataset`).

    Files are looked up under :func:`resolve_data_dir` (``data_dir`` > ``$VITKIT_DATA`` > ``./data``).
    ``folder:<path>`` uses ``<path>/<split>`` (``test`` also accepts ``val``/``valid``) or, for ``train``
    without split sub-folders, ``<path>`` itself; non-train splits reuse the train split's class list.
    ``manifest:<path>`` may contain ``{split}`` (``manifest:lists/{split}.csv``); otherwise a ``split``
    column selects rows. Extra keyword arguments go to the dataset class; the generic ones
    (``on_error``, ``image_size``, ``channels``, ``download``, ``prescan``) are dropped where they do not apply.
    """
    if ":" in name and name.split(":", 1)[0].lower() in ("folder", "manifest", "pairs"):
        kind, spec = name.split(":", 1)
        kind = kind.lower()
        if kind == "pairs":  # image-text pairs: the classes are the captions (vitkit.data.pairs)
            kw = {
                k: v for k, v in kw.items() if k in ("image_size", "channels", "on_error", "prescan", "root")
            }
            return pairs_dataset(_local_path(spec.replace("{split}", split), data_dir), **kw)
        if kind == "folder":
            base = _local_path(spec, data_dir)
            if not base.is_dir():
                raise DatasetNotFoundError(name, [base, resolve_data_dir(data_dir) / spec], "an image folder")
            folder = _split_folder(base, split)
            if folder is None:
                raise DatasetNotFoundError(name, [base / split], f"a {split!r} split folder")
            if "classes" not in kw and folder != base / "train" and (base / "train").is_dir():
                kw["classes"] = _call(ImageFolder, base / "train", **{**kw, "prescan": False}).classes
            return _call(ImageFolder, folder, **kw)
        path = _local_path(spec.replace("{split}", split), data_dir)
        if "classes" not in kw and "{split}" in spec and split != "train":
            train = _local_path(spec.replace("{split}", "train"), data_dir)
            if train.is_file():
                kw["classes"] = _call(
                    ManifestDataset, train, split="train", **{**kw, "prescan": False}
                ).classes
        return _call(ManifestDataset, path, split=split, **kw)

    key = canonical_name(name)
    if key not in _BUILDERS:
        folder = Path(name).expanduser().is_dir() or (resolve_data_dir(data_dir) / name).is_dir()
        hint = f" ({name!r} is a folder: name it folder:{name})" if folder else ""
        raise ValueError(f"unknown dataset {name!r}{hint}; known: {', '.join(list_datasets())}")
    cls = _BUILDERS[key]
    if cls is DigitsDataset:
        return _call(cls, split, **kw)
    return _call(cls, resolve_data_dir(data_dir), split, **kw)


@torch.no_grad()
def _measure(dataset: Dataset, max_samples: int = 2000) -> Stats:
    if isinstance(dataset, TensorImageDataset):
        x = dataset.raw
        scale = 255.0 if x.dtype == torch.uint8 else 1.0
        s = torch.zeros(x.shape[1], dtype=torch.float64)
        s2 = torch.zeros_like(s)
        for chunk in x.split(4096):
            c = chunk.double().div_(scale)
            s += c.sum((0, 2, 3))
            s2 += c.square().sum((0, 2, 3))
        n = x.shape[0] * x.shape[2] * x.shape[3]
    else:  # files: an evenly spaced sample of images
        idx = torch.linspace(0, len(dataset) - 1, min(len(dataset), max_samples)).long().unique()
        s = s2 = None
        n = 0
        for i in idx.tolist():
            img = dataset[i][0].double()
            s = img.sum((1, 2)) if s is None else s + img.sum((1, 2))
            s2 = img.square().sum((1, 2)) if s2 is None else s2 + img.square().sum((1, 2))
            n += img.shape[1] * img.shape[2]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def dataset_stats(name: str | None, dataset: Dataset | None = None) -> Stats:
    """(mean, std) per channel for normalisation.

    Known names use :data:`DATASET_STATS`; otherwise they are measured on ``dataset`` (all of an
    in-memory dataset, an evenly spaced sample of up to 2,000 images of a file dataset); with neither,
    0.5 / 0.5 per channel (3 channels).
    """
    if name is not None and canonical_name(name) in DATASET_STATS:
        mean, std = DATASET_STATS[canonical_name(name)]
        channels = getattr(dataset, "num_channels", len(mean))
        if channels == len(mean):
            return mean, std
    if dataset is not None and len(dataset) > 0:
        return _measure(dataset)
    return (0.5,) * 3, (0.5,) * 3
