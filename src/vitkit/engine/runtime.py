"""Process set-up shared by every run: seeding, the device, threads."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .distributed import DistEnv

__all__ = ["seed_everything", "resolve_device", "rank_device"]


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def rank_device(device: torch.device, env: DistEnv) -> torch.device:
    """One GPU per process under torchrun: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and env.enabled:
        return torch.device("cuda", env.local_rank)
    return device
