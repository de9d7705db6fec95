"""Rebuilding a model from a file that :func:`vitkit.weights.files.save` wrote: config, structural edits, weights.

This sits above the model registry (it looks the family up) and above :mod:`vitkit.compress.replay` (it replays
factorised / pruned / quantized layers); the file formats themselves are in :mod:`vitkit.weights.files`.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compress.replay import apply_edits
from ..registry import get_family
from .convert import check_state_dict, unwrap_state_dict
from .files import CheckpointError, _read_safetensors, read_metadata, strip_wrapper_prefixes
from .qstate import from_plain, is_plain, to_plain

__all__ = ["load"]


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by :func:`vitkit.save`, weights included, with no other input."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    meta = read_metadata(path)
    if meta.get("format") != "vitkit":
        raise CheckpointError(
            f"{path} has no vitkit config in its metadata; build the model with vitkit.create_model(...) and "
            "use vitkit.load_pretrained(model, path)"
        )
    cls, config = _family_and_config(path, meta)
    edits = json.loads(meta["structure_edits"]) if meta.get("structure_edits") else None
    _check_header_shapes(
        path, cls, config, edits
    )  # before anything is allocated: a file's claims cost nothing
    model = cls(**config)
    if meta.get("model_name"):
        model.model_name = meta["model_name"]
    if meta.get("data_config"):
        model.data_config = json.loads(meta["data_config"])
    if edits:
        apply_edits(model, edits)

    state = unwrap_state_dict(_read_safetensors(path))  # files written by hand from a wrapped model
    template = model.state_dict()
    if is_plain(template):
        check_state_dict(model, state, source=str(path))
    else:  # int8 layers (vitkit.compress.quantize_int8): compare and load their plain form
        check_state_dict(model, state, source=str(path), expected=to_plain(template))
        state = from_plain(template, state)
        if torch.device(device).type != "cpu":
            raise ValueError(
                f"{path} is an int8 model: PyTorch's quantized kernels run on the CPU only (device='cpu')"
            )
    model.load_state_dict(state)
    return model.to(device)


def _family_and_config(path: Path, meta: dict[str, str]) -> tuple[type, dict[str, Any]]:
    """The model class and constructor arguments a vitkit file's metadata names; a CheckpointError names the
    file and what is wrong (no family, an unknown one, a config that is not a mapping of its arguments)."""
    if not meta.get("family"):
        raise CheckpointError(
            f"{path}: its metadata names no model family (key 'family'): not a vitkit model file"
        )
    try:
        cls = get_family(meta["family"])
        config = json.loads(meta.get("config") or "null")
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: its metadata config is a {type(config).__name__}, not a mapping of arguments"
        )
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(config) - set(params))
        if unknown:
            raise CheckpointError(f"{path}: its metadata config has arguments the {meta['family']} family does not "
                                  f"take: {', '.join(unknown)}")  # fmt: skip
    return cls, config


def _check_header_shapes(path: Path, cls: type, config: dict[str, Any], edits: list | None = None) -> None:
    """Build the model on the meta device (no memory) and compare its tensor shapes with the file's header; a
    file claiming a size its tensors do not have is refused before the real model is built."""
    from safetensors import safe_open

    try:
        with torch.device("meta"):
            model = cls(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its metadata config does not build a {cls.__name__}: {e}") from None
    except Exception:  # a constructor that computes on its tensors cannot run on meta: the full check follows
        return
    try:
        with torch.device("meta"):
            if edits:  # pruned / factorised / quantized structure, as load() rebuilds it
                apply_edits(model, edits)
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if not is_plain(model.state_dict()):
            return  # int8 layers pack their weights: the full check compares their plain form
    except Exception:  # an edit that computes on the weights cannot run on meta: the full check follows
        return
    with safe_open(str(path), framework="pt") as f:
        found = {strip_wrapper_prefixes(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    wrong = [f"{k}: {found[k]} in the file, {shape} from its config" for k, shape in expected.items()
             if k in found and found[k] != shape]  # fmt: skip
    if wrong:
        raise CheckpointError(f"{path} does not fit the model its metadata describes: " + "; ".join(wrong[:5])
                              + (f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""))  # fmt: skip
