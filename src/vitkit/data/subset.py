"""Stratified subsets: "train on 1% of the labels" with the same images for a given seed."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .base import TensorImageDataset

__all__ = ["stratified_indices", "stratified_subset", "SubsetDataset"]


def stratified_indices(targets: torch.Tensor, size: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a class-balanced sample of ``targets``.

    ``size`` in (0, 1) is a fraction, ``size >= 1`` a count. Each class gets its share of the count (rounded,
    the remainder going to the largest classes first) drawn at random with a generator seeded by ``seed``.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    n = len(targets)
    count = round(size * n) if 0 < size < 1 else int(size)
    if size <= 0 or not 1 <= count <= n:
        raise ValueError(f"subset size must be a fraction in (0, 1) or a count in [1, {n}], got {size}")
    classes, freq = torch.unique(targets, return_counts=True)
    exact = freq.double() * count / n
    share = exact.floor().long()
    for i in torch.argsort(exact - share, descending=True)[: count - int(share.sum())]:
        share[i] += 1  # largest remainders first
    g = torch.Generator().manual_seed(int(seed))
    picked = []
    for c, k in zip(classes.tolist(), share.tolist(), strict=True):
        members = (targets == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picked).sort().values


class SubsetDataset(Dataset):
    """Items ``indices`` of a file-backed dataset, keeping its ``classes`` / ``targets`` / ``num_channels``."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor) -> None:
        self.dataset, self.indices = dataset, indices.tolist()
        self.classes = list(dataset.classes)
        self.targets = torch.as_tensor(dataset.targets)[indices]
        self.num_channels = dataset.num_channels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


def stratified_subset(dataset: Dataset, size: float, seed: int = 0) -> Dataset:
    """A class-balanced subset of ``dataset`` (see :func:`stratified_indices`); in-memory datasets stay in memory."""
    if not getattr(dataset, "classes", None):  # not classification (e.g. translation pairs): a random subset
        n = len(dataset)
        count = round(size * n) if 0 < size < 1 else int(size)
        if not 1 <= count <= n:
            raise ValueError(f"subset size must be a fraction in (0, 1) or a count in [1, {n}], got {size}")
        g = torch.Generator().manual_seed(int(seed))
        return dataset.select(torch.randperm(n, generator=g)[:count].sort().values)
    idx = stratified_indices(dataset.targets, size, seed)
    if isinstance(dataset, TensorImageDataset):
        return TensorImageDataset(dataset.raw[idx], dataset.targets[idx], dataset.classes)
    if hasattr(dataset, "select"):  # e.g. tokenised text
        return dataset.select(idx)
    return SubsetDataset(dataset, idx)
