"""Key layouts of dual image-text encoders -> :class:`~vitkit.models.clip.CLIP` names.

- HuggingFace ``CLIPModel`` and ``SiglipModel`` (``vision_model.*``, ``text_model.*``): separate q/k/v projections
  fused into ``qkv``; the class embedding and position tables reshaped to the ViT's; SigLIP's attention-pooling head
  (``probe`` and ``nn.MultiheadAttention``'s fused ``in_proj``) split into the query and key/value projections of
  :class:`~vitkit.layers.AttentionPoolLatent`; ``text_model.head`` (SigLIP) is the text projection.
- open_clip (``visual.conv1`` ... ``visual.proj``, ``token_embedding``, ``transformer.resblocks``, ``ln_final``,
  ``text_projection``; a ``text.`` prefix for its custom-text models; a timm image tower as ``visual.trunk.*``, whose
  names are already vitkit's): ``nn.MultiheadAttention``'s ``in_proj`` is ``qkv`` as it is, the ``x @ proj``
  matrices are transposed into linear weights.

Unknown keys are kept as they are, for the key check to name.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from .convert import unwrap_state_dict
from .files import CheckpointError

__all__ = ["clip_layout", "convert_hf_clip", "convert_hf_siglip", "convert_open_clip"]


def clip_layout(state: dict[str, Tensor]) -> str:
    """``"vitkit"``, ``"hf_clip"``, ``"hf_siglip"`` or ``"open_clip"``; a CheckpointError names a few keys of
    anything else."""
    keys = list(state)
    if any(k.startswith("visual.patch_embed.") for k in keys):
        return "vitkit"
    if any(k.startswith("vision_model.") for k in keys) and any(k.startswith("text_model.") for k in keys):
        return "hf_siglip" if "text_model.head.weight" in state else "hf_clip"
    if "visual.conv1.weight" in state or any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip"
    sample = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    raise CheckpointError(
        f"not a CLIP / SigLIP checkpoint in any known layout (vitkit, HuggingFace CLIPModel / SiglipModel, "
        f"open_clip): {len(keys)} keys ({sample})"
    )


# ---------------------------------------------------------------- HuggingFace
_HF_BLOCK = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_TOP = {
    "text_model.embeddings.token_embedding.weight": "text.token_embed.weight",
    "text_model.embeddings.position_embedding.weight": "text.pos_embed.weight",
    "text_model.final_layer_norm.": "text.norm.",
    "text_model.head.": "text_proj.",  # SigLIP's text head
    "text_projection.weight": "text_proj.weight",
    "visual_projection.weight": "visual_proj.weight",
    "vision_model.embeddings.patch_embedding.": "visual.patch_embed.proj.",
    "vision_model.pre_layrnorm.": "visual.norm_pre.",
    "vision_model.post_layernorm.": "visual.norm.",
    "vision_model.head.attention.out_proj.": "visual.attn_pool.proj.",
    "vision_model.head.layernorm.": "visual.attn_pool.norm.",
    "vision_model.head.mlp.": "visual.attn_pool.mlp.",
}
_TOWERS = {"vision_model": "visual", "text_model": "text"}


def _hf_special(key: str, value: Tensor, out: dict[str, Tensor]) -> bool:
    """Tensors that change shape or split; True when ``key`` was one."""
    if key in ("logit_scale", "logit_bias"):
        out[key] = value.reshape(())  # SigLIP stores (1,)
    elif key == "vision_model.embeddings.class_embedding":
        out["visual.cls_token"] = value.reshape(1, 1, -1)
    elif key == "vision_model.embeddings.position_embedding.weight":
        out["visual.pos_embed"] = value.unsqueeze(0)
    elif key == "vision_model.head.probe":
        out["visual.attn_pool.latent"] = value
    elif key.startswith("vision_model.head.attention.in_proj_"):
        kind = "weight" if key.endswith("weight") else "bias"
        dim = value.shape[0] // 3
        out[f"visual.attn_pool.q.{kind}"] = value[:dim]
        out[f"visual.attn_pool.kv.{kind}"] = value[dim:]
    else:
        return False
    return True


def _convert_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    state = unwrap_state_dict(state)
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids") or _hf_special(key, value, out):
            continue
        m = re.match(r"(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m:
            tower, i, name, kind = _TOWERS[m.group(1)], int(m.group(2)), m.group(3), m.group(4)
            qm = re.fullmatch(r"self_attn\.(q|k|v)_proj", name)
            if qm:
                qkv.setdefault((tower, i, kind), {})[qm.group(1)] = value
            else:
                out[f"{tower}.blocks.{i}.{_HF_BLOCK.get(name, name)}.{kind}"] = value
            continue
        old = next((o for o in _HF_TOP if key == o or (o.endswith(".") and key.startswith(o))), None)
        out[key if old is None else _HF_TOP[old] + key[len(old) :]] = value
    for (tower, i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{tower} layer {i} has only {sorted(parts)} attention {kind}s, not q/k/v")
        out[f"{tower}.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def convert_hf_clip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HuggingFace ``CLIPModel`` state dict -> :class:`~vitkit.models.clip.CLIP` names (see the module docstring).

    Raises:
        CheckpointError: a SigLIP state dict (use :func:`convert_hf_siglip`) or a layer without all of q/k/v."""
    if "text_model.head.weight" in state:
        raise CheckpointError("this is a HuggingFace SiglipModel state dict: use convert_hf_siglip")
    return _convert_hf(state)


