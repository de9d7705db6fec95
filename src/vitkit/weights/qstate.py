"""State dicts of quantized models as plain tensors, so that safetensors can store them.

A quantized model's ``state_dict`` holds quantized tensors (int8 values + scales + zero points), packed
``(weight, bias)`` tuples and dtype entries, none of which safetensors accepts. :func:`to_plain` turns them into
plain tensors -- ``key`` (the int8/uint8 values), ``key.q_scale``, ``key.q_zero_point``, ``key.q_axis`` (-1 for
per-tensor; scales in float32 when exact, zero points in int32), ``key.0``/``key.1`` for tuple items -- and :func:`from_plain` rebuilds the originals, bit for bit,
using the state dict of a model with the same structure as the template.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

__all__ = ["is_plain", "to_plain", "from_plain"]

_QUANT_DTYPES = {torch.int8: torch.qint8, torch.uint8: torch.quint8, torch.int32: torch.qint32}


def is_plain(state: dict[str, Any]) -> bool:
    """True if every entry is an ordinary (not quantized) tensor."""
    return all(isinstance(v, Tensor) and not v.is_quantized for v in state.values())


def _compact_float(t: Tensor) -> Tensor:
    """float32 when that is exact (observers compute scales in float32), else float64."""
    single = t.float()
    return single if torch.equal(single.double(), t.double()) else t.double()


def _flatten(key: str, value: Any, out: dict[str, Tensor]) -> None:
    if isinstance(value, Tensor) and value.is_quantized:
        out[key] = value.int_repr()
        if value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out[key + ".q_scale"] = _compact_float(value.q_per_channel_scales())
            out[key + ".q_zero_point"] = value.q_per_channel_zero_points().int()
            out[key + ".q_axis"] = torch.tensor(value.q_per_channel_axis())
        else:
            out[key + ".q_scale"] = torch.tensor(value.q_scale(), dtype=torch.float64)
            out[key + ".q_zero_point"] = torch.tensor(value.q_zero_point())
            out[key + ".q_axis"] = torch.tensor(-1)
    elif isinstance(value, Tensor):
        out[key] = value
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _flatten(f"{key}.{i}", item, out)
    elif value is None or isinstance(value, torch.dtype):
        pass  # rebuilt from the template
    else:
        raise TypeError(f"cannot store state entry {key!r} of type {type(value).__name__}")


def to_plain(state: dict[str, Any]) -> dict[str, Tensor]:
    """Plain tensors for every entry of ``state`` (quantized tensors split into values and parameters)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        _flatten(key, value, out)
    return out


def _rebuild(key: str, template: Any, plain: dict[str, Tensor]) -> Any:
    if isinstance(template, Tensor) and template.is_quantized:
        values, scale, zero_point = plain[key], plain[key + ".q_scale"], plain[key + ".q_zero_point"]
        if values.dtype not in _QUANT_DTYPES:
            raise ValueError(f"{key}: quantized values must be int8/uint8/int32, got {values.dtype}")
        axis = int(plain[key + ".q_axis"])
        if axis >= 0:
            return torch._make_per_channel_quantized_tensor(values, scale.double(), zero_point.long(), axis)
        return torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero_point))
    if isinstance(template, Tensor):
        return plain[key]
    if isinstance(template, (tuple, list)):
        return type(template)(_rebuild(f"{key}.{i}", item, plain) for i, item in enumerate(template))
    return template  # None, dtype


def from_plain(template: dict[str, Any], plain: dict[str, Tensor]) -> dict[str, Any]:
    """The inverse of :func:`to_plain`, shaped like ``template`` (a state dict of the same structure)."""
    out = OrderedDict((key, _rebuild(key, value, plain)) for key, value in template.items())
    # quantized modules read their serialisation version from the metadata, as in a real state_dict()
    out._metadata = getattr(template, "_metadata", OrderedDict())  # type: ignore[attr-defined]
    return out
