"""HuggingFace CLIP and SigLIP folders (``CLIPModel`` / ``SiglipModel``: ``config.json`` + weights) -> vitkit's
:class:`~vitkit.models.clip.CLIP`, bit for bit. The keys are converted by :mod:`vitkit.weights.convert_clip` (what
:func:`~vitkit.weights.load_pretrained` uses for a CLIP, open_clip state dicts included).

The text tower pools where HuggingFace does: CLIP at the end-of-text token (the largest id for configs whose
``eos_token_id`` is the pre-2023 value 2, else the first ``eos_token_id``), SigLIP at the last position.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..registry import get_family
from .files import read_checkpoint
from .pretrained import load_pretrained

__all__ = ["clip_config_from_hf", "clip_from_huggingface"]

_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}  # fmt: skip
# transformers' defaults, for config.json files that leave them out
_DEFAULTS = {
    "clip": (
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
             patch_size=32, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0),
        dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
             max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0,
             eos_token_id=49407),
    ),
    "siglip": (
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
             patch_size=16, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
             attention_dropout=0.0, vision_use_head=True),
        dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
             max_position_embeddings=64, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0),
    ),
}  # fmt: skip


def _act(cfg: dict[str, Any], tower: str) -> str:
    act = cfg["hidden_act"]
    if act not in _ACTIVATIONS:
        raise ValueError(f"unsupported {tower} hidden_act {act!r} (known: {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[act]


def _shape(cfg: dict[str, Any], tower: str) -> dict[str, Any]:
    """Width, depth, heads, MLP ratio (exact widths survive ``int(dim * ratio)``), activation, eps, dropout."""
    dim = cfg["hidden_size"]
    return {
        "embed_dim": dim, "depth": cfg["num_hidden_layers"], "num_heads": cfg["num_attention_heads"],
        "mlp_ratio": (cfg["intermediate_size"] + 0.5) / dim, "act_layer": _act(cfg, tower),
        "norm_eps": cfg["layer_norm_eps"], "attn_drop_rate": cfg["attention_dropout"],
    }  # fmt: skip


def clip_config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """A HuggingFace ``CLIPConfig`` / ``SiglipConfig`` (as a dict) -> :class:`~vitkit.models.clip.CLIP` arguments.

    Raises:
        ValueError: another ``model_type``, an unknown activation, a SigLIP vision tower without its pooling head
            (``vision_use_head=False``: ``SiglipModel`` then has no image embedding).
    """
    kind = hf.get("model_type")
    if kind not in _DEFAULTS:
        raise ValueError(f"not a CLIP or SigLIP config: model_type={kind!r} (expected 'clip' or 'siglip')")
    vdef, tdef = _DEFAULTS[kind]
    v = {**vdef, **(hf.get("vision_config") or hf.get("vision_config_dict") or {})}
    t = {**tdef, **(hf.get("text_config") or hf.get("text_config_dict") or {})}
    vision = {**_shape(v, "vision"), "img_size": v["image_size"], "patch_size": v["patch_size"],
              "in_chans": v["num_channels"]}  # fmt: skip
    text = {**_shape(t, "text"), "vocab_size": t["vocab_size"], "block_size": t["max_position_embeddings"],
            "drop_rate": 0.0}  # fmt: skip
    if kind == "clip":
        eos = t["eos_token_id"]
        return {
            "vision": "vit_base_patch32_224", "vision_args": {**vision, "pre_norm": True},
            "text": "clip_text_base", "text_args": text, "embed_dim": hf.get("projection_dim", 512),
            "text_pool": "argmax" if eos == 2 else "eos", "eos_token_id": eos,
            "logit_scale_init": hf.get("logit_scale_init_value", math.log(1 / 0.07)),
        }  # fmt: skip
    if not v["vision_use_head"]:
        raise ValueError("SigLIP config sets vision_use_head=False: the image tower has no pooled embedding")
    return {
        "vision": "vit_base_patch16_224", "vision_args": {**vision, "class_token": False, "global_pool": "map"},
        "text": "siglip_text_base", "text_args": text, "embed_dim": t.get("projection_size") or t["hidden_size"],
        "vision_proj": False, "text_proj_bias": True, "text_pool": "last", "text_causal": False,
        "logit_scale_init": math.log(10), "logit_bias_init": -10.0,
    }  # fmt: skip


def clip_from_huggingface(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """A :class:`~vitkit.models.clip.CLIP` from a local HuggingFace ``CLIPModel`` or ``SiglipModel`` folder
    (``config.json`` + safetensors / bin weights), every key checked by name and shape.

    ``overrides`` replace :func:`clip_config_from_hf`'s arguments (e.g. ``lock_image=True`` for LiT).

    Raises:
        FileNotFoundError: no ``config.json``. ValueError: see :func:`clip_config_from_hf`; a SigLIP whose image width
        differs from its text projection. CheckpointError: weights that do not fit the config.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a HuggingFace model folder (no config.json)")
    config = clip_config_from_hf(json.loads((path / "config.json").read_text()))
    model = get_family("clip")(**{**config, **overrides})
    raw, _ = read_checkpoint(path)
    load_pretrained(model, raw)
    return model
