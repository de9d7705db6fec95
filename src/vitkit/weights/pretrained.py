"""``load_pretrained``: timm, HuggingFace or JAX ViT weights (and HuggingFace GPT-2 / BERT) into a vitkit model."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import resample_abs_pos_embed
from .convert import (
    check_state_dict,
    convert_hf_bert,
    convert_hf_gpt2,
    detect_layout,
    hf_to_vitkit,
    is_hf_gpt2,
    jax_to_vitkit,
    unwrap_state_dict,
)
from .convert_clip import clip_layout, convert_hf_clip, convert_hf_siglip, convert_open_clip
from .files import CheckpointError, read_checkpoint

__all__ = ["load_pretrained", "convert_state_dict", "source_grid", "recorded_grid"]

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


def _grid_of(img_size: Any, patch_size: Any) -> tuple[int, int] | None:
    if img_size is None or patch_size is None:
        return None
    (ih, iw), (ph, pw) = ((int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(x) for x in v)
                          for v in (img_size, patch_size))  # fmt: skip
    return (ih // ph, iw // pw)


def recorded_grid(config: dict[str, Any] | None) -> tuple[int, int] | None:
    """The patch grid a checkpoint's config records: a vitkit model config (``img_size``/``patch_size``, also
    inside an MAE's ``encoder_args``, a DETR/Segmenter's ``backbone_args`` or a CLIP's ``vision_args``) or a HuggingFace ``config.json``
    (``image_size``/``patch_size``)."""
    if not isinstance(config, dict):
        return None
    grid = _grid_of(config.get("img_size", config.get("image_size")), config.get("patch_size"))
    if grid is not None:
        return grid
    for key in ("encoder_args", "backbone_args", "vision_args"):
        grid = recorded_grid(config.get(key))
        if grid is not None:
            return grid
    return None


def _vitkit_file_grid(path: str | os.PathLike) -> tuple[int, int] | None:
    """The patch grid recorded in a vitkit safetensors file's metadata, if ``path`` is one."""
    from .files import read_metadata

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not path.endswith(".safetensors") or not os.path.isfile(path):
        return None
    try:
        meta = read_metadata(path)
    except CheckpointError:
        return None
    if meta.get("format") != "vitkit" or "config" not in meta:
        return None
    return recorded_grid(json.loads(meta["config"]))


def source_grid(
    num_patches: int, old_grid: tuple[int, int] | None, new_grid: tuple[int, int]
) -> tuple[int, int]:
    """The (rows, cols) grid of a checkpoint's position table with ``num_patches`` patch rows.

    ``old_grid`` (recorded in the checkpoint or given by the caller) wins and must hold ``num_patches``. Without
    one, a square count for a square model is read as a square grid (the convention of published ViT
    checkpoints); anything else is ambiguous (16 rows may be 4x4 or 2x8) and raises, naming the grids it could be
    and asking for ``old_grid``.
    """
    if old_grid is not None:
        old_grid = (int(old_grid[0]), int(old_grid[1]))
        if old_grid[0] * old_grid[1] != num_patches:
            raise CheckpointError(
                f"the checkpoint's position table has {num_patches} patch rows, not a {old_grid[0]}x{old_grid[1]} grid"
            )
        return old_grid
    side = math.isqrt(num_patches)
    if side * side == num_patches and new_grid[0] == new_grid[1]:
        return (side, side)
    candidates = [f"{h}x{num_patches // h}" for h in range(1, num_patches + 1) if num_patches % h == 0]
    raise CheckpointError(
        f"cannot tell the patch grid of the checkpoint's position table: {num_patches} patch rows could be "
        f"{', '.join(candidates)}, the checkpoint does not record its image and patch size, and this model's "
        f"grid is {new_grid[0]}x{new_grid[1]}; pass old_grid=(rows, cols) (create_model: pretrained_grid=)"
    )


def _adapt_pos_embed(
    model: nn.Module, state: dict[str, Tensor], old_grid: tuple[int, int] | None = None
) -> None:
    """Resample the checkpoint's learned position table to the model's patch grid (prefix-token aware)."""
    target = getattr(model, "pos_embed", None)
    if "pos_embed" not in state or not isinstance(target, nn.Parameter):
        return
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    src = state["pos_embed"]
    new_grid = tuple(model.patch_embed.grid_size)
    if src.shape == target.shape and (old_grid is None or tuple(old_grid) == new_grid):
        return
    if src.dim() != 3 or src.shape[-1] != target.shape[-1] or src.shape[1] < prefix:
        return  # width mismatch: reported by the key check
    grid = source_grid(src.shape[1] - prefix, old_grid, new_grid)
    if grid != new_grid:
        state["pos_embed"] = resample_abs_pos_embed(src, new_grid, grid, num_prefix_tokens=prefix)


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


def _load_gpt(model: nn.Module, raw: dict[str, Any], source: str) -> dict[str, list[str]]:
    """A GPT-2 (HuggingFace) or vitkit GPT state dict into a built GPT, every key checked by name and shape."""
    state = unwrap_state_dict(raw)
    layout = "HuggingFace GPT-2" if is_hf_gpt2(state) else "vitkit GPT"
    if is_hf_gpt2(state):
        state = convert_hf_gpt2(state, tied=model.head is None)
    check_state_dict(model, state, source=f"{source} ({layout} layout)")
    model.load_state_dict(state)
    return {"missing": [], "unexpected": []}


