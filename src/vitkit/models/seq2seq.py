"""The Transformer (Vaswani et al. 2017): encoder-decoder for translation, with cached greedy and beam decoding.

Read top to bottom: source ids -> shared embedding * sqrt(d) + sinusoidal positions -> encoder blocks ->
memory; target ids (shifted right, starting with BOS) -> the same embedding -> causal decoder blocks that also
attend to the memory -> logits through the embedding matrix (tied). The blocks are the library's own
:class:`~vitkit.layers.EncoderBlock` / :class:`~vitkit.layers.DecoderBlock`, pre- or post-norm.

Decoding keeps every decoder block's keys/values (and the projected memory) in a cache, so each step runs the
decoder on one new token: :func:`greedy_decode` and :func:`beam_search` (batched beams, GNMT length penalty,
EOS handling, maximum length).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import DecoderBlock, EncoderBlock, TokenEmbedding, may_inspect_values, sincos_1d
from ..registry import register_family
from ._checks import check_args

__all__ = ["Seq2SeqTransformer", "greedy_decode", "beam_search"]

Cache = list[dict[str, dict[str, Tensor]]]


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer over one joint (source + target) vocabulary.

    Args:
        vocab_size, pad_id, bos_id, eos_id: the vocabulary and its special ids.
        embed_dim, encoder_depth, decoder_depth, num_heads, mlp_dim: shape (Transformer-base: 512, 6, 6, 8, 2048).
        max_len: longest sequence (positions table). norm_first: pre-norm (stable) or the paper's post-norm.
        drop_rate, attn_drop_rate: residual/embedding and attention dropout. tie_embeddings: the output projection
        is the embedding matrix (as the paper), else a separate linear layer.
    """

    def __init__(
        self,
        vocab_size: int = 8000,
        embed_dim: int = 256,
        encoder_depth: int = 3,
        decoder_depth: int = 3,
        num_heads: int = 4,
        mlp_dim: int = 1024,
        max_len: int = 256,
        norm_first: bool = True,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.0,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
        tie_embeddings: bool = True,
        act_layer: str = "relu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_args(
            "Seq2SeqTransformer",
            positive={"vocab_size": vocab_size, "embed_dim": embed_dim, "num_heads": num_heads, "mlp_dim": mlp_dim,
                      "max_len": max_len, "norm_eps": norm_eps},
            nonnegative={"encoder_depth": encoder_depth, "decoder_depth": decoder_depth, "pad_id": pad_id,
                         "bos_id": bos_id, "eos_id": eos_id},
            rates={"drop_rate": drop_rate, "attn_drop_rate": attn_drop_rate},
            integers=("vocab_size", "embed_dim", "encoder_depth", "decoder_depth", "num_heads", "mlp_dim", "max_len",
                      "pad_id", "bos_id", "eos_id"),
            divisible=(("embed_dim", embed_dim, "num_heads", num_heads), ("embed_dim", embed_dim, "2", 2)),
        )  # fmt: skip
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        for name, token in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if token >= vocab_size:
                raise ValueError(f"Seq2SeqTransformer: {name} ({token}) must be < vocab_size ({vocab_size})")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.embed_dim, self.max_len = embed_dim, max_len
        self.embed = TokenEmbedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.register_buffer("pos_embed", sincos_1d(max_len, embed_dim), persistent=False)
        self.drop = nn.Dropout(drop_rate)
        kw = dict(mlp_ratio=mlp_dim / embed_dim, proj_drop=drop_rate, attn_drop=attn_drop_rate, act_layer=act_layer,
                  norm_eps=norm_eps, norm_first=norm_first)  # fmt: skip
        self.encoder = nn.ModuleList([EncoderBlock(embed_dim, num_heads, **kw) for _ in range(encoder_depth)])
        self.decoder = nn.ModuleList([DecoderBlock(embed_dim, num_heads, **kw) for _ in range(decoder_depth)])
        final = (lambda: nn.LayerNorm(embed_dim, eps=norm_eps)) if norm_first else nn.Identity
        self.encoder_norm, self.decoder_norm = final(), final()
        self.head = None if tie_embeddings else nn.Linear(embed_dim, vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform linears, normal(0, d^-0.5) embeddings (the scale the sqrt(d) multiplier expects)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.embed.weight, std=self.embed_dim**-0.5)
        with torch.no_grad():
            self.embed.weight[self.pad_id].zero_()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"embed.weight"}

    def _embed(self, ids: Tensor, start: int = 0) -> Tensor:
        L = ids.shape[1]
        if start + L > self.max_len:
            raise ValueError(f"sequence of {start + L} tokens is longer than max_len={self.max_len}")
        return self.drop(self.embed(ids) * math.sqrt(self.embed_dim) + self.pos_embed[start : start + L])

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Source ids (B, S) -> (memory (B, S, D), source padding mask (B, S), True = padding)."""
        padding = src == self.pad_id
        x = self._embed(src)
        for block in self.encoder:
            x = block(x, key_padding_mask=padding)
        return self.encoder_norm(x), padding

    def decode(
        self, tgt: Tensor, memory: Tensor, src_padding: Tensor, cache: Cache | None = None, start: int = 0
    ) -> Tensor:
        """Target ids (B, T) -> next-token logits (B, T, V). With ``cache`` (one dict per block, ``[{}, ...]`` at
        first), ``tgt`` holds only the new positions, starting at position ``start``."""
        x = self._embed(tgt, start)
        tgt_padding = None if cache is not None else (tgt == self.pad_id)
        if tgt_padding is not None and may_inspect_values() and not tgt_padding.any():
            tgt_padding = None
        for i, block in enumerate(self.decoder):
            x = block(
                x, memory, tgt_padding, src_padding, is_causal=True, cache=None if cache is None else cache[i]
            )
        x = self.decoder_norm(x)
        return x @ self.embed.weight.T if self.head is None else self.head(x)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: source ids (B, S), target ids shifted right (B, T) -> logits (B, T, V)."""
        memory, src_padding = self.encode(src)
        return self.decode(tgt_in, memory, src_padding)

    def new_cache(self) -> Cache:
        return [{} for _ in self.decoder]

    def extra_repr(self) -> str:
        return f"family=seq2seq, params={sum(p.numel() for p in self.parameters()) / 1e6:.2f}M"


