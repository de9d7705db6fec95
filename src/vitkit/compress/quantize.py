"""int8 quantization for CPU inference, with PyTorch's own quantized kernels (fbgemm / x86 backend).

Two paths, used together by default:

* **dynamic** -- every ``nn.Linear`` (attention qkv/proj, MLP) gets int8 weights (per output channel) and
  int8 activations quantized on the fly per batch (``torch.ao.quantization.quantize_dynamic``); no data needed.
* **static** -- the patch embedding (convolutional stem + projection) runs in int8 end to end: BatchNorm is
  folded into the convolutions, ReLUs are fused, and activation ranges are calibrated on a few batches of
  real images (eager-mode ``prepare``/``convert``). This is where a conv-stem ViT spends most of its time.

Layers named in ``keep_float`` (default: the classifier head) stay in float, as do normalisations, position
embeddings and attention's softmax. The result is a CPU-only model; ``vitkit.save``/``vitkit.load`` store it in
safetensors as int8 tensors with their scales (see :mod:`vitkit.weights.qstate`).

PyTorch 2.10+ marks the eager ``torch.ao.quantization`` API deprecated in favour of ``torchao``; it still ships
and its x86 kernels are the fast CPU path for this eager model, so vitkit uses it and silences the notices here.
"""

from __future__ import annotations

import contextlib
import fnmatch
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .edits import record_edit, register_edit

__all__ = ["is_int8_module", "quantize_int8", "quantized_modules"]


@contextlib.contextmanager
def _quiet_ao() -> Iterator[None]:
    """Silence torch.ao's deprecation notices (one per call and per tensor) while quantizing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def _engine(engine: str | None) -> str:
    engines = torch.backends.quantized.supported_engines
    engine = engine or ("x86" if "x86" in engines else "fbgemm" if "fbgemm" in engines else "qnnpack")
    if engine not in engines:
        raise RuntimeError(f"quantized engine {engine!r} is not available in this PyTorch build ({engines})")
    torch.backends.quantized.engine = engine
    return engine


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.startswith(p + ".") for p in patterns)


def _dynamic_targets(model: nn.Module, keep_float: Iterable[str]) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and not _matches(n, keep_float)]


def _fusable_stem(stem: nn.Sequential) -> list[list[str]]:
    """Groups of ``[conv, bn(, relu)]`` child names in a conv stem, for ``fuse_modules``."""
    kids = list(stem.named_children())
    groups = []
    for i, (name, mod) in enumerate(kids):
        if isinstance(mod, nn.Conv2d) and i + 1 < len(kids) and isinstance(kids[i + 1][1], nn.BatchNorm2d):
            group = [name, kids[i + 1][0]]
            if i + 2 < len(kids) and isinstance(kids[i + 2][1], nn.ReLU):
                group.append(kids[i + 2][0])
            groups.append(group)
    return groups


def _static_patch_embed(model: nn.Module, engine: str) -> nn.Sequential:
    """Swap the patch embedding's stem + projection for one float->int8->float Sequential (prepared, not
    converted): ``patch_embed.stem = [quant, body, proj, dequant]`` and ``patch_embed.proj = Identity``."""
    from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules, get_default_qconfig, prepare

    pe = model.patch_embed
    parts: OrderedDict[str, nn.Module] = OrderedDict(quant=QuantStub())
    if pe.stem is not None:
        body = pe.stem.eval()
        groups = _fusable_stem(body)
        parts["body"] = fuse_modules(body, groups) if groups else body
    parts["proj"] = pe.proj
    parts["dequant"] = DeQuantStub()
    seq = nn.Sequential(parts).eval()
    seq.qconfig = get_default_qconfig(engine)
    prepare(seq, inplace=True)
    pe.stem, pe.proj = seq, nn.Identity()
    return seq


def _convert_static(seq: nn.Sequential) -> None:
    from torch.ao.quantization import convert

    convert(seq, inplace=True)


def _apply_dynamic(model: nn.Module, names: list[str]) -> None:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if names:
        quantize_dynamic(
            model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True
        )


def quantize_int8(
    model: nn.Module,
    calib: Iterable[Tensor] | None = None,
    *,
    dynamic: bool = True,
    static: bool = True,
    keep_float: Iterable[str] = ("head", "head_dist"),
    engine: str | None = None,
) -> dict[str, Any]:
    """Quantize ``model`` (a vitkit ViT, in place, moved to CPU) to int8; returns what was quantized.

    ``calib``: image batches (B, C, H, W), normalised like the model's inputs, to calibrate the static patch
    embedding; required when ``static`` is true. ``keep_float``: module names (glob patterns) left in float.
    """
    if not (dynamic or static):
        raise ValueError("nothing to quantize: enable dynamic and/or static")
    keep_float = tuple(keep_float)
    engine = _engine(engine)
    model.eval().cpu()
    quantize_patch_embed = (
        static and hasattr(model, "patch_embed") and not _matches("patch_embed", keep_float)
    )
    if static and not hasattr(model, "patch_embed"):
        raise ValueError(f"static int8 needs a model with a patch_embed; {type(model).__name__} has none")
    report: dict[str, Any] = {"engine": engine, "dynamic": [], "static": []}
    with _quiet_ao(), torch.inference_mode(False), torch.no_grad():
        if quantize_patch_embed:
            batches = list(calib) if calib is not None else []
            if not batches:
                raise ValueError(
                    "static int8 needs calibration images (calib=[batch, ...]); or pass static=False"
                )
            seq = _static_patch_embed(model, engine)
            for x in batches:
                seq(x.cpu().float())
            _convert_static(seq)
            report["static"] = ["patch_embed"]
            report["calib_images"] = sum(int(x.shape[0]) for x in batches)
        if dynamic:
            names = _dynamic_targets(model, keep_float)
            _apply_dynamic(model, names)
            report["dynamic"] = names
    record_edit(model, "int8", {"engine": engine, "dynamic": report["dynamic"], "static": report["static"]})
    return report


def is_int8_module(module: nn.Module) -> bool:
    """True for PyTorch's quantized modules (``torch.ao.nn.quantized``, fused ``torch.ao.nn.intrinsic.quantized``)."""
    path = type(module).__module__
    return path.startswith("torch.ao.nn.") and ".quantized" in path


def quantized_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that run int8 kernels."""
    return [n for n, m in model.named_modules() if is_int8_module(m)]


@register_edit("int8")
def _rebuild_int8(model: nn.Module, args: dict[str, Any]) -> None:
    """Give a freshly built model the int8 structure (the weights, scales and zero points come after)."""
    engine = _engine(args.get("engine"))
    model.eval().cpu()
    with _quiet_ao(), torch.no_grad():
        if args.get("static"):
            seq = _static_patch_embed(model, engine)
            c, (h, w) = model.patch_embed.in_chans, model.patch_embed.img_size
            # observers need one pass before convert; load_state_dict then sets the real scales
            seq(torch.zeros(1, c, h, w))
            _convert_static(seq)
        _apply_dynamic(model, list(args.get("dynamic", [])))
