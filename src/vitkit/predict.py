"""Inference on image files, PIL images and arrays with a trained vitkit model.

A model saved by the trainer (``run_dir/model.safetensors``) carries a *data config*::

    {"dataset": str, "classes": [...], "mean": [...], "std": [...], "img_size": [H, W], "in_chans": int}

and inputs are prepared exactly as during training: decode to float [0, 1] CHW with the model's number of
channels -> resize to ``img_size`` if different (bilinear, antialiased; the aspect ratio is not kept, as in
training) -> ``(x - mean) / std`` per channel.

Models saved without a data config still work (:func:`resolve_data_config`): classes become ``"0".."n-1"``,
the image size and channels come from the model's own config, and the normalisation is the dataset's known
statistics when the config names a known dataset, else mean 0.5 / std 0.5 per channel (maps [0, 1] to
[-1, 1], the common default when the statistics are unknown). A warning says so; pass ``strict=True`` to
:func:`load_for_inference` to get an error instead.

Typical use::

    from vitkit.predict import predict, format_predictions
    print(format_predictions(predict("runs/digits", ["a.png", "b.jpg"], topk=3)))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._callable import make_module_callable

__all__ = [
    "MissingDataConfigError",
    "load_for_inference",
    "resolve_data_config",
    "preprocess",
    "predict",
    "format_predictions",
]

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's RGB -> L
_BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white (as vitkit.data.load_image)

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | Tensor


class MissingDataConfigError(ValueError):
    """The model file records no data config (class names, normalisation) and ``strict=True`` was asked."""


# ---------------------------------------------------------------------------------------------- loading
def _model_info(model: nn.Module) -> tuple[int | None, list[int] | None, int | None, bool]:
    """(in_chans, [H, W], num_classes, dynamic_img_size) from a vitkit model's config."""
    cfg = getattr(model, "config", None) or {}
    in_chans = cfg.get("in_chans")
    size = cfg.get("img_size")
    if isinstance(size, int):
        size = [size, size]
    num_classes = cfg.get("num_classes", getattr(model, "num_classes", None))
    return (
        in_chans,
        (list(size) if size is not None else None),
        num_classes,
        bool(cfg.get("dynamic_img_size")),
    )


def _known_stats(dataset: str | None, channels: int) -> tuple[list[float], list[float]] | None:
    if not dataset:
        return None
    try:
        from .data.factory import DATASET_STATS, canonical_name
    except ImportError:  # pragma: no cover - vitkit.data is part of the package
        return None
    stats = DATASET_STATS.get(canonical_name(str(dataset)))
    if stats is None or len(stats[0]) != channels:
        return None
    return list(stats[0]), list(stats[1])


def _per_channel(values: Any, channels: int, what: str) -> list[float]:
    vals = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(vals) == 1 and channels > 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(f"data config {what} has {len(vals)} values for a {channels}-channel model")
    return vals