_CLIP_CONVERTERS = {
    "hf_clip": convert_hf_clip,
    "hf_siglip": convert_hf_siglip,
    "open_clip": convert_open_clip,
}
_CLIP_LAYOUTS = {"vitkit": "vitkit CLIP", "hf_clip": "HuggingFace CLIPModel", "hf_siglip": "HuggingFace SiglipModel",
                 "open_clip": "open_clip"}  # fmt: skip


def _load_clip(
    model: nn.Module, raw: dict[str, Any], source: str, old_grid: tuple[int, int] | None
) -> dict[str, list[str]]:
    """A HuggingFace CLIP / SigLIP, open_clip or vitkit state dict into a built CLIP, every key checked; the image
    tower's position table is resampled to its image size as for a ViT."""
    state = unwrap_state_dict(raw)
    layout = clip_layout(state)
    if layout in _CLIP_CONVERTERS:
        state = _CLIP_CONVERTERS[layout](state)
    if "visual.pos_embed" in state:
        visual = {"pos_embed": state["visual.pos_embed"]}
        _adapt_pos_embed(model.visual, visual, old_grid)
        state["visual.pos_embed"] = visual["pos_embed"]
    check_state_dict(model, state, source=f"{source} ({_CLIP_LAYOUTS[layout]} layout)")
    model.load_state_dict(state)
    return {"missing": [], "unexpected": []}


def _load_bert(model: nn.Module, raw: dict[str, Any], source: str, ignore_head: bool) -> dict[str, list[str]]:
    """A HuggingFace BERT (``BertModel``, ``BertForPreTraining`` / ``...MaskedLM``, ``...SequenceClassification``)
    or vitkit BERT state dict into a built :class:`~vitkit.models.bert.BertEncoder`: the pre-training heads
    (``cls.*``) are dropped, a classifier only kept for a model with one of its size; every other key checked."""
    state = {k: v for k, v in convert_hf_bert(raw).items() if not k.startswith("cls.")}
    own = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    if ignore_head or not own:
        state = {**{k: v for k, v in state.items() if not k.startswith("head.")}, **own}
    check_state_dict(model, state, source=f"{source} (BERT layout)")
    model.load_state_dict(state)
    return {"missing": [], "unexpected": []}


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike | dict[str, Any],
    ignore_head: bool = False,
    strict: bool = True,
    old_grid: tuple[int, int] | None = None,
) -> dict[str, list[str]]:
    """Load ViT weights from a timm / HuggingFace / JAX checkpoint into ``model``.

    ``path`` is a ``.safetensors``/``.pth``/``.bin``/``.npz`` file, a HuggingFace model directory
    (``config.json`` + weights) or an in-memory state dict. Keys are remapped, the position table is resampled
    to the model's image size, and any mismatch raises a CheckpointError naming the keys.
    ``ignore_head=True`` keeps the model's own (freshly initialised) classifier, for fine-tuning.
    ``old_grid=(rows, cols)`` is the patch grid the checkpoint's position table was trained on; by default it is
    read from the file (a vitkit file's ``img_size``/``patch_size``, a HuggingFace ``config.json``), else a square
    table is taken as square and any other raises (see :func:`source_grid`). Pass it for an in-memory state dict
    of a rectangular model.
    A :class:`~vitkit.models.gpt.GPT` takes a HuggingFace ``GPT2LMHeadModel`` / ``GPT2Model`` checkpoint (see
    :mod:`.hf_gpt2`) or vitkit's own names; a :class:`~vitkit.models.clip.CLIP` a HuggingFace ``CLIPModel`` /
    ``SiglipModel`` or open_clip state dict (:mod:`.convert_clip`) or vitkit's own; a
    :class:`~vitkit.models.bert.BertEncoder` a HuggingFace BERT one (``bert.`` / ``cls.`` heads of pre-training
    checkpoints dropped, see :func:`.convert.convert_hf_bert`).
    Returns {'missing': [...], 'unexpected': [...]} (both empty when ``strict``).
    """
    hf_config = None
    if isinstance(path, dict):
        raw, source = path, "state dict"
    else:
        raw, hf_config = read_checkpoint(path)
        source = str(path)
        if old_grid is None and getattr(model, "family", None) not in ("gpt", "bert"):
            if getattr(model, "family", None) == "clip" and hf_config:  # the image tower's part
                hf_config = hf_config.get("vision_config", hf_config)
            old_grid = _vitkit_file_grid(path) or recorded_grid(hf_config)
    if getattr(model, "family", None) == "gpt":
        return _load_gpt(model, raw, source)
    if getattr(model, "family", None) == "clip":
        return _load_clip(model, raw, source, old_grid)
    if getattr(model, "family", None) == "bert":
        return _load_bert(model, raw, source, ignore_head)
    state, layout = convert_state_dict(raw)
    if layout == "hf":
        _adopt_hf_norm_eps(model, hf_config)
    _adapt_pos_embed(model, state, old_grid)
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
