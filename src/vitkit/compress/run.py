"""Compress a trained run end to end (``vitkit compress``): transform, optionally fine-tune, measure, report.

The report compares the original and the compressed model on the run's evaluation split, in one process:
parameters, file size, forward GFLOPs (counted by ``torch.utils.flop_counter``), CPU inference throughput
(interleaved timing rounds, median) and top-1 accuracy.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.threads import apply_threads, choose_threads
from ..profiling import forward_flops, throughput
from .lowrank import low_rank
from .prune import prune_by_importance, unit_importance
from .quantize import is_int8_module, quantize_int8
from .tome import apply_tome

__all__ = ["METHODS", "compress_run", "forward_flops", "format_report", "parameter_count", "throughput"]

METHODS = ("int8", "lowrank", "prune", "tome")


def _run_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def parameter_count(model: nn.Module) -> int:
    """Weights of ``model``, counting the int8 weights and biases of quantized layers (not ``parameters()``)."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if is_int8_module(module) and callable(getattr(module, "weight", None)):
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            count += module.weight().numel() + (bias.numel() if bias is not None else 0)
    return count


def _gflops(model: nn.Module, x: torch.Tensor, method: str, original: nn.Module) -> float:
    """Forward GFLOPs; an int8 model does the float model's multiply-adds (int8 kernels are not counted by
    PyTorch's counter), so it reports those."""
    return forward_flops(original if method == "int8" else model, x) / 1e9


