"""Export a trained model for deployment: ONNX (checked with onnxruntime), TorchScript, or safetensors.

Every export is verified inside the call: the exported file is loaded back and run on the same random batch
as the PyTorch model (and, for ONNX and TorchScript, on a second batch size, since the batch dimension is
dynamic); the largest absolute difference of the logits must stay within ``atol`` (1e-4 by default) or the
export fails. The report also gives the throughput of the exported runtime beside PyTorch's, timed in
interleaved rounds in the same process.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .profiling import throughput

__all__ = ["FORMATS", "ExportError", "export_model", "format_export_report"]

FORMATS = ("onnx", "torchscript", "safetensors")
_DEFAULT_NAME = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "safetensors": "model.export.safetensors",
}


class ExportError(RuntimeError):
    """The exported model could not be written or does not reproduce the PyTorch model."""


def _input_names(model: nn.Module, n_inputs: int) -> list[str]:
    if n_inputs == 2:
        return ["source", "target"]
    return ["input_ids"] if "vocab_size" in (getattr(model, "config", None) or {}) else ["images"]


def _output_names(sample: Any) -> list[str]:
    if isinstance(sample, dict):
        return [k for k, v in sample.items() if isinstance(v, torch.Tensor)]
    if isinstance(sample, (tuple, list)):
        return [f"output{i}" for i in range(len(sample))]
    return ["logits"]


def _flat(out: Any) -> tuple[torch.Tensor, ...]:
    """A model's output as a tuple of tensors (a dict's tensor values in key order; empty lists dropped)."""
    if isinstance(out, dict):
        return tuple(v for v in out.values() if isinstance(v, torch.Tensor))
    if isinstance(out, (tuple, list)):
        return tuple(v for v in out if isinstance(v, torch.Tensor))
    return (out,)


class _TensorOutputs(nn.Module):
    """The model with its outputs as a flat tuple of tensors (what tracing and ONNX graphs hold)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outs = _flat(
            self.model(x) if y is None else self.model(x, y)
        )  # (images | token ids) or (source, target)
        return outs[0] if len(outs) == 1 else outs  # a classifier's export gives its logits as they are


class _NoTorchvisionNotice(logging.Filter):
    """Drops torch.onnx's "torchvision is not installed. Skipping torchvision::nms" (one warning per torchvision
    operator its registry knows, at every export; torch/onnx/_internal/exporter/_registration.py): vitkit's
    models use no torchvision operator and vitkit does not depend on torchvision."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


def _export_onnx(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, opset: int | None, data_config: dict
) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise ExportError(
            "ONNX export needs the export extras; from the vitkit checkout: pip install -c constraints.txt -e '.[export]'"
        ) from e
    batch = torch.export.Dim("batch", min=1, max=4096)
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):  # their INFO lines drown the report
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad():
        outputs = _output_names(model(*inputs))
    notice = _NoTorchvisionNotice()
    logging.getLogger(_REGISTRATION_LOGGER).addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _TensorOutputs(model), inputs, dynamo=True, input_names=_input_names(model, len(inputs)),
                output_names=outputs, dynamic_shapes=_dynamic_shapes(model, inputs, batch), opset_version=opset,
                optimize=True, verbose=False,
            )  # fmt: skip
    finally:
        logging.getLogger(_REGISTRATION_LOGGER).removeFilter(notice)
    program.save(str(path))
    _add_metadata(path, model, data_config)


def _add_metadata(path: Path, model: nn.Module, data_config: dict) -> None:
    """Write what a runtime user needs into the ONNX file's metadata (``custom_metadata_map`` in onnxruntime):
    ``vitkit_task``, ``vitkit_data_config`` (class names, mean/std, input size... as JSON), ``vitkit_family`` and
    ``vitkit_model_config`` (JSON)."""
    import json

    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    values = {"vitkit_task": str(data_config.get("task", "classification")),
              "vitkit_data_config": json.dumps(data_config), "vitkit_family": str(getattr(model, "family", "")),
              "vitkit_model_config": json.dumps(getattr(model, "config", {}), default=str)}  # fmt: skip
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _dynamic_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...], batch: Any) -> tuple[dict, ...]:
    """Any batch size; token inputs also any length up to the model's ``max_len`` (source and target apart)."""
    if inputs[0].is_floating_point():
        return tuple({0: batch} for _ in inputs)
    config = getattr(model, "config", None) or {}
    longest = int(
        config.get("max_len") or config.get("block_size") or 512
    )  # a GPT's context is its block_size
    names = ("source_len", "target_len") if len(inputs) == 2 else ("length",)
    return tuple({0: batch, 1: torch.export.Dim(n, min=2, max=longest)} for n in names)


def _onnx_runner(path: Path, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(
            "checking an ONNX export needs onnxruntime, one of the export extras; from the vitkit checkout: "
            "pip install -c constraints.txt -e '.[export]'"
        ) from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*xs: torch.Tensor | np.ndarray) -> tuple[np.ndarray, ...]:
        arrays = [x.numpy() if isinstance(x, torch.Tensor) else x for x in xs]
        return tuple(session.run(None, dict(zip(names, arrays, strict=True))))

    return run


# tasks whose forward pass draws random masks: no deterministic graph to export
_RANDOM_FORWARD = {"mae": "an MAE model masks patches at random in its forward pass",
                   "mlm": "a masked language model masks tokens at random in its forward pass"}  # fmt: skip


