"""The thread policy (issue 24): what the machine allows, what the work can use, an explicit request first."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitkit.engine import threads as th


def test_a_request_wins_and_a_bad_one_is_refused():
    assert th.choose_threads(3, cpus=(2, "x"), busy=2.0, work_macs=1.0).threads == 3
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        th.choose_threads(0)


def test_cores_busy_with_other_processes_are_left_to_them(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert th.choose_threads(cpus=(2, "CPUs"), busy=0.1).threads == 2
    one_busy = th.choose_threads(cpus=(2, "CPUs"), busy=1.0)
    assert one_busy.threads == 1 and "1.0 cores busy with other processes" in one_busy.reason
    assert th.choose_threads(cpus=(2, "CPUs"), busy=3.5).threads == 1  # never below one
    assert th.choose_threads(cpus=(16, "CPUs"), busy=5.4).threads == 11


def test_small_work_takes_one_thread_and_torchrun_shares_the_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    small = th.choose_threads(cpus=(8, "CPUs"), busy=0.0, work_macs=th.SMALL_WORK_MACS / 10)
    assert small.threads == 1 and "small model" in small.reason
    assert th.choose_threads(cpus=(8, "CPUs"), busy=0.0, work_macs=th.SMALL_WORK_MACS * 10).threads == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    shared = th.choose_threads(cpus=(8, "CPUs"), busy=0.0)
    assert shared.threads == 2 and "shared by 4 processes" in shared.reason


def test_cgroup_quota_caps_the_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert th._cgroup_quota(tmp_path) == 1.5
    assert th.available_cpus(tmp_path)[0] == 1  # 1.5 CPUs of quota: one thread
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert th._cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert th._cgroup_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert th._cgroup_quota(tmp_path) == 3.0


def test_busy_cores_are_read_from_proc_stat(tmp_path, monkeypatch):
    """Two readings of /proc/stat: the CPU time used between them, in cores (both of 2 cores busy here)."""
    stat = tmp_path / "stat"
    readings = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  140 0 140 800 0 0 0 0 0 0\n"])
    monkeypatch.setattr(th.time, "sleep", lambda s: stat.write_text(next(readings)))
    stat.write_text(next(readings))
    monkeypatch.setattr(th.os, "cpu_count", lambda: 2)
    assert th._busy_now(0.2, stat) == 2.0


def test_a_run_announces_its_choice_and_omp_num_threads_is_a_request(monkeypatch, caplog):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        with caplog.at_level("INFO", logger="vitkit"):
            choice = th.threads_for_run(None, nn.Linear(4, 4), 8, "cpu")
        assert choice.threads == 1 and choice.reason == "OMP_NUM_THREADS=1" and torch.get_num_threads() == 1
        assert "Linear on cpu, 1 thread (OMP_NUM_THREADS=1)" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_forward_multiply_adds_of_a_batch():
    import vitkit

    model = vitkit.create_model("vit_digits")
    macs = th.forward_macs(model, 64)
    assert 0.05e9 < macs < th.SMALL_WORK_MACS  # 64 images of 8x8 through a 0.14M-parameter ViT
    big = nn.Linear(4096, 4096)
    assert th.forward_macs(big, 64) == 4096 * 4097 * 64  # past the bound: parameters x batch, not counted


def test_the_multiply_add_estimate_counts_products_as_pytorch_does():
    import vitkit
    from vitkit.models.examples import example_inputs
    from vitkit.profiling import estimate_macs, forward_flops

    lin = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3))
    assert estimate_macs(lin, torch.randn(4, 6)) == 4 * (6 * 5 + 5 * 3)
    conv = nn.Conv2d(3, 8, 3, padding=1, groups=1)
    assert estimate_macs(conv, torch.randn(1, 3, 5, 5)) == 8 * 5 * 5 * 3 * 9
    q = torch.randn(2, 4, 7, 16)
    attn = type(
        "A", (nn.Module,), {"forward": lambda self, x: nn.functional.scaled_dot_product_attention(x, x, x)}
    )
    assert estimate_macs(attn(), q) == 2 * 4 * 7 * 7 * (16 + 16)
    for name in ("vit_digits", "vitc_mnist", "bert_tiny"):
        model = vitkit.create_model(name).eval()
        x = example_inputs(model)
        # PyTorch's counter skips the CPU attention kernel: the estimate may be a little above, never far
        assert 1.0 <= estimate_macs(model, x) / (forward_flops(model, x) / 2) < 1.2, name


def test_counting_the_work_imports_no_compiler():
    import subprocess
    import sys

    code = (
        "import sys, vitkit; from vitkit.engine.threads import forward_macs;"
        "forward_macs(vitkit.create_model('vit_digits'), 64); print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # importing TorchDynamo costs ~2 s of every training run's start
