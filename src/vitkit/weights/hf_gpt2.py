"""HuggingFace GPT-2 folders (``GPT2LMHeadModel``, ``GPT2Model``: ``config.json`` + weights) -> vitkit's
:class:`~vitkit.models.gpt.GPT`, bit for bit. The key layout is converted by
:func:`vitkit.weights.convert.convert_hf_gpt2` (what :func:`~vitkit.weights.load_pretrained` uses for a GPT):

GPT-2 keeps its linear layers as ``Conv1D`` modules whose weight is stored (in, out): they are transposed into
``nn.Linear``'s (out, in). The fused ``c_attn`` projection is already ordered query, key, value, as vitkit's ``qkv``.
The tied ``lm_head.weight`` is the token embedding (dropped when equal, else kept as an untied head); the causal-mask
buffers of old checkpoints (``attn.bias``, ``attn.masked_bias``) are dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..registry import get_family
from .files import read_checkpoint
from .pretrained import load_pretrained

__all__ = ["gpt2_config_from_hf", "gpt2_from_huggingface"]

_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def gpt2_config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """A HuggingFace ``GPT2Config`` (as a dict) -> :class:`~vitkit.models.gpt.GPT` arguments.

    Raises ValueError for what vitkit's GPT does not compute (``scale_attn_by_inverse_layer_idx``,
    ``reorder_and_upcast_attn``, an unknown activation, a non-default MLP width)."""
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise ValueError(f"GPT-2 config sets {flag}, which vitkit's GPT does not implement")
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(f"unsupported GPT-2 activation_function {act!r} (known: {sorted(_ACTIVATIONS)})")
    dim = hf["n_embd"]  # the MLP width is int(dim * mlp_ratio): half a unit above n_inner survives rounding
    inner = hf.get("n_inner") or 4 * dim
    return {
        "vocab_size": hf["vocab_size"], "block_size": hf.get("n_positions", 1024), "embed_dim": dim,
        "depth": hf["n_layer"], "num_heads": hf["n_head"], "mlp_ratio": (inner + 0.5) / dim,
        "drop_rate": hf.get("resid_pdrop", 0.1), "attn_drop_rate": hf.get("attn_pdrop", 0.1),
        "tie_embeddings": hf.get("tie_word_embeddings", True), "act_layer": _ACTIVATIONS[act],
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
    }  # fmt: skip


def gpt2_from_huggingface(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """A :class:`~vitkit.models.gpt.GPT` from a local HuggingFace GPT-2 folder (``config.json`` + weights).

    ``overrides`` replace config values (e.g. ``drop_rate=0.0`` for fine-tuning without dropout)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a HuggingFace model folder (no config.json)")
    model = get_family("gpt")(
        **{**gpt2_config_from_hf(json.loads((path / "config.json").read_text())), **overrides}
    )
    raw, _ = read_checkpoint(path)
    load_pretrained(model, raw)
    return model