def resolve_data_config(
    model: nn.Module, data_config: dict[str, Any] | None = None, strict: bool = False, source: str = "model",
    need_classes: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """A complete data config for ``model``: ``data_config`` (default ``model.data_config``) with gaps filled.

    Keys: ``dataset`` (may be None), ``classes``, ``mean``, ``std``, ``img_size`` ([H, W]), ``in_chans``.
    Missing entries come from the model's config (``img_size``, ``in_chans``, ``num_classes`` ->
    classes ``"0".."n-1"``) and, for mean/std, the known statistics of ``dataset`` or 0.5 / 0.5. With no
    data config at all: :class:`MissingDataConfigError` if ``strict``, else a warning and those defaults.
    ``need_classes=False`` (a caller that only prepares images, e.g. a few-shot probe of a dual encoder): ``classes``
    is None and no class names are looked for. Raises ValueError where the config contradicts the model (class
    count, channels).
    """
    if data_config is None:
        data_config = getattr(model, "data_config", None)
    in_chans_m, size_m, num_classes, dynamic = _model_info(model)
    if not data_config:
        msg = (
            f"{source} has no data config (class names, normalisation, input size): it was not saved by the "
            "vitkit trainer or vitkit.save(..., data_config=...)"
        )
        if strict:
            raise MissingDataConfigError(msg)
        warnings.warn(
            f"{msg}; assuming classes '0'..'{(num_classes or 1) - 1}', the model's own input size and "
            f"channels, and mean {DEFAULT_MEAN} / std {DEFAULT_STD} per channel",
            stacklevel=3,
        )
        data_config = {}
    dc = dict(data_config)

    in_chans = _resolve_channels(dc, in_chans_m, source)
    size = _resolve_size(dc, size_m, dynamic, source)
    classes = _resolve_classes(dc, num_classes, source) if need_classes else None
    stats = _known_stats(dc.get("dataset"), in_chans)
    mean = dc.get("mean")
    std = dc.get("std")
    if mean is None:
        mean = stats[0] if stats else DEFAULT_MEAN
    if std is None:
        std = stats[1] if stats else DEFAULT_STD
    mean, std = _per_channel(mean, in_chans, "mean"), _per_channel(std, in_chans, "std")
    if any(s <= 0 for s in std):
        raise ValueError(f"{source}: data config std must be positive, got {std}")
    return {**dc, "dataset": dc.get("dataset"), "classes": classes, "mean": mean, "std": std,
            "img_size": size, "in_chans": in_chans}  # fmt: skip


def _resolve_channels(dc: dict[str, Any], in_chans_m: int | None, source: str) -> int:
    in_chans = dc.get("in_chans") or in_chans_m
    if in_chans is None:
        in_chans = len(dc["mean"]) if isinstance(dc.get("mean"), (list, tuple)) else 3
    in_chans = int(in_chans)
    if in_chans_m is not None and in_chans != int(in_chans_m):
        raise ValueError(
            f"{source}: data config says {in_chans} input channels but the model takes {in_chans_m}"
        )
    return in_chans


def _resolve_size(dc: dict[str, Any], size_m: list[int] | None, dynamic: bool, source: str) -> list[int]:
    size = dc.get("img_size") or size_m
    if size is None:
        raise ValueError(f"{source}: no input size in the data config or the model config")
    size = [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]
    if size_m is not None and size != size_m and not dynamic:
        warnings.warn(
            f"{source}: data config img_size {size} differs from the model's fixed input size {size_m}; using "
            f"{size_m}",
            stacklevel=4,
        )
        size = size_m
    return size


def _resolve_classes(dc: dict[str, Any], num_classes: int | None, source: str) -> list[str]:
    classes = dc.get("classes")
    if classes is None:
        if num_classes is None:
            raise ValueError(f"{source}: no class names in the data config and no num_classes in the model")
        classes = [str(i) for i in range(int(num_classes))]
    classes = [str(c) for c in classes]
    if num_classes is not None and len(classes) != int(num_classes):
        raise ValueError(
            f"{source}: data config lists {len(classes)} classes but the model has {num_classes} outputs"
        )
    return classes


def load_for_inference(
    path: str | os.PathLike, device: str | torch.device = "cpu", strict: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model for inference from a run directory (its ``model.safetensors``) or a ``.safetensors`` file.

    Returns ``(model.eval(), data_config)`` with the data config completed by :func:`resolve_data_config`
    (also set as ``model.data_config``). ``strict=True`` raises :class:`MissingDataConfigError` for a model
    saved without a data config instead of warning and assuming defaults.
    """
    from .weights import load

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no run directory or model file at {p}")
    if p.is_dir():
        model_file = p / "model.safetensors"
        if not model_file.is_file():
            hint = (
                " The run has a checkpoint.pt but no final model yet (model.safetensors is written when training"
                " ends): let it finish, or resume it with `vitkit train --resume DIR`."
                if (p / "checkpoint.pt").exists()
                else ""
            )
            raise FileNotFoundError(f"{p} is not a run directory: it holds no model.safetensors.{hint}")
    else:
        model_file = p
        if p.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin"):
            beside = p.parent / "model.safetensors"
            hint = f" Use {beside} (or the run directory {p.parent})." if beside.is_file() else ""
            raise ValueError(
                f"{p} is not a vitkit model file (expected a .safetensors written by vitkit.save or the trainer; "
                f"checkpoint.pt holds training state).{hint}"
            )
    model = load(model_file, device=device)
    family = getattr(model, "family", "")
    if family in ("bert", "bert_mlm", "seq2seq", "mae"):
        use = {"seq2seq": "vitkit translate RUN 'text'", "mae": "vitkit finetune --from RUN --data DATASET"}
        raise ValueError(
            f"{model_file} holds a {type(model).__name__} ({family}), not an image classifier: "
            f"{use.get(family, 'vitkit.data.text.TextTokenizer + the model in Python (see the README, Text)')}"
        )
    data_config = resolve_data_config(model, strict=strict, source=str(model_file))
    model.data_config = data_config
    return model.eval(), data_config


# ---------------------------------------------------------------------------------------------- inputs
def _match_channels(x: Tensor, channels: int) -> Tensor:
    """(..., C, H, W) float in [0, 1] -> ``channels`` channels (luma for RGB->gray, repeat for gray->RGB)."""
    c = x.shape[-3]
    if c in (2, 4):  # gray+alpha / RGBA: composite on white
        color, alpha = x[..., :-1, :, :], x[..., -1:, :, :]
        x = color * alpha + (1.0 - alpha)
        c -= 1
    if c == channels:
        return x
    if channels == 1 and c == 3:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * w).sum(dim=-3, keepdim=True)
    if channels == 3 and c == 1:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    raise ValueError(f"cannot convert a {c}-channel image to {channels} channels")


def _array_to_chw(a: np.ndarray | Tensor, name: str) -> Tensor:
    """An image array -> float (C, H, W) in [0, 1].

    NumPy arrays are (H, W) or (H, W, C); tensors (H, W) or (C, H, W). Either layout is also recognised in
    the other container when unambiguous (a leading dim <= 4 with a trailing dim > 4 is channels-first).
    uint8 is scaled by 1/255, uint16 by 1/65535, bool to {0, 1}; floats must already be in [0, 1];
    other integer types are read as 8-bit when their values lie in [0, 255].
    """
    is_tensor = isinstance(a, Tensor)
    t = a.detach().cpu() if is_tensor else torch.from_numpy(np.ascontiguousarray(a))
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 3:
        first, last = t.shape[0], t.shape[-1]
        channels_first = (first <= 4 and last > 4) if not is_tensor else not (last <= 4 < first)
        if not channels_first:
            t = t.permute(2, 0, 1)
    else:
        raise ValueError(f"{name}: expected a 2-D or 3-D image array, got shape {tuple(t.shape)}")
    if t.shape[0] not in (1, 2, 3, 4) or t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"{name}: cannot read an image with shape {tuple(a.shape)} (1-4 channels expected)")
    if t.dtype == torch.uint8:
        return t.float().div_(255)
    if t.dtype == torch.bool:
        return t.float()
    if t.dtype == torch.uint16:
        return t.to(torch.int32).float().div_(65535)
    if t.is_floating_point():
        t = t.float()
        lo, hi = float(t.min()), float(t.max())
        if lo < -1e-3 or hi > 1 + 1e-3 or not np.isfinite([lo, hi]).all():
            raise ValueError(
                f"{name}: float images must hold values in [0, 1], found [{lo:.4g}, {hi:.4g}] "
                "(divide 8-bit values by 255)"
            )
        return t.clamp_(0, 1)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi > 255:
        raise ValueError(
            f"{name}: integer image values must lie in [0, 255] (or use uint16), found [{lo}, {hi}]"
        )
    return t.float().div_(255)


def _load_item(item: ImageInput, channels: int, index: int) -> Tensor:
    """One input -> float (C, H, W) in [0, 1] with ``channels`` channels. Files and PIL images go through
    :func:`vitkit.data.images.decode_image`, the decoder of the training datasets."""
    from PIL import Image

    from .data.images import load_image, to_tensor

    if isinstance(item, (str, os.PathLike)):
        return to_tensor(load_image(item, channels=channels, background=_BACKGROUND))
    if isinstance(item, Image.Image):
        return to_tensor(load_image(item, channels, background=_BACKGROUND, name=f"<PIL image #{index}>"))
    if isinstance(item, (np.ndarray, Tensor)):
        return _match_channels(_array_to_chw(item, f"<array #{index}>"), channels)
    raise TypeError(
        f"input #{index}: expected a file path, PIL image, NumPy array or tensor, got {type(item).__name__}"
    )


def _as_items(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """A list of single inputs; a directory path becomes its image files (sorted, not recursive)."""
    if isinstance(images, (str, os.PathLike)):
        items = [images]
    elif isinstance(images, (np.ndarray, Tensor)):
        return list(images) if images.ndim == 4 else [images]
    else:
        try:
            from PIL import Image

            if isinstance(images, Image.Image):
                return [images]
        except ImportError:  # pragma: no cover
            pass
        items = list(images)
    out: list[ImageInput] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            from .data.images import is_image_file

            files = sorted(str(f) for f in Path(item).iterdir() if f.is_file() and is_image_file(f))
            if not files:
                raise FileNotFoundError(f"no image files in directory {item}")
            out.extend(files)
        else:
            out.append(item)
    return out


def _finish(tensors: Sequence[Tensor], data_config: dict[str, Any]) -> Tensor:
    """Resize each (C, H, W) to img_size (with a ``crop_pct`` < 1: resize larger, then center-crop, as timm
    evaluates pretrained weights; ``interpolation`` bicubic or bilinear, the default), stack, normalise."""
    size = tuple(int(s) for s in data_config["img_size"])
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    mode = "bicubic" if data_config.get("interpolation") == "bicubic" else "bilinear"
    from .data.transforms import resize_center_crop

    out = []
    for x in tensors:
        if crop_pct < 1.0:
            x = resize_center_crop(x, size, crop_pct, mode)
        elif tuple(x.shape[-2:]) != size:
            x = F.interpolate(x[None], size=size, mode=mode, antialias=True, align_corners=False)[0]
        if mode == "bicubic":
            x = x.clamp(0.0, 1.0)  # bicubic overshoots; timm resizes 8-bit images, which clip
        out.append(x)
    batch = torch.stack(out)
    mean = torch.tensor(data_config["mean"], dtype=batch.dtype).view(-1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=batch.dtype).view(-1, 1, 1)
    return (batch - mean) / std


def _require(data_config: dict[str, Any]) -> None:
    missing = [k for k in ("img_size", "mean", "std") if data_config.get(k) is None]
    if missing:
        raise ValueError(
            f"data config lacks {missing}; complete it with vitkit.predict.resolve_data_config(model, ...)"
        )


def preprocess(images: ImageInput | Iterable[ImageInput], data_config: dict[str, Any]) -> Tensor:
    """Prepare inputs for the model: a float (B, C, H, W) tensor, resized and normalised.

    ``images``: one input or a list of them; each a file path (a directory stands for the image files in
    it, sorted; files are decoded with
    :func:`vitkit.data.images.load_image`: grayscale, palette, RGBA, 16-bit, CMYK... are converted, alpha
    composited on white), a PIL image (converted the same way), a NumPy array ((H, W) or (H, W, C)) or a
    tensor ((H, W) or (C, H, W)); a 4-D array/tensor is a batch. See :func:`_array_to_chw` for value ranges.
    Unreadable files raise :class:`vitkit.data.BadImageError` naming the file.
    """
    _require(data_config)
    channels = int(data_config.get("in_chans") or len(data_config["mean"]))
    items = _as_items(images)
    if not items:
        raise ValueError("no images given")
    return _finish([_load_item(item, channels, i) for i, item in enumerate(items)], data_config)


# ---------------------------------------------------------------------------------------------- predict
def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def predict(
    model_or_path: nn.Module | str | os.PathLike,
    images: ImageInput | Iterable[ImageInput],
    topk: int = 5,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    on_error: str = "raise",
) -> list[dict[str, Any]]:
    """Top-``topk`` classes for each input, most probable first.

    ``model_or_path``: a run directory, a ``.safetensors`` model file or a loaded model (its
    ``model.data_config`` is used, completed by :func:`resolve_data_config`). ``images``: see
    :func:`preprocess`. ``topk`` is capped at the number of classes. ``device``: default CPU for a path,
    the model's own device for a model. ``on_error='skip'`` turns an unreadable input into a result with an
    ``"error"`` message and no ``"top"`` entries instead of raising.

    Returns one dict per input: ``{"path": str | None, "top": [{"label": str, "index": int, "prob": float},
    ...]}`` (``path`` is None for in-memory inputs).
    """

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive integer, got {topk!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(model_or_path, nn.Module):
        model = model_or_path
        data_config = resolve_data_config(model)
        device = torch.device(device) if device is not None else _model_device(model)
        model = model.to(device)
    else:
        device = torch.device(device or "cpu")
        model, data_config = load_for_inference(model_or_path, device=device)
    _require(data_config)
    k = min(topk, len(data_config["classes"]))

    items = _as_items(images)
    results: list[dict[str, Any]] = [
        {"path": str(item) if isinstance(item, (str, os.PathLike)) else None, "top": []} for item in items
    ]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            rows = range(start, min(start + batch_size, len(items)))
            _predict_batch(model, items, rows, results, data_config, k, device, on_error)
    finally:
        model.train(was_training)
    return results


def _predict_batch(model: nn.Module, items: list, rows: range, results: list[dict[str, Any]],
                   data_config: dict[str, Any], k: int, device: torch.device, on_error: str) -> None:  # fmt: skip
    """Fill ``results[i]["top"]`` for the items of ``rows`` (one forward pass); unreadable ones raise or, with
    ``on_error='skip'``, get an ``"error"``."""
    from .data.images import BadImageError

    classes, channels = data_config["classes"], int(data_config["in_chans"])
    tensors, kept = [], []
    for i in rows:
        try:
            tensors.append(_load_item(items[i], channels, i))
            kept.append(i)
        except (BadImageError, ValueError, TypeError) as e:
            if on_error == "raise":
                raise
            results[i]["error"] = str(e)
    if not tensors:
        return
    x = _finish(tensors, data_config).to(device)
    with torch.inference_mode():
        out = model(x)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        probs = logits.float().softmax(dim=-1).cpu()
    if probs.shape[-1] != len(classes):
        raise ValueError(f"model gives {probs.shape[-1]} outputs but has {len(classes)} class names")
    top_p, top_i = probs.topk(k, dim=-1)
    for row, ps, idx in zip(kept, top_p.tolist(), top_i.tolist(), strict=True):
        results[row]["top"] = [{"label": classes[j], "index": int(j), "prob": float(p)}
                               for p, j in zip(ps, idx, strict=True)]  # fmt: skip


def format_predictions(results: Sequence[dict[str, Any]]) -> str:
    """Human-readable predictions: one block per input with rank, label and probability."""
    blocks = []
    for n, r in enumerate(results):
        lines = [r.get("path") or f"image #{n}"]
        if r.get("error"):
            lines.append(f"  error: {r['error']}")
        top = r.get("top") or []
        width = max([5, *(len(str(t["label"])) for t in top)])
        for rank, t in enumerate(top, 1):
            p = float(t["prob"])
            bar = "#" * round(p * 20)
            lines.append(f"  {rank:>2}. {t['label']:<{width}}  {100 * p:6.2f}%  {bar}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


make_module_callable(__name__, "predict")