def _load_exportable(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(model on the CPU in eval mode, its data config) of a run directory or model file of any exportable task."""
    from .predict import load_for_inference
    from .tasks.inference import load_task_model, task_of_file

    task = task_of_file(path) or "classification"
    if task in _RANDOM_FORWARD:
        raise ExportError(
            f"{path}: {_RANDOM_FORWARD[task]}; export its encoder (encoder.safetensors) instead"
        )
    if task == "classification":
        model, data_config = load_for_inference(path)
    else:
        model, _ = load_task_model(path)
        data_config = dict(model.data_config or {})
    return model.eval().cpu(), data_config


def _check_inputs(
    model: nn.Module, n: int, gen: torch.Generator, length: int = 16
) -> tuple[torch.Tensor, ...]:
    """A random batch of ``n`` inputs in the model's own form (images, or token ids of ``length``)."""
    from .models.examples import example_inputs

    template = example_inputs(model, batch=n, length=length)
    if template[0].is_floating_point():
        return tuple(torch.randn(t.shape, generator=gen) for t in template)
    vocab = int(model.config["vocab_size"])
    low = min(
        4, vocab // 2
    )  # past the usual special ids, where the vocabulary has room (a character one may not)
    return tuple(torch.randint(low, vocab, t.shape, generator=gen) for t in template)


def _write(
    model: nn.Module, fmt: str, inputs: tuple[torch.Tensor, ...], out: Path, opset, data_config
) -> Any:
    """Write the export and return something that runs it on the same inputs."""
    from .weights import load, save

    if fmt == "onnx":
        _export_onnx(model, inputs, out, opset, data_config)
        return _onnx_runner(out, torch.get_num_threads())
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_TensorOutputs(model), inputs, check_trace=False)
            torch.jit.save(traced, str(out))
        return torch.jit.load(str(out), map_location="cpu").eval()
    save(model, out, data_config=data_config)
    return load(out).eval()


def _max_diffs(
    runner: Any, checks: list[tuple[torch.Tensor, ...]], expected: list, out: Path
) -> dict[int, float]:
    diffs = {}
    with torch.no_grad():
        for xs, ref in zip(checks, expected, strict=True):
            out = runner(*xs)
            got = [torch.as_tensor(np.asarray(g)) for g in (out if isinstance(out, tuple) else _flat(out))]
            for g, r in zip(got, ref, strict=True):
                if g.shape != r.shape:
                    raise ExportError(
                        f"{out}: batch of {xs[0].shape[0]} gave an output {tuple(g.shape)}, expected {tuple(r.shape)}"
                    )
            diffs[int(xs[0].shape[0])] = max(
                float((g.float() - r.float()).abs().max()) for g, r in zip(got, ref, strict=True)
            )
    return diffs


def export_model(
    path: str | os.PathLike,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    *,
    batch_size: int = 8,
    atol: float = 1e-4,
    opset: int | None = None,
    bench: bool = True,
    bench_batch: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Export the model of run directory or model file ``path`` as ``fmt`` to ``out``, check it, time it.

    Any task whose forward pass is deterministic exports: image models (classifiers, DETR's boxes and classes,
    Segmenter's masks) and token models (text classifiers, translation). Returns a report: output file and size,
    max |output difference| per checked batch size, and (``bench``) inputs/s of PyTorch and of the exported
    runtime on a ``bench_batch`` batch. Raises :class:`ExportError` naming what does not export or reproduce.
    """
    from .compress.quantize import quantized_modules

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    model, data_config = _load_exportable(path)
    if fmt == "onnx" and quantized_modules(model):
        raise ExportError(
            "int8 models (vitkit compress --method int8) use PyTorch's quantized CPU kernels, which ONNX export "
            "does not cover: export them as torchscript or safetensors, or export the float model to ONNX"
        )
    src = Path(path)
    out = Path(out) if out is not None else (src if src.is_dir() else src.parent) / _DEFAULT_NAME[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    # a second batch size, and for token models a second length: both dimensions are dynamic
    checks = [
        _check_inputs(model, n, gen, length)
        for n, length in ((batch_size, 16), (max(1, batch_size // 2 + 1), 11))
    ]
    with torch.no_grad():
        expected = [_flat(model(*xs)) for xs in checks]
    runner = _write(model, fmt, checks[0], out, opset, data_config)
    diffs = _max_diffs(runner, checks, expected, out)
    worst = max(diffs.values())
    if not worst <= atol:
        raise ExportError(
            f"{out} does not reproduce the PyTorch model: max |output diff| {worst:.3g} > {atol:g}"
        )
    report: dict[str, Any] = {
        "source": str(path), "format": fmt, "out": str(out), "file_mb": out.stat().st_size / 2**20,
        "max_abs_diff": diffs, "atol": atol, "input_shape": list(checks[0][0].shape[1:]),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    if bench:
        xs = _check_inputs(model, bench_batch, gen)
        rest = xs[1:]
        rates = throughput({"pytorch": lambda a: model(a, *rest), fmt: lambda a: runner(a, *rest)}, xs[0])
        report["images_per_s"] = rates
        report["speed_ratio"] = rates[fmt] / rates["pytorch"]
    return report


def format_export_report(report: dict[str, Any]) -> str:
    """A short, human-readable table of an :func:`export_model` report."""
    diffs = ", ".join(f"batch {b}: {d:.2e}" for b, d in report["max_abs_diff"].items())
    lines = [
        f"exported {report['source']} -> {report['out']} ({report['format']}, {report['file_mb']:.2f} MB)",
        f"max |logit diff| vs PyTorch: {diffs} (limit {report['atol']:g})",
    ]
    if "images_per_s" in report:
        rates = report["images_per_s"]
        lines += [
            "",
            f"| runtime | img/s ({report['threads']} threads) | ratio |",
            "|---|---|---|",
            f"| pytorch | {rates['pytorch']:.0f} | 1.00x |",
            f"| {report['format']} | {rates[report['format']]:.0f} | {report['speed_ratio']:.2f}x |",
        ]
    return "\n".join(lines)
