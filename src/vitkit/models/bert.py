"""BERT-architecture text encoder (Devlin et al. 2019), the Transformer encoder of the original NLP setting.

Read top to bottom: token ids -> word + position + segment embeddings -> LayerNorm -> post-norm encoder blocks
(the same :class:`~vitkit.layers.EncoderBlock` as the ViT, with ``norm_first=False``) -> pooler (tanh of a linear
layer on the first, [CLS], token) -> optional classifier. Padding never reaches attention: ``attention_mask``
(1 = token, 0 = padding) becomes the blocks' key-padding mask. HuggingFace ``BertModel`` weights (and MiniLM, its
smaller sibling) load bit for bit through :mod:`vitkit.weights.hf_bert` (``convert_hf_bert``,
``bert_from_huggingface``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import EncoderBlock, TokenEmbedding, may_inspect_values
from ..registry import create_model, register_family
from ._checks import check_args
from ._head import new_head

__all__ = [
    "TextEmbeddings",
    "BertEncoder",
    "MaskedLanguageModel",
    "mask_tokens",
]


class TextEmbeddings(nn.Module):
    """Token + learned position + segment (token type) embeddings, then LayerNorm and dropout."""

    def __init__(
        self, vocab_size: int, dim: int, max_len: int, type_vocab_size: int, pad_token_id: int, norm_eps: float,
        drop: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.word = TokenEmbedding(vocab_size, dim, padding_idx=pad_token_id)
        self.position = nn.Embedding(max_len, dim)
        self.token_type = (
            TokenEmbedding(type_vocab_size, dim, what="token type ids") if type_vocab_size > 0 else None
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop = nn.Dropout(drop)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        L = input_ids.shape[1]
        if L > self.position.num_embeddings:
            raise ValueError(
                f"sequence of {L} tokens is longer than the {self.position.num_embeddings} positions this model "
                "has; truncate the input (the tokenizer's max_length)"
            )
        x = self.word(input_ids) + self.position(torch.arange(L, device=input_ids.device))[None]
        if self.token_type is not None:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.token_type(types)
        return self.drop(self.norm(x))


class BertEncoder(nn.Module):
    """BERT / MiniLM encoder with a pooler and an optional sequence classifier.

    Args:
        vocab_size, max_len, type_vocab_size, pad_token_id: embedding tables (``type_vocab_size=0``: no segments).
        embed_dim, depth, num_heads, mlp_dim: encoder shape (``mlp_dim`` is BERT's ``intermediate_size``).
        num_classes: classifier outputs on the pooled [CLS] feature (0 = ``forward`` returns the pooled feature).
        drop_rate, attn_drop_rate: BERT's hidden and attention-probability dropout.
        norm_eps: LayerNorm epsilon (BERT: 1e-12). act_layer: MLP activation (BERT: exact GELU).
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        max_len: int = 512,
        type_vocab_size: int = 2,
        pad_token_id: int = 0,
        num_classes: int = 0,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.1,
        norm_eps: float = 1e-12,
        act_layer: str = "gelu",
    ) -> None:
        super().__init__()
        check_args(
            "BertEncoder",
            positive={"vocab_size": vocab_size, "embed_dim": embed_dim, "num_heads": num_heads, "mlp_dim": mlp_dim,
                      "max_len": max_len, "norm_eps": norm_eps},
            nonnegative={"depth": depth, "type_vocab_size": type_vocab_size, "num_classes": num_classes,
                         "pad_token_id": pad_token_id},
            rates={"drop_rate": drop_rate, "attn_drop_rate": attn_drop_rate},
            integers=("vocab_size", "embed_dim", "num_heads", "mlp_dim", "max_len", "depth", "type_vocab_size",
                      "num_classes", "pad_token_id"),
            divisible=(("embed_dim", embed_dim, "num_heads", num_heads),),
        )  # fmt: skip
        if pad_token_id >= vocab_size:
            raise ValueError(
                f"BertEncoder: pad_token_id ({pad_token_id}) must be < vocab_size ({vocab_size})"
            )
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.pad_token_id = pad_token_id
        self.embeddings = TextEmbeddings(
            vocab_size, embed_dim, max_len, type_vocab_size, pad_token_id, norm_eps, drop_rate
        )
        self.blocks = nn.ModuleList([
            EncoderBlock(
                embed_dim, num_heads, mlp_ratio=mlp_dim / embed_dim, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                act_layer=act_layer, norm_eps=norm_eps, norm_first=False,
            )
            for _ in range(depth)
        ])  # fmt: skip
        self.pooler = nn.Linear(embed_dim, embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self, std: float = 0.02) -> None:
        """BERT's init: normal(0, 0.02) weights and embeddings, zero biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.embeddings.word.weight[self.pad_token_id].zero_()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new head for ``num_classes`` classes (0: none), on the model's device and in its dtype."""
        head = new_head(self, self.embed_dim, num_classes)
        if isinstance(head, nn.Linear):
            with torch.no_grad():
                nn.init.normal_(head.weight, std=0.02)  # BERT's init
        self.num_classes = self.config["num_classes"] = num_classes
        self.head = head

    def forward_features(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Token ids (B, L) -> hidden states (B, L, D).

        ``attention_mask``: 1 = token, 0 = padding; by default every ``pad_token_id`` position is padding.
        """
        if input_ids.dtype not in (torch.int32, torch.int64) or input_ids.dim() != 2:
            raise TypeError(
                f"input_ids must be integer (batch, length), got {input_ids.dtype} {tuple(input_ids.shape)}"
            )
        x = self.embeddings(input_ids, token_type_ids)
        padding = input_ids == self.pad_token_id if attention_mask is None else attention_mask == 0
        if may_inspect_values() and not padding.any():  # (a graph keeps the mask: no data branch)
            padding = None  # no mask at all: the fastest attention kernel
        for block in self.blocks:
            x = block(x, key_padding_mask=padding)
        return x

    def pool(self, hidden: Tensor) -> Tensor:
        """BERT's pooler: tanh(linear(hidden state of the first token))."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """Token ids (B, L) -> class logits (B, num_classes), or the pooled feature (B, D) without a head."""
        pooled = self.pool(self.forward_features(input_ids, attention_mask, token_type_ids))
        return self.head(self.head_drop(pooled))

    def extra_repr(self) -> str:
        return f"family=bert, params={sum(p.numel() for p in self.parameters()) / 1e6:.2f}M"


register_family("bert", BertEncoder)


# ---------------------------------------------------------------- masked-language-model pre-training
def mask_tokens(
    input_ids: Tensor,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: each ordinary token is chosen with ``mask_prob``; of those 80% become ``[MASK]``, 10% a
    random token, 10% stay. Returns (corrupted ids, labels) with label -100 where nothing is predicted."""
    if not 0 < mask_prob < 1:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
    device = input_ids.device
    ordinary = ~torch.isin(input_ids, torch.as_tensor(list(special_ids), device=device))
    chosen = (torch.rand(input_ids.shape, generator=generator, device=device) < mask_prob) & ordinary
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = chosen & (draw < 0.8)
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


class MaskedLanguageModel(nn.Module):
    """A registry text encoder plus BERT's MLM head (dense + GELU + LayerNorm, decoder tied to the word table).

    ``forward(input_ids) -> (loss, logits of the chosen positions, labels)``: the ids are corrupted with
    :func:`mask_tokens` inside, so the Trainer feeds plain token ids; the loss is the cross-entropy over the chosen
    (15%) positions only.
    """

    def __init__(
        self,
        encoder: str = "bert_tiny",
        encoder_args: dict[str, Any] | None = None,
        mask_token_id: int = 4,
        special_ids: Sequence[int] = (0, 1, 2, 3, 4),
        mask_prob: float = 0.15,
    ) -> None:
        super().__init__()
        if not 0 < mask_prob < 1:
            raise ValueError(f"MaskedLanguageModel: mask_prob must be in (0, 1), got {mask_prob}")
        encoder_args = {**(encoder_args or {}), "num_classes": 0}
        self.config: dict[str, Any] = {"encoder": encoder, "encoder_args": encoder_args,
                                       "mask_token_id": mask_token_id, "special_ids": [int(i) for i in special_ids],
                                       "mask_prob": mask_prob}  # fmt: skip
        self.encoder = create_model(encoder, **encoder_args)
        if not isinstance(self.encoder, BertEncoder):
            raise ValueError(f"the MLM encoder must be a BERT encoder, got {encoder!r}")
        vocab = self.encoder.embeddings.word.num_embeddings
        if not 0 <= mask_token_id < vocab:
            raise ValueError(
                f"MaskedLanguageModel: mask_token_id ({mask_token_id}) is not in the {vocab}-token table"
            )
        dim = self.encoder.embed_dim
        eps = self.encoder.config["norm_eps"]
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=eps))
        self.decoder_bias = nn.Parameter(torch.zeros(self.encoder.embeddings.word.num_embeddings))
        self.mask_token_id, self.special_ids, self.mask_prob = mask_token_id, list(special_ids), mask_prob
        nn.init.normal_(self.transform[0].weight, std=0.02)
        nn.init.zeros_(self.transform[0].bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    def forward(
        self, input_ids: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        vocab = self.encoder.embeddings.word.num_embeddings
        corrupted, labels = mask_tokens(input_ids, self.mask_token_id, vocab, self.special_ids, self.mask_prob,
                                        generator)  # fmt: skip
        attention_mask = (input_ids != self.encoder.pad_token_id).long()
        hidden = self.encoder.forward_features(corrupted, attention_mask)
        chosen = labels != -100
        feats = self.transform(hidden[chosen])  # only the predicted positions reach the vocabulary projection
        logits = feats @ self.encoder.embeddings.word.weight.T + self.decoder_bias
        target = labels[chosen]
        loss = nn.functional.cross_entropy(logits.float(), target) if len(target) else hidden.sum() * 0
        return loss, logits, target

    def token_logits(self, input_ids: Tensor) -> Tensor:
        """Vocabulary logits (B, L, V) at every position of ``input_ids`` as given, nothing corrupted (fill-mask
        inference: the mask token stands where a word is hidden)."""
        hidden = self.encoder.forward_features(input_ids, (input_ids != self.encoder.pad_token_id).long())
        return self.transform(hidden) @ self.encoder.embeddings.word.weight.T + self.decoder_bias


register_family("bert_mlm", MaskedLanguageModel)
