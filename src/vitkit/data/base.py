"""Shared dataset pieces: the preloaded tensor dataset and the 'data not found' error."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "TensorImageDataset",
    "DatasetNotFoundError",
    "ImageSizeError",
    "SPLITS",
    "check_split",
    "check_image_size",
]

SPLITS = ("train", "test")


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    """Return ``split`` or raise a ValueError listing the allowed values."""
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}; expected one of {list(allowed)}")
    return split


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are not where we looked; the message lists the places and how to fix it."""

    def __init__(self, name: str, looked_in: Sequence[str | Path], expected: str) -> None:
        self.looked_in = list(dict.fromkeys(str(p) for p in looked_in))
        env = os.environ.get("VITKIT_DATA")
        places = "\n  ".join(self.looked_in)
        super().__init__(
            f"{name}: could not find {expected}. Looked in:\n  {places}\n"
            f"Point at the folder holding the data with --data-dir DIR or the VITKIT_DATA environment variable"
            f" (VITKIT_DATA is {'set to ' + repr(env) if env else 'not set'})."
        )


class ImageSizeError(ValueError):
    """A dataset's images are not the size the model takes, and resizing them was not asked for."""


def check_image_size(dataset: Dataset, size: Sequence[int] | None, name: str, resize: bool = False) -> None:
    """Refuse ``dataset`` when its images all have one size (``dataset.image_size``: the built-in datasets, a
    folder read at a fixed size) other than the model's ``size`` (H, W), unless ``resize``.

    Resizing 28x28 MNIST digits to an 8x8 model's input runs, and scores a model on pictures it never saw the
    like of: the error names both sizes and how to allow it. Datasets of mixed sizes (``image_size`` None: an
    image folder, resized as in training) and models of any size (``size`` None) pass.

    Raises:
        ImageSizeError: the sizes differ and ``resize`` is False.
    """
    own = getattr(dataset, "image_size", None)
    if resize or size is None or own is None or tuple(own) == tuple(size):
        return
    (h, w), (mh, mw) = tuple(own), tuple(size)
    raise ImageSizeError(
        f"dataset {name!r} has {h}x{w} images but the model takes {mh}x{mw}; pass --resize (resize=True) to "
        f"resize them to {mh}x{mw} (bilinear, antialiased), or evaluate on a dataset of {mh}x{mw} images"
    )


class TensorImageDataset(Dataset):
    """A dataset held in memory as one (N, C, H, W) tensor.

    ``images`` is uint8 in [0, 255] (converted per item / per batch) or float in [0, 1].
    ``data`` is the float32 [0, 1] view, built on first access and cached. Items are
    ``(float32 CHW tensor in [0, 1], int label)``.
    """

    def __init__(self, images: Tensor, targets: Tensor | Sequence[int], classes: Sequence[str]) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        targets = torch.as_tensor(targets, dtype=torch.long)
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= len(classes)):
            raise ValueError(f"targets outside [0, {len(classes)}) for classes {list(classes)}")
        self.raw = images.contiguous()
        self.targets = targets
        self.classes = list(classes)
        self._data: Tensor | None = None

    @property
    def num_channels(self) -> int:
        return int(self.raw.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.raw.shape[2]), int(self.raw.shape[3])

    @property
    def data(self) -> Tensor:
        """All images as float32 (N, C, H, W) in [0, 1] (cached)."""
        if self._data is None:
            self._data = self.raw.float().div_(255) if self.raw.dtype == torch.uint8 else self.raw.float()
        return self._data

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.raw[index]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        return x, int(self.targets[index])

    def __repr__(self) -> str:
        c, (h, w) = self.num_channels, self.image_size
        return f"{type(self).__name__}(n={len(self)}, classes={len(self.classes)}, shape=({c}, {h}, {w}))"
