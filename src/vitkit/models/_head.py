"""A new classifier head made like the model it goes into (same device and floating-point dtype)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def factory_kwargs(module: nn.Module) -> dict[str, Any]:
    """``{'device', 'dtype'}`` of ``module``'s floating-point weights (after ``.to(bfloat16)``, ``.double()``,
    ``.cuda()``), for layers created after construction; empty for a module without any."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {}


def new_head(model: nn.Module, in_features: int, num_classes: int, std: float = 0.02) -> nn.Module:
    """``nn.Linear(in_features, num_classes)`` (truncated-normal ``std`` weights, zero bias) on ``model``'s device
    and in its dtype, or ``nn.Identity()`` for ``num_classes == 0``."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if num_classes == 0:
        return nn.Identity()
    head = nn.Linear(in_features, num_classes, **factory_kwargs(model))
    with torch.no_grad():
        nn.init.trunc_normal_(head.weight, std=std)
        nn.init.zeros_(head.bias)
    return head
