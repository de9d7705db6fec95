"""Multi-head attention: self-attention with a fused qkv projection, and cross-attention.

Mask conventions (the same as PyTorch's own):
- ``attn_mask``: boolean, ``True`` = "may attend" (as in ``F.scaled_dot_product_attention``), or a float
  tensor added to the attention scores. Shape broadcastable to ``(B, heads, L_q, L_k)``.
- ``key_padding_mask``: boolean ``(B, L_k)``, ``True`` marks padding keys to ignore (as in ``nn.MultiheadAttention``).
- ``is_causal``: query ``i`` may only look at keys ``<= i``.

A query that every mask form together leaves no key to attend to (a row of ``False`` / ``-inf``) gets an
output of zeros and attention weights of zeros, on both paths and without NaN (what PyTorch's SDPA returns for
such rows; a row of large finite negatives, e.g. ``finfo.min``, is an ordinary row and averages the values).

The fused path calls ``F.scaled_dot_product_attention``; the eager path computes softmax(QK^T/sqrt(d))V by hand
and can return the attention weights. Both give the same output (to float tolerance) for every mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rope import apply_rotary

__all__ = ["Attention", "CrossAttention", "scaled_dot_product", "merge_masks", "may_inspect_values"]


def may_inspect_values() -> bool:
    """Whether a forward may branch on tensor values (drop a padding mask that masks nothing, cut a batch short):
    not while ``torch.compile`` / ``torch.export`` capture a graph or ``torch.jit.trace`` records one, which would
    keep the branch taken with the example input for every later input."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing())


def merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    is_causal: bool,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """Combine the three mask forms into one additive float mask broadcastable to (B, H, Lq, Lk), or None.

    Disallowed positions hold ``-inf`` (not a large finite negative, which would make a fully masked row an
    average of the values instead of the zeros SDPA gives)."""
    if attn_mask is None and key_padding_mask is None and not is_causal:
        return None
    neg = float("-inf")
    mask = torch.zeros(1, 1, q_len, k_len, dtype=dtype, device=device)
    if is_causal:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        mask = mask.masked_fill(~allowed, neg)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = mask.masked_fill(~attn_mask, neg)
        else:
            mask = mask + attn_mask.to(dtype)
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(
                f"key_padding_mask must be boolean (True = padding), got {key_padding_mask.dtype}"
            )
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != k_len:
            raise ValueError(
                f"key_padding_mask must have shape (batch, {k_len}), got {tuple(key_padding_mask.shape)}"
            )
        mask = mask.masked_fill(key_padding_mask[:, None, None, :], neg)
    return mask


