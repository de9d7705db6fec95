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


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path, opset: int | None) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise ExportError("ONNX export needs the onnx extras: pip install 'vitkit[export]'") from e
    batch = torch.export.Dim("batch", min=1, max=4096)
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):  # their INFO lines drown the report
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (x,), dynamo=True, input_names=["images"], output_names=["logits"],
            dynamic_shapes=({0: batch},), opset_version=opset, optimize=True, verbose=False,
        )  # fmt: skip
    program.save(str(path))


def _onnx_runner(path: Path, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("checking an ONNX export needs onnxruntime: pip install 'vitkit[export]'") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor | np.ndarray) -> np.ndarray:
        array = x.numpy() if isinstance(x, torch.Tensor) else x
        return session.run(None, {name: array})[0]

    return run


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

    Returns a report: output file and size, max |logit difference| per checked batch size, and (``bench``)
    images/s of PyTorch and of the exported runtime on a ``bench_batch`` batch.
    """
    from .compress.quantize import quantized_modules
    from .predict import load_for_inference
    from .weights import load, save

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    model, data_config = load_for_inference(path)
    model = model.eval().cpu()
    if fmt == "onnx" and quantized_modules(model):
        raise ExportError(
            "int8 models (vitkit compress --method int8) use PyTorch's quantized CPU kernels, which ONNX export "
            "does not cover: export them as torchscript or safetensors, or export the float model to ONNX"
        )
    src = Path(path)
    default = (src if src.is_dir() else src.parent) / _DEFAULT_NAME[fmt]
    out = Path(out) if out is not None else default
    out.parent.mkdir(parents=True, exist_ok=True)
    c, (h, w) = int(data_config["in_chans"]), tuple(data_config["img_size"])
    gen = torch.Generator().manual_seed(seed)
    checks = [torch.randn(n, c, h, w, generator=gen) for n in (batch_size, max(1, batch_size // 2 + 1))]
    with torch.no_grad():
        expected = [model(x) for x in checks]

    if fmt == "onnx":
        _export_onnx(model, checks[0], out, opset)
        runner = _onnx_runner(out, torch.get_num_threads())
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, checks[0], check_trace=False)
            torch.jit.save(traced, str(out))
        runner = torch.jit.load(str(out), map_location="cpu").eval()
    else:
        save(model, out, data_config=data_config)
        runner = load(out).eval()

    diffs = {}
    with torch.no_grad():
        for x, ref in zip(checks, expected, strict=True):
            got = torch.as_tensor(np.asarray(runner(x))) if fmt == "onnx" else runner(x)
            if got.shape != ref.shape:
                raise ExportError(
                    f"{out}: batch of {x.shape[0]} gave logits {tuple(got.shape)}, expected {tuple(ref.shape)}"
                )
            diffs[int(x.shape[0])] = float((got - ref).abs().max())
    worst = max(diffs.values())
    if not worst <= atol:
        raise ExportError(
            f"{out} does not reproduce the PyTorch model: max |logit diff| {worst:.3g} > {atol:g}"
        )

    report: dict[str, Any] = {
        "source": str(path), "format": fmt, "out": str(out), "file_mb": out.stat().st_size / 2**20,
        "max_abs_diff": diffs, "atol": atol, "input_shape": [c, h, w], "threads": torch.get_num_threads(),
    }  # fmt: skip
    if bench:
        x = torch.randn(bench_batch, c, h, w, generator=gen)
        rates = throughput({"pytorch": model, fmt: runner}, x)  # the onnx runner views the tensor as numpy
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
