"""Batch loaders with exact mid-epoch resume.

Both loaders shuffle with a permutation drawn from a generator seeded by ``(seed, epoch)`` only, so
``state_dict() = {epoch, position, ...}`` is enough to continue a run exactly where it stopped:

- :class:`TensorBatchLoader` slices an in-memory (N, C, H, W) tensor (optionally kept on the GPU);
- :class:`DatasetLoader` wraps ``torch.utils.data.DataLoader`` for file datasets (workers, pinning).

Iterating yields the rest of the current epoch, then advances ``epoch`` and resets ``position``.

Data-parallel runs: ``batch_size`` is the *global* batch. With ``rank`` / ``world_size`` each process gets its
contiguous share of every global batch (``tensor_split``), so the union over ranks is exactly the batch one process
would see, and ``position`` (counted in global batches) means the same at any world size: a checkpoint written by
N processes resumes in M.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .base import TensorImageDataset

__all__ = [
    "epoch_permutation",
    "rank_share",
    "length_bucketed",
    "TensorBatchLoader",
    "EpochSampler",
    "DatasetLoader",
    "make_dataloader",
    "make_loader",
]


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> Tensor:
    """The sample order of ``epoch``: a permutation seeded by (seed, epoch), or ``arange(n)``."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    return torch.randperm(n, generator=g)


def length_bucketed(
    perm: Tensor, lengths: Tensor, batch_size: int, seed: int, epoch: int, window: int = 64
) -> Tensor:
    """Reorder an epoch's permutation so batches hold sequences of similar length (less padding), still at random.

    ``perm`` is cut into windows of ``window`` batches, each sorted by length; the full batches are then shuffled
    (seeded by ``(seed, epoch)``, so resuming reproduces it) and a final partial batch stays last.
    """
    chunk = batch_size * window
    out = torch.cat([p[torch.argsort(lengths[p], stable=True)] for p in perm.split(chunk)])
    nb = len(out) // batch_size
    g = torch.Generator().manual_seed((int(seed) * 7_000_003 + int(epoch) + 1) % (2**63))
    full = out[: nb * batch_size].view(nb, batch_size)[torch.randperm(nb, generator=g)].flatten()
    return torch.cat([full, out[nb * batch_size :]])


def rank_share(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's contiguous share of one global batch of indices (shares differ by at most one)."""
    return indices if world_size == 1 else indices.tensor_split(world_size)[rank]


def _num_batches(num_samples: int, batch_size: int, drop_last: bool) -> int:
    return num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)


def _check_shards(batch_size: int, drop_last: bool, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
    if drop_last and batch_size % world_size:
        raise ValueError(
            f"batch_size {batch_size} (the global batch) is not divisible by the {world_size} processes; "
            "every rank must get an equal share for the gradients to average to the global batch's"
        )


class _EpochState:
    """epoch / position bookkeeping shared by both loaders."""

    batch_size: int
    num_samples: int
    drop_last: bool
    seed: int
    shuffle: bool

    def _init_state(self) -> None:
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its shuffle order). Restarts the epoch unless it is the current one, so calling it
        after :meth:`load_state_dict` with the saved epoch keeps the saved position."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: the order is a function of (seed, epoch), the place is ``position``."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(
                f"loader state is for {state['num_samples']} samples but this dataset has {self.num_samples}"
            )
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if int(state["batch_size"]) != self.batch_size:  # keep the sample offset, round down to a batch
            warnings.warn(
                f"resuming with batch size {self.batch_size} instead of {state['batch_size']}; the epoch "
                "continues from the nearest earlier batch boundary",
                stacklevel=2,
            )
            self.position = self.position * int(state["batch_size"]) // self.batch_size

    def _finish_epoch(self) -> None:
        self.epoch += 1
        self.position = 0