def scaled_dot_product(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    fused: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Attention over (B, H, L, head_dim) tensors. Returns (output, weights or None).

    ``need_weights=True`` forces the eager path, whose weights have shape (B, H, Lq, Lk) and sum to 1 over keys.
    """
    if is_causal and q.shape[-2] == 1:
        is_causal = False  # one query at the end of the keys (cached decoding) may see all of them
    aligned = q.shape[-2] == k.shape[-2]  # SDPA's own causal mask is top-left aligned: only for equal lengths
    if fused and not need_weights:
        if attn_mask is None and key_padding_mask is None and (aligned or not is_causal):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)
            return out, None  # no mask, or an aligned causal one: every query sees at least one key
        if key_padding_mask is None and not is_causal:
            mask = attn_mask  # as given (boolean or additive)
        else:
            mask = merge_masks(
                attn_mask, key_padding_mask, is_causal, q.shape[-2], k.shape[-2], q.dtype, q.device
            )
        dead = _fully_masked_rows(mask)
        # open the dead rows (so no backend divides by zero), then zero their output, as the eager path does
        safe = mask | dead if mask.dtype == torch.bool else mask.masked_fill(dead, 0.0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, dropout_p=dropout_p)
        return out.masked_fill(dead, 0.0), None

    scale = q.shape[-1] ** -0.5
    scores = (q * scale) @ k.transpose(-2, -1)  # B, H, Lq, Lk
    mask = merge_masks(
        attn_mask, key_padding_mask, is_causal, q.shape[-2], k.shape[-2], scores.dtype, q.device
    )
    dead = None
    if mask is not None:
        dead = _fully_masked_rows(mask)
        scores = (scores + mask).masked_fill(dead, 0.0)  # a finite softmax (and gradient) in dead rows...
    weights = scores.softmax(dim=-1)
    if dead is not None:
        weights = weights.masked_fill(dead, 0.0)  # ...whose weights, and so output, are then zero
    out = F.dropout(weights, p=dropout_p) @ v if dropout_p > 0 else weights @ v
    return out, weights if need_weights else None


def _fully_masked_rows(mask: Tensor) -> Tensor:
    """(..., Lq, 1) True where a query may attend to no key: a boolean row of False, a float row of -inf."""
    if mask.dtype == torch.bool:
        return ~mask.any(dim=-1, keepdim=True)
    return (mask == float("-inf")).all(dim=-1, keepdim=True)


class _AttentionBase(nn.Module):
    """Shared head bookkeeping, optional QK-norm and output projection."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        proj_bias: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.fused_attn = True
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, t: Tensor, parts: int) -> Tensor:
        """A projection (B, L, parts * C) -> (parts, B, H, L, head_dim): its query / key / value heads."""
        B, L, _ = t.shape
        return t.reshape(B, L, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _attend(self, q, k, v, attn_mask, key_padding_mask, is_causal, need_weights):
        B, _, Lq, _ = q.shape
        q, k = self.q_norm(q), self.k_norm(k)
        x, weights = scaled_dot_product(
            q,
            k,
            v,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            dropout_p=self.attn_drop if self.training else 0.0,
            need_weights=need_weights,
            fused=self.fused_attn,
        )
        x = x.transpose(1, 2).reshape(B, Lq, x.shape[1] * x.shape[3])  # B, Lq, C (also for an empty batch)
        x = self.proj_drop(self.proj(x))
        return (x, weights) if need_weights else x


class Attention(_AttentionBase):
    """Multi-head self-attention with one fused ``qkv`` projection (timm-compatible parameter names)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, **kwargs) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        cache: dict[str, Tensor] | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        at: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, L, C) -> (B, L, C); with ``need_weights`` also the (B, H, L, L) attention weights.

        ``cache`` (incremental decoding): a dict holding the keys/values of earlier positions; the new ones are
        appended to it and ``x`` holds only the new positions (a causal mask is then aligned to the end).
        ``key_padding_mask`` covers all keys, cached ones included.
        ``rope``: the (cos, sin) tables of the new positions (:class:`~vitkit.layers.rope.RotaryEmbedding`),
        applied to queries and keys before the keys are cached.
        ``at`` (B,) long: the output at that one position of each row only, (B, 1, C) (:meth:`_forward_at`; not
        with ``attn_mask``, ``need_weights`` or ``cache``).
        """
        if at is not None:
            if attn_mask is not None or need_weights or cache is not None:
                raise ValueError("Attention: at= takes no attn_mask, need_weights or cache")
            return self._forward_at(x, at, key_padding_mask, is_causal, rope)
        q, k, v = self._split_heads(self.qkv(x), 3).unbind(0)  # each B, H, L, head_dim
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        return self._attend(q, k, v, attn_mask, key_padding_mask, is_causal, need_weights)

    def _forward_at(
        self, x: Tensor, index: Tensor, key_padding_mask: Tensor | None, is_causal: bool,
        rope: tuple[Tensor, Tensor] | None,
    ) -> Tensor:  # fmt: skip
        """The output of :meth:`forward` at one position per row only: x (B, L, C), index (B,) -> (B, 1, C).

        Keys and values come from every position as usual (a causal query at ``index[b]`` sees keys up to it);
        only the query, the output projection and what follows are computed for one token: what a model pooled
        at one token (CLIP's class / end-of-text token) needs from its last block. ``rope`` as in :meth:`forward`,
        the tables of all ``L`` positions."""
        B, L, C = x.shape
        rows = torch.arange(B, device=x.device)
        bias = self.qkv.bias
        q = F.linear(x[rows, index][:, None], self.qkv.weight[:C], None if bias is None else bias[:C])
        kv = F.linear(x, self.qkv.weight[C:], None if bias is None else bias[C:])
        q, (k, v) = self._split_heads(q, 1)[0], self._split_heads(kv, 2).unbind(0)
        if rope is not None:
            cos, sin = (t.expand(B, -1, -1, -1)[rows, :, index][:, :, None] for t in rope)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, *rope)
        mask = None
        if is_causal:  # (B, 1, 1, L): True = may attend
            mask = (torch.arange(L, device=x.device) <= index[:, None])[:, None, None, :]
        return self._attend(q, k, v, mask, key_padding_mask, False, False)


class CrossAttention(_AttentionBase):
    """Multi-head attention from queries ``x`` to a separate ``memory`` sequence (encoder-decoder attention)."""

    def __init__(
        self, dim: int, num_heads: int = 8, kv_dim: int | None = None, qkv_bias: bool = True, **kwargs
    ):
        super().__init__(dim, num_heads, **kwargs)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(kv_dim or dim, dim * 2, bias=qkv_bias)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        cache: dict[str, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, Lq, C), memory: (B, Lk, C_kv) -> (B, Lq, C). ``key_padding_mask`` masks memory positions.

        ``cache``: the memory's keys/values are projected once and reused on later calls (incremental decoding).
        """
        q = self._split_heads(self.q(x), 1)[0]
        if cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = self._split_heads(self.kv(memory), 2).unbind(0)
            if cache is not None:
                cache["k"], cache["v"] = k, v
        return self._attend(q, k, v, attn_mask, key_padding_mask, False, need_weights)
