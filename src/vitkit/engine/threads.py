"""How many CPU threads a process should compute with: what the machine allows and what the work can use.

PyTorch's default is one intra-op thread per core the machine has. On a small machine that is shared, that is the
worst choice: OpenMP threads wait for each other at every parallel region, so one core taken by another process
stalls every operation (issue 24 measured a 2-core machine beside other jobs: 48.8 s with the default, 6.5 s with
one thread). :func:`choose_threads` takes, in order:

1. an explicit request (``--threads N``, ``cfg.threads``, else ``OMP_NUM_THREADS``) as it is;
2. the CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (v2 ``cpu.max``, v1
   ``cpu.cfs_quota_us``), shared among the processes of one machine under torchrun (``LOCAL_WORLD_SIZE``);
3. minus the cores other processes keep busy now (the CPU time the machine used over 0.2 s while this process
   slept);
4. at most what the work can use: a model whose forward pass is small gains nothing from a second thread and
   loses the most when cores are contended (:data:`SMALL_WORK_MACS`).

The choice and its reason are returned so that a run can say them on start-up.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ThreadChoice",
    "available_cpus",
    "busy_cpus",
    "choose_threads",
    "apply_threads",
    "SMALL_WORK_MACS",
]

#: multiply-adds of one training batch's forward pass below which one thread is chosen (measured in
#: ``benchmarks/threads.py``: the digits ViT, ~0.1 GMAC a batch, runs as fast on one thread as on two)
SMALL_WORK_MACS = 1e9

log = logging.getLogger("vitkit")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str

    def __str__(self) -> str:
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} ({self.reason})"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by a cgroup quota, or None when there is none."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_file, period_file = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text())
            return None if quota <= 0 else quota / int(period_file.read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str]:
    """CPUs this process may run on: (count, how it was found)."""
    try:
        count, source = len(os.sched_getaffinity(0)), "CPUs this process may use"
    except (AttributeError, OSError):  # macOS, Windows
        count, source = os.cpu_count() or 1, "CPUs of the machine"
    quota = _cgroup_quota(cgroup_root)
    if quota is not None and quota < count:
        count, source = max(1, math.floor(quota)), f"cgroup CPU quota {quota:g}"
    return count, source


def _cpu_times(stat: Path) -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``'s first line."""
    fields = [float(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


_BUSY: list[float] = []  # [reading, time.monotonic() of it]: one reading per process and minute


def busy_cpus(window_s: float = 0.2, stat: Path = Path("/proc/stat"), max_age_s: float = 60.0) -> float:
    """Cores that other processes keep busy now: the machine's CPU time used over ``window_s`` seconds while
    this process sleeps (Linux ``/proc/stat``), in cores; elsewhere the 1-minute load average, or 0. A reading
    younger than ``max_age_s`` is reused (a process that builds many runs samples once a minute)."""
    if _BUSY and time.monotonic() - _BUSY[1] < max_age_s:
        return _BUSY[0]
    _BUSY[:] = [_busy_now(window_s, stat), time.monotonic()]
    return _BUSY[0]


def _busy_now(window_s: float, stat: Path) -> float:
    try:
        busy0, total0 = _cpu_times(stat)
        time.sleep(window_s)
        busy1, total1 = _cpu_times(stat)
        cores = os.cpu_count() or 1
        return cores * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0


def choose_threads(
    requested: int | None = None, *, work_macs: float | None = None, local_processes: int | None = None,
    cpus: tuple[int, str] | None = None, busy: float | None = None,
) -> ThreadChoice:  # fmt: skip
    """The intra-op thread count for this process.

    ``work_macs``: multiply-adds of one step's forward pass, when known (None: not considered);
    ``local_processes``: processes sharing this machine (default: ``LOCAL_WORLD_SIZE``, set by torchrun);
    ``cpus`` / ``busy``: override :func:`available_cpus` / :func:`busy_cpus` (tests). Raises ValueError for a
    request below 1.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        return ThreadChoice(requested, "as asked")
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) >= 1:
        return ThreadChoice(int(omp), f"OMP_NUM_THREADS={omp}")
    count, source = cpus or available_cpus()
    local = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    share = max(1, count // max(1, local))
    reasons = [f"{count} {source}" + (f" shared by {local} processes" if local > 1 else "")]
    others = busy_cpus() if busy is None else busy
    free = max(1, math.floor(count - others + 0.5)) if others >= 0.5 else count
    if free < count:
        reasons.append(f"{others:.1f} cores busy with other processes")
    threads = min(share, max(1, free // max(1, local)))
    if work_macs is not None and work_macs < SMALL_WORK_MACS and threads > 1:
        threads = 1
        reasons.append(f"a small model ({work_macs / 1e9:.2f} GMACs a batch)")
    return ThreadChoice(threads, "; ".join(reasons))


def apply_threads(choice: ThreadChoice) -> None:
    """Set PyTorch's intra-op thread count."""
    import torch

    torch.set_num_threads(choice.threads)


def forward_macs(model, batch_size: int) -> float | None:
    """Multiply-adds of one batch's forward pass, estimated on one example input (None: no example input;
    :func:`vitkit.profiling.estimate_macs` counts the products).

    A model whose parameters alone reach :data:`SMALL_WORK_MACS` for the batch is not counted (a dense layer does
    at least one multiply-add per parameter and sample): its count is returned as that lower bound."""
    from ..models.examples import example_inputs
    from ..profiling import estimate_macs

    params = sum(p.numel() for p in model.parameters())
    if params * batch_size >= SMALL_WORK_MACS:
        return float(params * batch_size)
    try:
        x = example_inputs(model)
    except ValueError:
        return None
    device = next(model.parameters()).device
    x = tuple(t.to(device) for t in x)
    training = model.training
    try:
        model.eval()  # estimate_macs runs it under inference mode
        return float(estimate_macs(model, x) * batch_size)
    finally:
        model.train(training)


def threads_for_run(
    requested: int | None, model, batch_size: int, device, announce: bool = True
) -> ThreadChoice:
    """:func:`choose_threads` for a training run of ``model`` on ``device`` (the work is counted only on a CPU),
    applied, and said in one log line when ``announce``."""
    macs = forward_macs(model, batch_size) if requested is None and str(device).startswith("cpu") else None
    choice = choose_threads(requested, work_macs=macs)
    apply_threads(choice)
    if announce:
        name = getattr(model, "model_name", type(model).__name__)
        log.info("%s on %s, %s", name, device, choice)
    return choice
