"""GPT: a decoder-only Transformer trained to predict the next token (Radford et al. 2018, 2019).

Read top to bottom: token ids -> token embedding + learned absolute positions (GPT-2) -> dropout -> a stack of
pre-norm *causal* self-attention blocks (the library's own :class:`~vitkit.layers.EncoderBlock` with
``is_causal=True``: there is no second copy of attention) -> final LayerNorm -> logits through the token
embedding matrix (tied, as GPT-2) or a separate head. Rotary positions (``pos_embed="rope"``) replace the learned
table where asked. Initialisation follows GPT-2: N(0, 0.02) weights, the residual projections scaled by
``1/sqrt(2 * depth)``.

HuggingFace ``GPT2LMHeadModel`` checkpoints load bit for bit through :mod:`vitkit.weights.hf_gpt2`; text is sampled
by :func:`vitkit.models.generation.generate` (KV cache, left-padded batches, top-k / top-p).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import EncoderBlock, TokenEmbedding
from ..layers.rope import RotaryEmbedding
from ..registry import register_family
from ._checks import check_args

__all__ = ["GPT", "KVCache"]

KVCache = list[dict[str, Tensor]]  # one {"k", "v"} per block, (B, H, L, head_dim) each


class GPT(nn.Module):
    """Decoder-only Transformer language model.

    Args:
        vocab_size: tokens in the vocabulary.
        block_size: the context length (longest sequence; GPT-2: 1024).
        embed_dim, depth, num_heads, mlp_ratio: shape (GPT-2 124M: 768, 12, 12, 4).
        drop_rate, attn_drop_rate: embedding/residual and attention dropout.
        pos_embed: ``"learned"`` (GPT-2's absolute table) or ``"rope"`` (rotary, RoFormer).
        tie_embeddings: the output projection is the token embedding matrix (GPT-2), else a separate linear layer.
        bias: biases in the linear layers (GPT-2: True).
        act_layer: MLP activation (GPT-2: ``"gelu_tanh"``, HF's ``gelu_new``). norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        vocab_size: int = 50257,
        block_size: int = 1024,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        pos_embed: str = "learned",
        tie_embeddings: bool = True,
        bias: bool = True,
        act_layer: str = "gelu_tanh",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_args(
            "GPT",
            positive={"vocab_size": vocab_size, "block_size": block_size, "embed_dim": embed_dim,
                      "num_heads": num_heads, "mlp_ratio": mlp_ratio, "norm_eps": norm_eps},
            nonnegative={"depth": depth},
            rates={"drop_rate": drop_rate, "attn_drop_rate": attn_drop_rate},
            integers=("vocab_size", "block_size", "embed_dim", "depth", "num_heads"),
            divisible=(("embed_dim", embed_dim, "num_heads", num_heads),),
        )  # fmt: skip
        if pos_embed not in ("learned", "rope"):
            raise ValueError(f"GPT: pos_embed must be 'learned' or 'rope', got {pos_embed!r}")
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.vocab_size, self.block_size, self.embed_dim, self.depth = (
            vocab_size,
            block_size,
            embed_dim,
            depth,
        )
        self.token_embed = TokenEmbedding(vocab_size, embed_dim)
        self.pos_embed = nn.Embedding(block_size, embed_dim) if pos_embed == "learned" else None
        self.rope = RotaryEmbedding(embed_dim // num_heads, block_size) if pos_embed == "rope" else None
        self.drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=bias, proj_drop=drop_rate,
                         attn_drop=attn_drop_rate, act_layer=act_layer, norm_eps=norm_eps, norm_first=True)
            for _ in range(depth)
        )  # fmt: skip
        if not bias:
            for block in self.blocks:
                block.attn.proj.bias = block.mlp.fc1.bias = block.mlp.fc2.bias = None
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = None if tie_embeddings else nn.Linear(embed_dim, vocab_size, bias=False)
        self.grad_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2: N(0, 0.02) linears and embeddings, zero biases, residual projections N(0, 0.02 / sqrt(2L))."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.fc2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * max(self.depth, 1)))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Embeddings are not decayed (biases and norms never are: they are 1-D)."""
        return {"token_embed.weight", "pos_embed.weight"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, ~30% more compute)."""
        self.grad_checkpointing = enable

    def new_cache(self) -> KVCache:
        """An empty key/value cache for incremental decoding (pass it to every :meth:`forward`)."""
        return [{} for _ in self.blocks]

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Next-token logits.

        Args:
            idx: (B, L) token ids.
            targets: (B, L) the next token at every position (-100 = ignored); with it the mean cross-entropy
                is returned too.
            positions: (B, L) position of every token (default ``0..L-1``, after the cached ones); left-padded
                batches pass ``attention_mask.cumsum(-1) - 1``.
            key_padding_mask: (B, L_keys) True at padding keys (cached ones included).
            cache: from :meth:`new_cache`; ``idx`` then holds only the new tokens.

        Returns:
            logits (B, L, vocab_size), or ``(logits, loss)`` with ``targets``.

        Raises:
            ValueError: a sequence longer than the model's context (``block_size``).
        """
        x = self.forward_features(idx, positions=positions, key_padding_mask=key_padding_mask, cache=cache)
        logits = F.linear(x, self.token_embed.weight) if self.head is None else self.head(x)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def forward_features(
        self,
        idx: Tensor,
        *,
        positions: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        is_causal: bool = True,
        at: Tensor | None = None,
    ) -> Tensor:
        """Token ids (B, L) -> hidden states after the final LayerNorm (B, L, embed_dim); arguments as
        :meth:`forward`. ``is_causal=False`` lets every token see the whole sequence: the same stack used as a
        bidirectional text encoder (SigLIP's text tower, :mod:`vitkit.models.clip`). ``at`` (B,) long: only the
        hidden state at that position of each row, (B, embed_dim) (the last block computes that token alone,
        ``EncoderBlock(..., at=)``; CLIP's end-of-text pooling); not with ``cache``."""
        if at is not None and cache is not None:
            raise ValueError("forward_features: at= (one position per row) cannot be used with a cache")
        B, L = idx.shape
        start = cache[0]["k"].shape[2] if cache and "k" in cache[0] else 0
        if start + L > self.block_size:
            raise ValueError(
                f"a sequence of {start + L} tokens is longer than the model's context of {self.block_size} tokens"
            )
        if positions is None:
            positions = torch.arange(start, start + L, device=idx.device)
        x = self.token_embed(idx)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        rope = self.rope(positions) if self.rope is not None else None
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            if at is not None and i == len(self.blocks) - 1:
                return self.norm(block(x, None, key_padding_mask, is_causal, None, rope, at=at))[:, 0]
            if self.grad_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, None, key_padding_mask, is_causal, None, rope, use_reentrant=False)
            else:
                x = block(x, None, key_padding_mask, is_causal, None if cache is None else cache[i], rope)
        if at is not None:  # no blocks
            return self.norm(x[torch.arange(B, device=x.device), at])
        return self.norm(x)

    def extra_repr(self) -> str:
        return f"family=gpt, params={sum(p.numel() for p in self.parameters()) / 1e6:.2f}M"


register_family("gpt", GPT)
