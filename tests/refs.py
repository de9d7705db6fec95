"""Import the reference libraries (timm, transformers, open_clip) for parity tests and benchmarks.

The torchvision wheel that timm needs here is a CUDA build which fails to import beside the CPU torch
("operator torchvision::nms does not exist"). Defining the two op schemas it registers kernels for lets
it import; torchvision's own C++ ops stay unusable, which timm's ViT never calls. This lives in tests and
benchmarks only: vitkit itself never needs torchvision.
"""

from __future__ import annotations

import importlib

import torch

_shim = None


def _define_torchvision_schemas() -> None:
    global _shim
    if _shim is not None:
        return
    try:
        import torchvision  # noqa: F401  (a torchvision built for this torch needs no shim)

        _shim = False
        return
    except Exception:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _shim = lib  # keep the library object alive


def import_timm():
    """Return the ``timm`` module, or raise ImportError with the reason."""
    _define_torchvision_schemas()
    return importlib.import_module("timm")


def import_transformers():
    _define_torchvision_schemas()
    return importlib.import_module("transformers")


def import_open_clip():
    """Return the ``open_clip`` module (a test-only reference; ``pip install open_clip_torch``), or raise
    ImportError with the reason. It imports timm and torchvision, hence the same schema shim."""
    _define_torchvision_schemas()
    return importlib.import_module("open_clip")
