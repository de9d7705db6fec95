"""Rebuilding a model from a file that :func:`vitkit.weights.files.save` wrote: config, structural edits, weights.

This sits above the model registry (it looks the family up) and above :mod:`vitkit.compress.replay` (it replays
factorised / pruned / quantized layers); the file formats themselves are in :mod:`vitkit.weights.files`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..compress.replay import apply_edits
from ..registry import get_family
from .convert import check_state_dict, unwrap_state_dict
from .files import CheckpointError, _read_safetensors, read_metadata
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
    cls = get_family(meta["family"])
    model = cls(**json.loads(meta["config"]))
    if meta.get("model_name"):
        model.model_name = meta["model_name"]
    if meta.get("data_config"):
        model.data_config = json.loads(meta["data_config"])
    if meta.get("structure_edits"):
        apply_edits(model, json.loads(meta["structure_edits"]))

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
