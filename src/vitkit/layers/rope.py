"""Rotary position embedding (RoPE, Su et al. 2021, "RoFormer"), as GPT-NeoX / LLaMA apply it.

Each head's query and key vectors are rotated in 2-D planes by an angle proportional to the token's position, so
their dot product depends on the relative position only. The planes pair channel ``i`` with ``i + head_dim/2``
(the "rotate half" layout of GPT-NeoX and HuggingFace LLaMA).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RotaryEmbedding", "apply_rotary"]


class RotaryEmbedding(nn.Module):
    """Cosine and sine tables for positions ``0 .. max_len - 1``.

    Args:
        head_dim: channels per head (even).
        max_len: longest sequence.
        base: the frequency base ``theta`` (10,000 as in the paper).
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq  # max_len, head_dim/2
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions: (L,) or (B, L) integer positions -> (cos, sin), each (1 or B, 1, L, head_dim)."""
        if positions.dim() == 1:
            positions = positions[None]
        return self.cos[positions][:, None], self.sin[positions][:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, L, head_dim) queries or keys by the tables of :class:`RotaryEmbedding`."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
