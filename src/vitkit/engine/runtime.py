"""Process set-up shared by every run: seeding, the device, threads."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from .distributed import DistEnv

__all__ = [
    "seed_everything",
    "resolve_device",
    "rank_device",
    "check_run_dir",
    "on_disk",
    "TrainingInterrupted",
    "check_batches",
]


def seed_everything(seed: int, deterministic: bool = True, compiled: bool = False) -> None:
    """Seed Python, NumPy and PyTorch; ``deterministic``: PyTorch's deterministic algorithms (warn-only).

    Without ``compiled`` the switch is set on PyTorch's core only: the public call also imports TorchInductor to
    set its own flag, a second or more of start-up that a run which compiles nothing does not need."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        core = getattr(torch._C, "_set_deterministic_algorithms", None)
        if compiled or core is None or "torch._inductor.config" in sys.modules:
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            core(True, warn_only=True)
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


def check_run_dir(run_dir: Path) -> None:
    """A new run never writes into the folder of another one (its metrics would be appended to)."""
    used = [n for n in ("checkpoint.pt", "metrics.jsonl", "model.safetensors") if (run_dir / n).exists()]
    if used:
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(used)}): continue it with --resume {run_dir}, "
            "or give another --name (or --out-dir)"
        )


def on_disk(checkpoint: Path, epoch: int) -> str:
    """What a stopped run has kept, said as it is."""
    if checkpoint.is_file() and epoch > 0:
        return f"The last good checkpoint (epoch {epoch}) is kept at {checkpoint}"
    return "No checkpoint was written yet (it is written at the end of each epoch)"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training, with what is on disk and how to go on."""

    def __init__(self, run_dir: Path, epoch: int) -> None:
        kept = on_disk(Path(run_dir) / "checkpoint.pt", epoch)
        hint = (f"; resume with: vitkit train --resume {run_dir}" if epoch > 0 and (Path(run_dir) / "checkpoint.pt").is_file()
                else "")  # fmt: skip
        super().__init__(f"interrupted during epoch {epoch + 1}. {kept}{hint}")
        self.run_dir, self.epoch = Path(run_dir), epoch


def check_batches(batches: int, data: object, batch_size: int, accum_steps: int) -> None:
    """Refuse an epoch in which the optimizer would never step, naming the flag that fixes it (ValueError)."""
    items = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    if batches == 0:
        size = f"{items} training items" if items is not None else "the training data"
        raise ValueError(
            f"{size} make no full batch of batch_size={batch_size} (an incomplete last batch is dropped): "
            f"lower --batch-size{f' to {items} or less' if items else ''}, or give more data"
        )
    if accum_steps > batches:
        raise ValueError(
            f"accum_steps={accum_steps} is more than the {batches} batches of an epoch: the "
            "optimizer would never step (lower accum_steps or batch_size)"
        )
