"""Map-style image-classification datasets. Every item is ``(float32 CHW tensor in [0, 1], int label)``
and every dataset has ``classes``, ``targets`` (int64 tensor), ``num_channels`` and ``image_size``.

In-memory datasets (:class:`TensorImageDataset` subclasses) also expose ``data``: all images as one
float (N, C, H, W) tensor, for :class:`~vitkit.data.loader.TensorBatchLoader`.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import DatasetNotFoundError, TensorImageDataset, check_split
from .cifar import CIFAR10, CIFAR10_CLASSES, CIFAR10JPEG, CIFAR100
from .folder import FileImageDataset, ImageFolder, ManifestDataset
from .idx import MNIST, FashionMNIST, IDXDataset

__all__ = [
    "TensorImageDataset",
    "DatasetNotFoundError",
    "DigitsDataset",
    "IDXDataset",
    "MNIST",
    "FashionMNIST",
    "CIFAR10",
    "CIFAR100",
    "CIFAR10JPEG",
    "CIFAR10_CLASSES",
    "FileImageDataset",
    "ImageFolder",
    "ManifestDataset",
]


class DigitsDataset(TensorImageDataset):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16 scaled to [0, 1]).

    ``split='train'|'test'`` is a stratified ``train_test_split`` (``test_fraction``, ``seed``) giving
    1,437 / 360 images with the defaults; ``'all'`` keeps everything. Images keep their original order.
    """

    def __init__(self, split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        self.split = check_split(split, ("train", "test", "all"))
        digits = load_digits()
        y = digits.target.astype(np.int64)
        idx = np.arange(len(y))
        if split != "all":
            train_idx, test_idx = train_test_split(
                idx, test_size=test_fraction, stratify=y, random_state=seed
            )
            idx = np.sort(train_idx if split == "train" else test_idx)
        images = torch.from_numpy(digits.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
        super().__init__(images, torch.from_numpy(y[idx]), [str(i) for i in range(10)])
        self.indices = idx
