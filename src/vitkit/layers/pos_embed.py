"""Position embeddings: fixed sinusoidal tables (1D and 2D) and resampling of learned 2D tables."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sincos_1d", "sincos_2d", "sincos_2d_points", "resample_abs_pos_embed"]


def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Vaswani et al. (2017) table (length, dim): PE[p, 2i] = sin(p / T^(2i/d)), PE[p, 2i+1] = cos(...)."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    inv_freq = temperature ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = pos * inv_freq  # length, dim/2
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe.float()


def sincos_2d(grid_size: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """MAE-style 2D table (H*W, dim): half the channels encode the row, half the column, each as [sin, cos]."""
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding dim must be divisible by 4, got {dim}")
    h, w = grid_size
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    return sincos_2d_points(ys.reshape(-1), xs.reshape(-1), dim, temperature).float()


def sincos_2d_points(ys: Tensor, xs: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """The :func:`sincos_2d` code of (possibly fractional, differentiable) grid coordinates: (..., dim)."""
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=ys.dtype, device=ys.device) / quarter)
    out_y, out_x = ys[..., None] * omega, xs[..., None] * omega
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=-1)


def resample_abs_pos_embed(
    posemb: Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resize a learned (1, prefix + H*W, D) position table to a new (H', W') grid; prefix rows are kept as is.

    ``old_size`` is the table's (H, W); without it the table must be square. A rectangular table always needs
    it: its patch count alone does not tell 2x8 from 4x4."""
    num_pos = posemb.shape[1]
    n = num_pos - num_prefix_tokens
    if old_size is not None:
        old_size = (int(old_size[0]), int(old_size[1]))
        if old_size[0] * old_size[1] != n:
            raise ValueError(
                f"a position table with {n} patch rows is not a {old_size[0]}x{old_size[1]} grid"
            )
    if n == new_size[0] * new_size[1] and (old_size is None or old_size == tuple(new_size)):
        return posemb
    if old_size is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"cannot infer the grid of a position table with {n} patch rows (not square); pass old_size"
            )
        old_size = (side, side)
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim, dtype = posemb.shape[-1], posemb.dtype
    grid = grid.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)  # 1, D, H, W
    grid = F.interpolate(grid, size=tuple(new_size), mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)
