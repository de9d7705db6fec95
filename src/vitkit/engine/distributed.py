"""Data-parallel training on PyTorch's own engine: ``torchrun`` describes the job, vitkit joins it.

``torchrun --nproc_per_node=N -m vitkit train ...`` starts N copies of the same command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in the environment. :func:`init_distributed` joins that
process group (NCCL on GPUs, gloo on CPUs); the trainer then wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel` or shards it with FSDP2's
:func:`~torch.distributed.fsdp.fully_shard`, hands every rank its share of each global batch, reduces metrics
across ranks, and lets rank 0 alone write files. Nothing here replaces a part of ``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistEnv",
    "init_distributed",
    "shutdown_distributed",
    "wrap_model",
    "all_reduce_sum",
    "reduce_sums",
    "all_reduce_any",
    "gather_objects",
    "is_sharded",
    "unsharded",
    "full_model_state",
    "full_state_dicts",
    "load_full_state_dicts",
]

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job (``world_size == 1``: a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # vitkit created the process group (and so tears it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group ``torchrun`` (or the caller) set up; a no-op for a single process.

    A group the caller already initialised is used as it is. Otherwise, with ``WORLD_SIZE > 1`` in the
    environment, the default group is created from torchrun's variables: NCCL for CUDA, gloo for the CPU.
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    owns_group = False
    if not dist.is_initialized():
        world_size = _env_int("WORLD_SIZE", 1)
        if world_size <= 1:
            return DistEnv()
        if not dist.is_available():  # pragma: no cover - every wheel we support has torch.distributed
            raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        owns_group = True
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, owns_group)


def shutdown_distributed(env: DistEnv, wait: bool = False) -> None:
    """Leave the process group :func:`init_distributed` created (groups the caller made are left alone).

    ``wait``: first a barrier, so that no rank leaves while another still talks to it (after a run that ended
    well on every rank; never after an error, when a rank may be gone)."""
    if env.owns_group and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, env: DistEnv, strategy: str, device: torch.device) -> nn.Module:
    """The module the training step calls: ``model`` itself (one process), DDP around it, or ``model``
    sharded in place by FSDP2 (each transformer block a unit, then the root)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown distributed strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not env.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    from ..layers import DecoderBlock, EncoderBlock

    for block in [m for m in model.modules() if isinstance(m, (EncoderBlock, DecoderBlock))]:
        fully_shard(block)  # every transformer block (of every tower) a unit
    # FSDP2 cannot shard a 0-dim parameter (CLIP's temperature, SigLIP's bias): those stay whole on every rank,
    # their gradients averaged over ranks as FSDP averages the others'
    scalars = {p for p in model.parameters() if p.dim() == 0}
    fully_shard(model, ignored_params=scalars or None)
    for p in scalars:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(_average_grad)
    return model


def _average_grad(param: Tensor) -> None:
    """Average ``param.grad`` over ranks in place (a running sum of micro-batch gradients that are already
    averaged stays averaged: the mean of equal values is that value)."""
    dist.all_reduce(param.grad)
    param.grad.div_(dist.get_world_size())


def all_reduce_sum(*values: Tensor | float, device: torch.device) -> list[float]:
    """Sum scalars over ranks in one collective (identity on a single process)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_any(flag: Tensor | bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks take the same branch); on a single
    process just ``bool(flag)``, with no tensor made (it runs every training step)."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.as_tensor(flag, device=device).reshape(()).to(torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` on a single process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by FSDP2 (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[nn.Module]:
    """For the duration, an FSDP2-sharded model's own (root) parameters gathered whole, so that a method other
    than ``forward`` can be called (``CLIP.encode_text``: FSDP gathers a unit's parameters only around its
    ``forward``; the blocks inside still gather their own as they run). Nothing to do for a model not sharded."""
    if not is_sharded(model):
        yield model
        return
    model.unshard()
    try:
        yield model
    finally:
        model.reshard()


def _full_options(model: nn.Module):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=is_sharded(model))


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """Unsharded weights of ``model`` (a collective under FSDP: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(model))


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state, keyed by parameter name, the same at any world size.

    With FSDP every rank must call this (it gathers shards); the full tensors land on CPU.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer, options=_full_options(model))


def load_full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict
) -> None:
    """Load what :func:`full_state_dicts` wrote into ``model`` / ``optimizer`` (sharding it under FSDP).

    Optimizer state saved by older vitkit versions (``optimizer.state_dict()``, keyed by integers) loads too.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    if is_sharded(model):
        set_model_state_dict(model, model_state, options=options)
    else:
        model.load_state_dict(model_state)
    if optim_state.get("state") and all(isinstance(k, int) for k in optim_state["state"]):
        if is_sharded(model):
            raise ValueError("this checkpoint's optimizer state predates sharded resume; resume it with DDP")
        optimizer.load_state_dict(optim_state)
    else:
        # strict=False: a parameter that never received a gradient (e.g. the unused pooling norm of a DETR or
        # Segmenter backbone) has no optimizer state to save, and none to load
        set_optimizer_state_dict(
            model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True, strict=False)
        )


def reduce_sums(sums: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Sum every value of ``sums`` (numbers and tensors) over ranks in one collective."""
    keys = sorted(sums)
    flat: list[Any] = []
    for k in keys:
        v = sums[k]
        flat += v.flatten().tolist() if isinstance(v, Tensor) else [v]
    if not flat:
        return {}
    values = iter(all_reduce_sum(*flat, device=device))
    out: dict[str, Any] = {}
    for k in keys:
        v = sums[k]
        if isinstance(v, Tensor):
            out[k] = torch.tensor([next(values) for _ in range(v.numel())]).reshape(v.shape)
        else:
            out[k] = next(values)
    return out
