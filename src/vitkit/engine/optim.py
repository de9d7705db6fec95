"""AdamW with weight decay only on >=2-D weights (optionally layer-wise lr decay), and warmup + cosine."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "layer_id",
    "param_groups_weight_decay",
    "param_groups_layer_decay",
    "build_optimizer",
    "warmup_cosine_schedule",
    "inverse_sqrt_schedule",
]


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed >=2-D weights; undecayed biases, norms and ``model.no_weight_decay()`` names."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def param_groups_layer_decay(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """Layer-wise lr decay (BEiT, MAE fine-tuning): a parameter at depth ``i`` of ``L + 1`` gets the lr times
    ``layer_decay ** (L + 1 - i)`` (embeddings the least, the head the full lr); weight decay as above."""
    depth = len(model.blocks) if hasattr(model, "blocks") else 0
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, decay = layer_id(name, depth), not (p.ndim <= 1 or name in skip)
        group = groups.setdefault(
            (lid, decay),
            {"params": [], "weight_decay": weight_decay if decay else 0.0,
             "lr_scale": layer_decay ** (depth + 1 - lid)},
        )  # fmt: skip
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas=(0.9, 0.999),
    fused: bool | None = None,
    layer_decay: float | None = None,
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; with ``layer_decay`` each group's lr is ``lr * lr_scale``."""
    if layer_decay is not None and layer_decay != 1.0:
        groups = param_groups_layer_decay(model, weight_decay, layer_decay)
        for group in groups:
            group["lr"] = lr * group["lr_scale"]
    else:
        groups = param_groups_weight_decay(model, weight_decay)
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("nothing to train: every parameter of the model is frozen")
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), **kwargs)


def inverse_sqrt_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """Vaswani et al. (2017): the lr factor rises linearly for ``warmup_steps`` then decays as 1/sqrt(step)
    (1 at the end of warmup, so ``lr`` is the peak)."""
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        step += 1
        return min(step / warmup, math.sqrt(warmup / step))

    return LambdaLR(optimizer, factor)


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """LR factor rises linearly over ``warmup_steps`` then follows a cosine down to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings and prefix tokens, i + 1 for ``blocks.i``, depth + 1 for the final norm and head."""
    if name.startswith(
        ("patch_embed.", "cls_token", "dist_token", "reg_token", "pos_embed", "norm_pre.", "embeddings.")
    ):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1
