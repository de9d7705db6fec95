"""``load_pretrained``: timm, HuggingFace or JAX ViT weights into a vitkit model."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import resample_abs_pos_embed
from .convert import check_state_dict, detect_layout, hf_to_vitkit, jax_to_vitkit, unwrap_state_dict
from .files import CheckpointError, read_checkpoint

__all__ = ["load_pretrained", "convert_state_dict"]

log = logging.getLogger(__name__)


def convert_state_dict(state: dict[str, Any]) -> tuple[dict[str, Tensor], str]:
    """Any supported ViT checkpoint dict -> (vitkit-named tensors, detected layout)."""
    state = unwrap_state_dict(state)
    if not state:
        raise CheckpointError("the checkpoint holds no tensors")
    layout = detect_layout(state)
    if layout == "hf":
        state = hf_to_vitkit(state)
    elif layout == "jax":
        state = jax_to_vitkit(state)
    return state, layout


def _adapt_pos_embed(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Resample the checkpoint's learned position table to the model's patch grid (prefix-token aware)."""
    target = getattr(model, "pos_embed", None)
    if (
        "pos_embed" not in state
        or not isinstance(target, nn.Parameter)
        or state["pos_embed"].shape == target.shape
    ):
        return
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    src = state["pos_embed"]
    if src.shape[-1] != target.shape[-1]:
        return  # width mismatch: reported by the key check
    state["pos_embed"] = resample_abs_pos_embed(src, model.patch_embed.grid_size, num_prefix_tokens=prefix)


def _adopt_hf_norm_eps(model: nn.Module, hf_config: dict[str, Any] | None) -> None:
    """HF ViT LayerNorms use ``layer_norm_eps`` (1e-12 by default); make the model compute the same."""
    if not hf_config or "layer_norm_eps" not in hf_config:
        return
    eps = float(hf_config["layer_norm_eps"])
    if getattr(model, "config", {}).get("norm_eps") == eps:
        return
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
    if hasattr(model, "config"):
        model.config["norm_eps"] = eps
    log.info("using the checkpoint's layer_norm_eps=%g", eps)


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike | dict[str, Any],
    ignore_head: bool = False,
    strict: bool = True,
) -> dict[str, list[str]]:
    """Load ViT weights from a timm / HuggingFace / JAX checkpoint into ``model``.

    ``path`` is a ``.safetensors``/``.pth``/``.bin``/``.npz`` file, a HuggingFace model directory
    (``config.json`` + weights) or an in-memory state dict. Keys are remapped, the position table is resampled
    to the model's image size, and any mismatch raises a CheckpointError naming the keys.
    ``ignore_head=True`` keeps the model's own (freshly initialised) classifier, for fine-tuning.
    Returns {'missing': [...], 'unexpected': [...]} (both empty when ``strict``).
    """
    hf_config = None
    if isinstance(path, dict):
        raw, source = path, "state dict"
    else:
        raw, hf_config = read_checkpoint(path)
        source = str(path)
    state, layout = convert_state_dict(raw)
    if layout == "hf":
        _adopt_hf_norm_eps(model, hf_config)
    _adapt_pos_embed(model, state)
    if ignore_head:
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
        own = {k: v for k, v in model.state_dict().items() if k.startswith(("head.", "head_dist."))}
        state.update(own)
    if strict:
        check_state_dict(model, state, source=f"{source} ({layout} layout)")
    expected = model.state_dict()
    usable = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    with torch.no_grad():
        result = model.load_state_dict(usable, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": [k for k in state if k not in expected]}
