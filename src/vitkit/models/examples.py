"""Example inputs for any vitkit model, built from its config: what ``vitkit summary`` and export trace with."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["example_inputs", "image_input_shape"]


def image_input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """(channels, height, width) an image model expects (an MAE's encoder's, a DETR's backbone's), else None."""
    for m in (model, getattr(model, "encoder", None), getattr(model, "backbone", None)):
        config = getattr(m, "config", None) or {}
        if config.get("img_size") is not None:
            h, w = (
                config["img_size"]
                if isinstance(config["img_size"], (list, tuple))
                else (config["img_size"],) * 2
            )
            return int(config.get("in_chans", 3)), int(h), int(w)
    return None


def example_inputs(model: nn.Module, batch: int = 1, length: int = 16) -> tuple[Tensor, ...]:
    """Positional arguments for one forward pass: an image batch (B, C, H, W) of zeros, token ids (B, ``length``)
    for a text encoder, or (source, target) ids for an encoder-decoder.

    Raises ValueError for a model whose config names neither an image size nor a vocabulary.
    """
    shape = image_input_shape(model)
    if shape is not None:
        return (torch.zeros(batch, *shape),)
    config = getattr(model, "config", None) or {}
    if "vocab_size" in config:
        low = int(config.get("pad_id", config.get("pad_token_id", 0))) + 1
        ids = torch.randint(
            low, int(config["vocab_size"]), (batch, length), generator=torch.Generator().manual_seed(0)
        )
        return (ids, ids) if "decoder_depth" in config and "encoder_depth" in config else (ids,)
    raise ValueError(
        f"{type(model).__name__} records neither an image size nor a vocabulary: no example input"
    )