register_family("seq2seq", Seq2SeqTransformer)


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqTransformer, src: Tensor, max_len: int = 64, use_cache: bool = True
) -> Tensor:
    """Most likely next token at every step. Returns (B, <= max_len) ids without BOS, padded after each EOS."""
    memory, src_padding = model.encode(src)
    B = src.shape[0]
    out = torch.full((B, 1), model.bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    cache = model.new_cache() if use_cache else None
    for t in range(max_len):
        step_in = out[:, -1:] if use_cache else out
        logits = model.decode(step_in, memory, src_padding, cache, start=t if use_cache else 0)[:, -1]
        token = logits.argmax(-1)
        token = torch.where(done, torch.full_like(token, model.pad_id), token)
        out = torch.cat([out, token[:, None]], dim=1)
        done |= token == model.eos_id
        if done.all():
            break
    return out[:, 1:]


def _length_penalty(length: Tensor, alpha: float) -> Tensor:
    return ((5.0 + length.float()) / 6.0) ** alpha  # GNMT (Wu et al. 2016)


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer, src: Tensor, beam_size: int = 4, max_len: int = 64, length_penalty: float = 0.6
) -> Tensor:
    """Batched beam search with a KV cache. Each sentence keeps ``beam_size`` hypotheses; a hypothesis that emits
    EOS is finished (it only extends with padding, its score frozen); the best by ``score / lp(length)`` wins.
    Returns (B, <= max_len) ids without BOS, padded after EOS."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    B, K, dev = src.shape[0], beam_size, src.device
    memory, src_padding = model.encode(src)
    memory, src_padding = memory.repeat_interleave(K, 0), src_padding.repeat_interleave(K, 0)
    seqs = torch.full((B * K, 1), model.bos_id, dtype=torch.long, device=dev)
    scores = torch.full((B, K), -math.inf, device=dev)
    scores[:, 0] = 0.0  # all beams start identical: only the first expands at step one
    done = torch.zeros(B * K, dtype=torch.bool, device=dev)
    lengths = torch.zeros(B * K, dtype=torch.long, device=dev)
    cache = model.new_cache()
    offsets = (torch.arange(B, device=dev) * K)[:, None]
    for t in range(max_len):
        logp = model.decode(seqs[:, -1:], memory, src_padding, cache, start=t)[:, -1].float().log_softmax(-1)
        V = logp.shape[-1]
        finished = torch.full_like(logp, -math.inf)
        finished[:, model.pad_id] = 0.0
        logp = torch.where(done[:, None], finished, logp)
        cand = (scores.view(-1, 1) + logp).view(B, K * V)
        scores, flat = cand.topk(K, dim=1)
        beam, token = flat // V, flat % V
        reorder = (offsets + beam).view(-1)
        seqs = torch.cat([seqs[reorder], token.view(-1, 1)], dim=1)
        lengths = torch.where(done[reorder], lengths[reorder], lengths[reorder] + 1)
        done = done[reorder] | (token.view(-1) == model.eos_id)
        for layer in cache:  # the memory's keys/values are the same for every beam of a sentence
            layer["self"] = {k: v[reorder] for k, v in layer["self"].items()}
        if done.all():
            break
    final = scores.view(-1) / _length_penalty(lengths, length_penalty)
    best = final.view(B, K).argmax(1) + offsets.view(-1)
    return seqs[best, 1:]
