"""The two towers of a contrastive run: the CLIP's arguments from the config and tokenizer, and each tower's
starting weights (``init_image``, ``init_text``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["model_args_for", "load_tower_weights", "text_context"]


def text_context(model: nn.Module) -> int:
    """The longest token sequence the text tower takes (a GPT's ``block_size``, a BERT's position table)."""
    text = model.text
    if hasattr(text, "block_size"):
        return int(text.block_size)
    return int(text.embeddings.position.num_embeddings)


def _hf_folder(path: str | None) -> Path | None:
    return Path(path) if path and (Path(path) / "config.json").is_file() else None


def model_args_for(cfg, in_chans: int, tokenizer) -> dict[str, Any]:
    """``create_model`` arguments for ``cfg.model`` (a ``clip`` family name) under ``cfg.model_args``.

    The towers' argument dicts are merged into the registry's, not replaced; the image tower takes ``in_chans``
    channels and ``cfg.drop_path``; a text tower trained from scratch gets the tokenizer's vocabulary, a GPT-shaped
    one pooled at the tokenizer's ``[SEP]`` (its end of text); ``init_text`` naming a HuggingFace BERT folder sets
    the BERT tower's shape from its ``config.json``; ``lock`` sets LiT; SigLIP's loss starts from SigLIP's
    temperature (10) and bias (-10) unless the arguments say otherwise.

    Raises:
        ValueError: ``cfg.model`` is not a dual encoder.
    """
    from ..registry import model_config

    base = model_config(cfg.model)
    if base["family"] != "clip":
        raise ValueError(f"the contrastive task trains a dual encoder (e.g. clip_vit_tiny_patch4_32), got "
                         f"{cfg.model!r} (family {base['family']})")  # fmt: skip
    args = dict(cfg.model_args)
    vision = {**(base.get("vision_args") or {}), **(args.get("vision_args") or {}), "in_chans": in_chans}
    vision.setdefault("drop_path_rate", cfg.drop_path)
    text_name = args.get("text", base.get("text", "clip_text_base"))
    text = {**(base.get("text_args") or {}), **(args.get("text_args") or {})}
    gpt = model_config(text_name)["family"] == "gpt"
    hf = _hf_folder(cfg.init_text)
    if hf is not None and not gpt:
        from ..weights.hf_bert import bert_config_from_hf

        text.update(bert_config_from_hf(json.loads((hf / "config.json").read_text())))
    elif not cfg.init_text:
        text["vocab_size"] = tokenizer.vocab_size
        if not gpt:  # a GPT tower is told its padding by the attention mask
            text["pad_token_id"] = tokenizer.pad_id
    if gpt and "text_pool" not in args:
        args.update(text_pool="eos", eos_token_id=tokenizer.sep_id)
    if cfg.lock is not None:
        args.update(lock_image=cfg.lock == "image", lock_text=cfg.lock == "text")
    if cfg.contrastive_loss == "siglip":
        import math

        args.setdefault("logit_scale_init", math.log(10))
        args.setdefault("logit_bias_init", -10.0)
    return {**args, "vision_args": vision, "text_args": text}


def _vitkit_tower(path: Path, tower: str) -> nn.Module:
    """The model in a vitkit file, or its ``tower`` (``visual`` / ``text``) when it is a dual encoder."""
    from ..weights.rebuild import load

    model = load(path)
    return getattr(model, tower) if getattr(model, "family", "") == "clip" else model


def _load_text(model: nn.Module, source: str) -> None:
    from ..weights.convert import check_state_dict
    from .finetune import resolve_source

    hf = _hf_folder(source)
    if hf is not None:
        from ..weights.hf_bert import bert_from_huggingface

        state = bert_from_huggingface(hf).state_dict()
    else:
        state = _vitkit_tower(resolve_source(source), "text").state_dict()
    own = model.text.state_dict()
    state = {k: v for k, v in state.items() if k in own}  # a text classifier's head is not part of the tower
    check_state_dict(model.text, state, source=f"init_text {source}")
    model.text.load_state_dict(state)


def _load_image(model: nn.Module, source: str) -> None:
    from ..weights.files import read_metadata
    from ..weights.pretrained import load_pretrained
    from .finetune import resolve_source

    path = resolve_source(source)
    try:
        clip = read_metadata(path).get("family") == "clip"
    except (OSError, ValueError):
        clip = False  # not a safetensors file: a timm / JAX checkpoint
    if clip:
        load_pretrained(model.visual, _vitkit_tower(path, "visual").state_dict())
    else:
        load_pretrained(model.visual, path, ignore_head=True)


def load_tower_weights(model: nn.Module, init_image: str | None, init_text: str | None) -> None:
    """Load ``init_image`` into the image tower (a vitkit run / model file, a contrastive run's image tower, or a
    timm / HF / JAX ViT checkpoint; classifier heads dropped) and ``init_text`` into the text tower (a
    HuggingFace BERT / MiniLM folder, a vitkit text run or model file, or a contrastive run's text tower).

    Raises:
        FileNotFoundError: a path that does not exist.
        vitkit.CheckpointError: weights that do not fit the tower, naming the keys and shapes.
    """
    if init_image:
        _load_image(model, init_image)
    if init_text:
        _load_text(model, init_text)
