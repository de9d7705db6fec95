"""Transformer blocks: encoder (pre- or post-norm) and decoder with cross-attention."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import Attention, CrossAttention
from .drop import DropPath, LayerScale
from .mlp import Mlp

__all__ = ["EncoderBlock", "DecoderBlock", "Block"]


def _scale(dim: int, init_values: float | None) -> nn.Module:
    return LayerScale(dim, init_values) if init_values else nn.Identity()


def _drop(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class EncoderBlock(nn.Module):
    """Self-attention + MLP, each a residual branch.

    Pre-norm (``norm_first=True``, ViT):  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    Post-norm (original Transformer, BERT): x = norm1(x + attn(x)); x = norm2(x + mlp(x))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: str = "gelu",
        norm_eps: float = 1e-6,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop, proj_drop=proj_drop,
            norm_eps=norm_eps,
        )  # fmt: skip
        self.ls1 = _scale(dim, init_values)
        self.drop_path1 = _drop(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = _scale(dim, init_values)
        self.drop_path2 = _drop(drop_path)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: dict[str, Tensor] | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        at: Tensor | None = None,
    ) -> Tensor:
        """x: (B, L, C) -> (B, L, C). ``is_causal``, ``cache`` and ``rope`` as in :class:`Attention` (a decoder-only
        model such as GPT is a stack of causal encoder blocks).

        ``at`` (B,) long: the block's output at that one position of each row only, (B, 1, C), equal to
        ``forward(x, ...)[rows, at]``: keys and values still come from every position, the query, projection and
        MLP work is done for one token. A model pooled at one token (CLIP's class or end-of-text token) runs its
        last block this way."""

        def attn(h: Tensor) -> Tensor:
            return self.attn(h, attn_mask, key_padding_mask, is_causal, cache=cache, rope=rope, at=at)

        # the residual stream: every position, or only the one at ``at`` (attention still reads all of x)
        y = x if at is None else x[torch.arange(x.shape[0], device=x.device), at][:, None]
        if self.norm_first:
            y = y + self.drop_path1(self.ls1(attn(self.norm1(x))))
            return y + self.drop_path2(self.ls2(self.mlp(self.norm2(y))))
        y = self.norm1(y + self.drop_path1(self.ls1(attn(x))))
        return self.norm2(y + self.drop_path2(self.ls2(self.mlp(y))))


Block = EncoderBlock


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, then MLP; pre- or post-norm."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: str = "gelu",
        norm_eps: float = 1e-6,
        norm_first: bool = True,
        memory_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        attn_kw = dict(attn_drop=attn_drop, proj_drop=proj_drop, norm_eps=norm_eps)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, **attn_kw)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = CrossAttention(dim, num_heads, kv_dim=memory_dim, qkv_bias=qkv_bias, **attn_kw)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path = _drop(drop_path)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        is_causal: bool = True,
        cache: dict[str, dict[str, Tensor]] | None = None,
    ) -> Tensor:
        """x: (B, Lt, C) target tokens, memory: (B, Ls, C_mem) -> (B, Lt, C).

        ``cache`` (incremental decoding, ``{}`` on the first call): keeps this block's self-attention keys/values
        and the projected memory, so each later call passes only the new target positions.
        """
        dp = self.drop_path
        self_cache = cross_cache = None
        if cache is not None:
            self_cache, cross_cache = cache.setdefault("self", {}), cache.setdefault("cross", {})

        def attn(h: Tensor) -> Tensor:
            return self.self_attn(h, None, self_key_padding_mask, is_causal, cache=self_cache)

        def cross(h: Tensor) -> Tensor:
            return self.cross_attn(h, memory, key_padding_mask=memory_key_padding_mask, cache=cross_cache)

        if self.norm_first:
            x = x + dp(attn(self.norm1(x)))
            x = x + dp(cross(self.norm2(x)))
            return x + dp(self.mlp(self.norm3(x)))
        x = self.norm1(x + dp(attn(x)))
        x = self.norm2(x + dp(cross(x)))
        return self.norm3(x + dp(self.mlp(x)))