def _calibration_batches(setup: Any, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` training batches of a trainer's pipeline, prepared as for evaluation (the task's
    ``eval_batch``: normalised, not augmented)."""
    batches = []
    for raw in setup.train_loader:
        batch = setup.task.eval_batch(raw)
        batches.append((batch["inputs"], batch["labels"]))
        if len(batches) == n:
            break
    return batches


def _check_task(run_dir: Path) -> None:
    """Refuse, by name, a model of another task than image classification (read from the file's metadata)."""
    from ..tasks.inference import task_of_file

    task = task_of_file(run_dir)
    if task not in (None, "classification"):  # the report's figure is top-1 on the run's images
        raise ValueError(
            f"compress applies to image classifiers (it reports top-1 on the run's images); {run_dir} holds a "
            f"{task} model"
        )


def compress_run(
    run: str | os.PathLike,
    method: str,
    out_dir: str | os.PathLike | None = None,
    *,
    energy: float | None = None,
    rank: int | None = None,
    heads: float = 0.0,
    mlp: float = 0.0,
    tome_r: int = 0,
    int8_static: bool = True,
    keep_float: tuple[str, ...] = ("head", "head_dist"),
    calib_batches: int = 8,
    finetune_epochs: int = 0,
    finetune_lr: float | None = None,
    data_dir: str | os.PathLike | None = None,
    bench_batch: int = 256,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Compress the model of run directory ``run`` with ``method`` and write ``out_dir`` (model + report).

    ``lowrank``: ``energy`` or ``rank`` (see :func:`vitkit.compress.low_rank`). ``prune``: drop the ``heads``
    and ``mlp`` fractions of least important units, scored on ``calib_batches`` training batches. ``tome``:
    merge ``tome_r`` token pairs per block at inference (no weights change). ``int8``: dynamic int8 linears
    and (``int8_static``) a static int8 patch embedding calibrated on ``calib_batches`` training batches,
    leaving ``keep_float`` modules in float (CPU only; no fine-tuning). The others can be followed by
    ``finetune_epochs`` of training with the run's own recipe at ``finetune_lr`` (default: a tenth of the
    run's lr, no warmup). Both models are timed with one thread count, ``threads`` or else what
    :func:`vitkit.engine.threads.choose_threads` finds the machine allows (recorded in the report, whichever
    method). Returns the report dict (also written as ``report.json``).
    """
    from ..predict import load_for_inference

    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; choose one of {METHODS}")
    if method == "int8" and finetune_epochs > 0:
        raise ValueError("int8 models are for inference: fine-tune before quantizing (finetune_epochs=0)")
    run_dir = Path(run).expanduser()
    _check_task(run_dir)
    original, data_config = load_for_inference(run_dir)
    model = copy.deepcopy(original)
    out = Path(out_dir) if out_dir else run_dir.with_name(f"{run_dir.name}-{method}")
    run_cfg = _run_config(run_dir)
    data_dir = data_dir if data_dir is not None else run_cfg.get("data_dir")

    setup = None  # a trainer that holds the run's data pipeline (calibration batches, fine-tuning)
    needs_data = method == "prune" or (method == "int8" and int8_static) or finetune_epochs > 0
    if needs_data:
        setup = _training_setup(
            run_dir, run_cfg, out, model, finetune_epochs, finetune_lr, data_dir, progress
        )

    details = _apply_method(
        model, method, setup, energy=energy, rank=rank, heads=heads, mlp=mlp, tome_r=tome_r,
        int8_static=int8_static, keep_float=keep_float, calib_batches=calib_batches,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    model = _finetune_or_save(model, setup, out, finetune_epochs, data_config)
    # one policy for every method (a fine-tuning trainer above may have set its own count)
    choice = choose_threads(threads)
    apply_threads(choice)
    rows = _measure(original, model, method, run_dir, out, data_config, data_dir, bench_batch)
    report = {"run": str(run_dir), "method": method, "out_dir": str(out), "finetune_epochs": finetune_epochs,
              "rows": rows, "details": details, "threads": choice.threads, "threads_reason": choice.reason}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _training_setup(
    run_dir: Path,
    run_cfg: dict[str, Any],
    out: Path,
    model: nn.Module,
    finetune_epochs: int,
    finetune_lr: float | None,
    data_dir: str | os.PathLike | None,
    progress: bool,
) -> Any:
    """A trainer built from the run's own recipe (on a copy of ``model``): its data pipeline gives calibration
    batches, its config the fine-tuning recipe (a tenth of the run's lr by default, no warmup)."""
    from ..tasks import build_trainer, resolve_task_config

    if not run_cfg:
        raise ValueError(
            f"{run_dir} has no config.yaml: pruning, int8 calibration and fine-tuning need the run's "
            "training setup"
        )
    lr = finetune_lr if finetune_lr is not None else float(run_cfg.get("lr", 1e-3)) / 10
    cfg = resolve_task_config(
        config_file=run_dir / "config.yaml", epochs=max(1, finetune_epochs), lr=lr, warmup_epochs=0.0,
        out_dir=str(out.parent), name=out.name, data_dir=data_dir, progress=progress, drop_path=0.0,
        ema_decay=None, compile=False,
    )  # fmt: skip
    return build_trainer(cfg, model=copy.deepcopy(model))


def _apply_method(
    model: nn.Module,
    method: str,
    setup: Any,
    *,
    energy: float | None,
    rank: int | None,
    heads: float,
    mlp: float,
    tome_r: int,
    int8_static: bool,
    keep_float: tuple[str, ...],
    calib_batches: int,
) -> Any:
    """Compress ``model`` in place with ``method``; returns the method's details for the report."""
    if method == "lowrank":
        details: Any = low_rank(model, energy=energy, rank=rank)
    elif method == "int8":
        calib = [x.cpu() for x, _ in _calibration_batches(setup, calib_batches)] if int8_static else None
        details = quantize_int8(model, calib, static=int8_static, keep_float=keep_float)
    elif method == "tome":
        if tome_r < 1:
            raise ValueError("tome needs --tome-r >= 1 (token pairs merged per block)")
        apply_tome(model, tome_r)
        details = {"r": tome_r}
    else:
        if heads == 0 and mlp == 0:
            raise ValueError("prune needs --heads and/or --mlp fractions above 0")
        batches = _calibration_batches(setup, calib_batches)
        setup.model.cpu()
        details = prune_by_importance(model, unit_importance(model.to(setup.device), batches), heads, mlp)
    return details


def _finetune_or_save(
    model: nn.Module, setup: Any, out: Path, finetune_epochs: int, data_config: dict[str, Any]
) -> nn.Module:
    """Fine-tune the compressed model with the run's recipe (the trainer writes ``out/model.safetensors``), or
    save it as it is; returns the final model in eval mode on the CPU."""
    from ..tasks import build_trainer
    from ..weights import save

    if finetune_epochs > 0:
        trainer = build_trainer(
            setup.cfg, model=model.train(), train_data=setup.train_data, val_data=setup.val_data
        )
        trainer.fit()  # writes out/model.safetensors (the structure edits travel with the model)
        model = trainer.final_model()
    else:
        model.data_config = data_config
        save(model, out / "model.safetensors", data_config=data_config)
    return model.eval().cpu()


def _measure(
    original: nn.Module,
    model: nn.Module,
    method: str,
    run_dir: Path,
    out: Path,
    data_config: dict[str, Any],
    data_dir: str | os.PathLike | None,
    bench_batch: int,
) -> list[dict[str, Any]]:
    """Report rows of the original and the compressed model: size, GFLOPs, throughput, accuracy (written as
    ``eval_original.json`` / ``eval_compressed.json``), speed-up and size ratio against the original."""
    from ..evaluate import evaluate

    c, (h, w) = int(data_config["in_chans"]), data_config["img_size"]
    x = torch.randn(bench_batch, c, h, w)
    speed = throughput({"original": original.eval(), "compressed": model}, x)
    rows = []
    for name, m, path in (("original", original, run_dir / "model.safetensors"),
                          ("compressed", model, out / "model.safetensors")):  # fmt: skip
        metrics = evaluate(path, dataset=data_config.get("dataset"), data_dir=data_dir, plot=False,
                           out_json=out / f"eval_{name}.json")  # fmt: skip
        rows.append({
            "model": name, "params": parameter_count(m),
            "file_mb": path.stat().st_size / 2**20, "gflops": _gflops(m, x[:1], method, original),
            "images_per_s": speed[name], "top1": metrics["top1"],
        })  # fmt: skip
    base = rows[0]
    for r in rows:
        r["speedup"] = r["images_per_s"] / base["images_per_s"]
        r["size_ratio"] = base["file_mb"] / r["file_mb"]
    return rows


def format_report(report: dict[str, Any]) -> str:
    """Markdown table of a :func:`compress_run` report."""
    lines = [
        f"{report['method']} of {report['run']} (fine-tune: {report['finetune_epochs']} epochs, "
        f"timed on {report['threads']} thread(s): {report.get('threads_reason', 'as recorded')})",
        "",
        "| model | params | file MB | GFLOPs | img/s | speed-up | smaller | top-1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.3f}M | {r['file_mb']:.2f} | {r['gflops']:.4f} | "
            f"{r['images_per_s']:.0f} | {r['speedup']:.2f}x | {r['size_ratio']:.2f}x | {r['top1']:.4f} |"
        )
    return "\n".join(lines)
