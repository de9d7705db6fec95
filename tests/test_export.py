"""Export: ONNX (checked with onnxruntime), TorchScript and safetensors reproduce the PyTorch model."""

from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pytest
import torch

import vitkit
from vitkit.cli import main as cli_main
from vitkit.export import ExportError, export_model

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
DATA_CONFIG = {"dataset": "mnist", "classes": [str(i) for i in range(10)], "mean": [0.1307], "std": [0.3081],
               "img_size": [28, 28], "in_chans": 1}  # fmt: skip


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = vitkit.create_model("vit_mnist", depth=2, embed_dim=64, num_heads=2, stem_channels=[16])
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    vitkit.save(model, path, data_config=DATA_CONFIG)
    return path


@pytest.mark.skipif(
    not HAS_ONNX, reason="onnx, onnxscript and onnxruntime not installed (pip install 'vitkit[export]')"
)
def test_onnx_export_matches_pytorch_at_any_batch_size(model_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.onnx"
    # as where vitkit is installed alone: no torchvision, whose absence torch.onnx's registry announced on stderr
    # through torch's own handlers on the "torch" and "torch.onnx" loggers (bound to the stream of their import,
    # which capfd cannot see): what reaches those handlers is what a user reads
    monkeypatch.setitem(sys.modules, "torchvision", None)
    printed_by_torch = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: printed_by_torch.append(record.getMessage())
    loggers = [logging.getLogger(name) for name in ("torch", "torch.onnx")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        assert cli_main(["export", str(model_file), "--format", "onnx", "-o", str(out)]) == 0
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    printed, err = capsys.readouterr()
    assert "max |logit diff| vs PyTorch: batch 8:" in printed and "| onnx |" in printed
    assert printed_by_torch == [] and "torchvision" not in err, (printed_by_torch, err)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    model = vitkit.load(model_file).eval()
    for n in (1, 3, 17):  # the batch dimension is dynamic
        x = torch.randn(n, 1, 28, 28)
        got = session.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors"])
def test_torchscript_and_safetensors_exports_reproduce_the_model(model_file, tmp_path, fmt):
    report = export_model(model_file, fmt, tmp_path / f"out.{fmt}", bench=False)
    assert set(report["max_abs_diff"]) == {8, 5} and max(report["max_abs_diff"].values()) <= 1e-4
    x = torch.randn(4, 1, 28, 28)
    model = vitkit.load(model_file).eval()
    exported = torch.jit.load(report["out"]) if fmt == "torchscript" else vitkit.load(report["out"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), atol=1e-4, rtol=0)


def test_export_reports_speed_and_refuses_bad_requests(model_file, tmp_path, capsys):
    report = export_model(model_file, "torchscript", tmp_path / "m.pt", bench_batch=16)
    assert report["images_per_s"]["pytorch"] > 0 and report["speed_ratio"] > 0
    with pytest.raises(SystemExit):  # argparse names the allowed formats
        cli_main(["export", str(model_file), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(model_file, "tflite")
    assert cli_main(["export", str(tmp_path / "missing.safetensors")]) == 2
    assert "no run directory or model file" in capsys.readouterr().err
    from vitkit.compress import quantize_int8

    q = vitkit.load(model_file)
    quantize_int8(q, [torch.randn(4, 1, 28, 28)])
    qfile = vitkit.save(q, tmp_path / "int8.safetensors", data_config=DATA_CONFIG)
    with pytest.raises(ExportError, match="int8 models .* export them as torchscript or safetensors"):
        export_model(qfile, "onnx")