class TensorBatchLoader(_EpochState):
    """Fast batches from in-memory tensors: ``data`` (N, C, H, W) uint8 or float, ``targets`` (N,).

    ``device``: where batches are produced; with ``move_data`` (default) the whole dataset is copied there
    once, so batching is a single gather on the device. uint8 data is converted to float [0, 1] per batch
    when ``to_float``. ``transform`` (e.g. an augmentation module) is applied to each float batch.
    ``lengths`` (N,) (token sequences): shuffled batches group similar lengths (:func:`length_bucketed`).
    """

    def __init__(
        self,
        data: Tensor,
        targets: Tensor | Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
        to_float: bool = True,
        transform: Callable[[Tensor], Tensor] | None = None,
        move_data: bool = True,
        rank: int = 0,
        world_size: int = 1,
        lengths: Tensor | None = None,
    ) -> None:
        targets = torch.as_tensor(targets, dtype=torch.long)
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} images but {len(targets)} targets")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else data.device
        if move_data:
            data, targets = data.to(self.device), targets.to(self.device)
        self.data, self.targets = data, targets
        self.batch_size, self.shuffle, self.drop_last, self.seed = (
            int(batch_size),
            shuffle,
            drop_last,
            int(seed),
        )
        self.num_samples = len(data)
        self.to_float, self.transform = to_float, transform
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        _check_shards(self.batch_size, drop_last, rank, world_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self._init_state()

    @classmethod
    def from_dataset(cls, dataset: TensorImageDataset, batch_size: int, **kw: Any) -> TensorBatchLoader:
        """Loader over a preloaded dataset's stored tensor (uint8 stays uint8 until batching)."""
        return cls(dataset.raw, dataset.targets, batch_size, lengths=getattr(dataset, "lengths", None), **kw)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        perm = epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        if self.lengths is not None and self.shuffle:
            perm = length_bucketed(perm, self.lengths, self.batch_size, self.seed, self.epoch)
        perm = perm.to(self.data.device)
        b, nb = self.batch_size, len(self)
        while self.position < nb:
            idx = rank_share(perm[self.position * b : (self.position + 1) * b], self.rank, self.world_size)
            self.position += 1
            if len(idx) == 0:  # the last, short batch of an eval split can leave a rank nothing
                continue
            x = self.data[idx].to(self.device, non_blocking=True)
            y = self.targets[idx].to(self.device, non_blocking=True)
            if self.to_float and x.dtype == torch.uint8:  # images; integer token ids stay integers
                x = x.float().div_(255)
            if self.transform is not None:
                x = self.transform(x)
            yield x, y
        self._finish_epoch()


class EpochSampler(Sampler[list[int]]):
    """Batches of ``epoch_permutation(n, seed, epoch)`` from global batch ``start`` on, each cut to this rank's
    share (a batch sampler, driven by :class:`DatasetLoader`)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        drop_last: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_samples, self.batch_size, self.drop_last = num_samples, batch_size, drop_last
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[list[int]]:
        perm = epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        b = self.batch_size
        for k in range(self.start, _num_batches(self.num_samples, b, self.drop_last)):
            share = rank_share(perm[k * b : (k + 1) * b], self.rank, self.world_size)
            if len(share):
                yield share.tolist()

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last) - self.start


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def collate_images(batch: list[Any]) -> Any:
    """``default_collate`` with a clear error when images differ in size."""
    try:
        return default_collate(batch)
    except RuntimeError as e:
        if "stack expects each tensor to be equal size" not in str(e):
            raise
        shapes = sorted({tuple(item[0].shape) for item in batch})
        raise ValueError(
            f"images in a batch have different sizes {shapes[:4]}; give the dataset an image_size "
            "(e.g. ImageFolder(..., image_size=224) or build_dataset('folder:...', image_size=224))"
        ) from None


class DatasetLoader(_EpochState):
    """``torch.utils.data.DataLoader`` over a map-style dataset, with set_epoch / state_dict / resume.

    Worker seeds derive from (seed, epoch) too, so random per-sample work in workers is reproducible.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        persistent_workers: bool | None = None,
        prefetch_factor: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_shards(int(batch_size), drop_last, rank, world_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.dataset = dataset
        self.batch_size, self.shuffle, self.drop_last, self.seed = (
            int(batch_size),
            shuffle,
            drop_last,
            int(seed),
        )
        self.num_samples = len(dataset)  # type: ignore[arg-type]
        self.sampler = EpochSampler(
            self.num_samples, self.batch_size, drop_last, shuffle, self.seed, self.rank, self.world_size
        )
        self._generator = torch.Generator()
        kw: dict[str, Any] = {}
        if num_workers > 0:
            kw["persistent_workers"] = True if persistent_workers is None else persistent_workers
            if prefetch_factor is not None:
                kw["prefetch_factor"] = prefetch_factor
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            collate_fn=collate_fn or collate_images,
            worker_init_fn=_seed_worker,
            generator=self._generator,
            **kw,
        )
        self._init_state()

    def __iter__(self) -> Iterator[Any]:
        self.sampler.epoch, self.sampler.shuffle, self.sampler.seed = self.epoch, self.shuffle, self.seed
        self.sampler.start = min(self.position, len(self))
        self._generator.manual_seed((self.seed * 1_000_003 + self.epoch + 1) % (2**63))
        for batch in self.loader:
            self.position += 1
            yield batch
        self._finish_epoch()


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    **kw: Any,
) -> DatasetLoader:
    """A seeded, resumable :class:`DatasetLoader` for file datasets (ImageFolder, ManifestDataset, ...)."""
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DatasetLoader(dataset, batch_size, shuffle, drop_last, seed, num_workers, pin_memory, **kw)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    **kw: Any,
) -> TensorBatchLoader | DatasetLoader:
    """:class:`TensorBatchLoader` for in-memory datasets (``num_workers`` is ignored; ``device`` keeps the data
    there), else :func:`make_dataloader`. Batches are ``(float images in [0, 1], int64 labels)``."""
    in_memory = (
        "text",
        "translation",
        "detection",
        "segmentation",
    )  # token ids / index-labelled images held as one tensor
    if isinstance(dataset, TensorImageDataset) or getattr(dataset, "modality", None) in in_memory:
        return TensorBatchLoader.from_dataset(
            dataset, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, device=device, **kw
        )
    return make_dataloader(dataset, batch_size, shuffle, drop_last, seed, num_workers, **kw)
