"""Attention pooling with a learned query: SigLIP's "MAP" head (multihead attention pooling, Zhai et al. 2023)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import CrossAttention
from .mlp import Mlp

__all__ = ["AttentionPoolLatent"]


class AttentionPoolLatent(CrossAttention):
    """One learned query (``latent``) attends over the tokens, then a residual MLP: (B, N, D) -> (B, D).

    ``x = attn(latent, tokens); x = x + mlp(norm(x))``, as timm's ``AttentionPoolLatent`` with its parameter names
    (``latent``, ``q``, ``kv``, ``proj``, ``norm``, ``mlp``) and big_vision / HuggingFace SigLIP's
    ``MultiheadAttentionPoolingHead`` (the ``probe`` and a fused ``in_proj``, converted in :mod:`vitkit.weights`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        act_layer: str = "gelu",
        norm_eps: float = 1e-6,
        drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop, norm_eps=norm_eps)
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        nn.init.trunc_normal_(self.latent, std=dim**-0.5)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Tokens (B, N, D) -> pooled (B, D); ``key_padding_mask`` (B, N) True at tokens to ignore."""
        x = super().forward(self.latent.expand(x.shape[0], -1, -1), x, key_padding_mask=key_padding_mask)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]