def convert_hf_siglip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HuggingFace ``SiglipModel`` state dict -> :class:`~vitkit.models.clip.CLIP` names: the vision tower's
    attention-pooling head becomes ``visual.attn_pool``, the text head ``text_proj``, ``logit_scale`` and
    ``logit_bias`` become scalars.

    Raises:
        CheckpointError: a state dict without SigLIP's text head (a ``CLIPModel``: use :func:`convert_hf_clip`)."""
    if "text_model.head.weight" not in state:
        raise CheckpointError("no text_model.head: not a HuggingFace SiglipModel state dict (a CLIPModel?)")
    return _convert_hf(state)


# ---------------------------------------------------------------- open_clip
_OC_BLOCK = {
    "ln_1.": "norm1.",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.": "attn.proj.",
    "ln_2.": "norm2.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
    "ls_1.": "ls1.",
    "ls_2.": "ls2.",
}
_OC_TOP = {
    "visual.conv1.": "visual.patch_embed.proj.",
    "visual.ln_pre.": "visual.norm_pre.",
    "visual.ln_post.": "visual.norm.",
    "visual.trunk.": "visual.",  # a timm image tower: timm's names are vitkit's
    "visual.head.proj.": "visual_proj.",
    "token_embedding.": "text.token_embed.",
    "ln_final.": "text.norm.",
    "text_projection.": "text_proj.",  # a Linear text projection (proj_bias=True)
}


def _oc_special(key: str, value: Tensor, out: dict[str, Tensor]) -> bool:
    if key in ("attn_mask", "logit_scale", "logit_bias"):
        if key != "attn_mask":  # the causal-mask buffer is dropped
            out[key] = value.reshape(())
    elif key == "visual.class_embedding":
        out["visual.cls_token"] = value.reshape(1, 1, -1)
    elif key == "visual.positional_embedding":
        out["visual.pos_embed"] = value.unsqueeze(0)
    elif key == "positional_embedding":
        out["text.pos_embed.weight"] = value
    elif key in ("visual.proj", "text_projection"):  # used as x @ proj: (width, embed_dim)
        out["visual_proj.weight" if key == "visual.proj" else "text_proj.weight"] = value.t().contiguous()
    else:
        return False
    return True


def convert_open_clip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` state dict -> :class:`~vitkit.models.clip.CLIP` names (see the
    module docstring). Which pooling, activation and causal mask the model uses is not in the state dict: the vitkit
    model's config decides (open_clip's OpenAI models: ``quick_gelu``; its SigLIP text: exact GELU, no causal mask,
    ``text_pool="last"``)."""
    state = unwrap_state_dict(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("text.")  # CustomTextCLIP keeps its text tower under text.
        if _oc_special(key, value, out):
            continue
        m = re.match(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$", key)
        if m:
            rest = m.group(3)
            old = next((o for o in _OC_BLOCK if rest.startswith(o)), None)
            rest = rest if old is None else _OC_BLOCK[old] + rest[len(old) :]
            out[f"{'visual' if m.group(1) else 'text'}.blocks.{m.group(2)}.{rest}"] = value
            continue
        old = next((o for o in _OC_TOP if key.startswith(o)), None)
        out[key if old is None else _OC_TOP[old] + key[len(old) :]] = value
    return out
