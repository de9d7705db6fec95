"""Transformer feed-forward block."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Mlp", "QuickGELU", "get_act_layer"]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the sigmoid approximation of GELU that OpenAI's CLIP was trained with (HF
    ``quick_gelu``, open_clip ``QuickGELU``); checkpoints trained with it need it, not the exact GELU."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


_ACTS = {
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
    "quick_gelu": lambda: QuickGELU(),
}


def get_act_layer(name: str) -> nn.Module:
    """Build an activation by name (kept as a string so configs stay JSON-serialisable)."""
    try:
        return _ACTS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTS)}") from None


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout. (B, L, in) -> (B, L, out)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: str = "gelu",
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = get_act_layer(act_layer)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
