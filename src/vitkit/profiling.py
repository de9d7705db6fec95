"""Measure models: forward FLOPs counted by PyTorch, a quick multiply-add estimate, and throughput timed in
interleaved rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["estimate_macs", "forward_flops", "throughput"]


def forward_flops(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass on ``x`` (a tuple: several arguments), counted by PyTorch (a multiply-add is
    2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(*x) if isinstance(x, tuple) else model(x)
    return int(counter.get_total_flops())


class _MacCounter(TorchFunctionMode):
    """Adds up the multiply-adds of the products a forward pass calls (see :func:`estimate_macs`)."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear:  # weight (out, in): `in` multiply-adds per output element
            self.macs += out.numel() * args[1].shape[-1]
        elif func in (F.conv1d, F.conv2d, F.conv3d):  # weight (out, in / groups, *kernel)
            self.macs += out.numel() * args[1][0].numel()
        elif func is F.scaled_dot_product_attention:  # QK^T and the weighted sum of V
            q, k, v = args[:3]
            self.macs += q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        elif func in (torch.matmul, torch.bmm, torch.Tensor.__matmul__):
            self.macs += out.numel() * args[0].shape[-1]
        return out


def estimate_macs(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """Multiply-adds of one forward pass on ``x`` (a tuple: several arguments): its linear, convolution, attention
    (``F.scaled_dot_product_attention``) and matrix products, seen as they are called. Normalisation,
    activations and other element-wise work are not counted.

    Unlike :func:`forward_flops` this traces nothing and imports no compiler (the first ``FlopCounterMode`` imports
    TorchDynamo: ~2 s), so it is cheap enough for every training run's thread choice."""
    counter = _MacCounter()
    with counter, torch.inference_mode():
        model(*x) if isinstance(x, tuple) else model(x)
    return counter.macs


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
