"""Measure models: forward FLOPs counted by PyTorch, and throughput timed in interleaved rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["forward_flops", "throughput"]


def forward_flops(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass on ``x`` (a tuple: several arguments), counted by PyTorch (a multiply-add is
    2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(*x) if isinstance(x, tuple) else model(x)
    return int(counter.get_total_flops())


def throughput(
    models: dict[str, Callable[[Any], Any]], x: Any, rounds: int = 5, min_time: float = 0.5
) -> dict[str, float]:
    """Median images/s of each model's forward on batch ``x`` (anything with ``shape[0]``, e.g. a tensor or a
    numpy array for an onnxruntime session), measured in interleaved rounds after one warm-up call each."""
    # time the kernels users get by default: a Trainer in the same process may have switched PyTorch to
    # deterministic algorithms, which takes int8 and some float ops off their fastest paths
    deterministic, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(False)
    try:
        return _timed_rounds(models, x, rounds, min_time)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _timed_rounds(
    models: dict[str, Callable[[Any], Any]],
    x: Any,
    rounds: int,
    min_time: float,
) -> dict[str, float]:
    rates: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)  # warm-up
        for r in range(rounds):
            names = list(models)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                n, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < min_time or n == 0:
                    models[name](x)
                    n += 1
                rates[name].append(n * x.shape[0] / elapsed)
    return {k: statistics.median(v) for k, v in rates.items()}
