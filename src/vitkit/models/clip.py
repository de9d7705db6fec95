"""CLIP, SigLIP and LiT: an image tower and a text tower trained to agree (Radford et al. 2021; Zhai et al. 2022,
2023).

Read top to bottom: images -> a registry :class:`~vitkit.models.vit.VisionTransformer` (CLIP: class token, ``ln_pre``
= ``pre_norm``, QuickGELU; SigLIP: no class token, attention-pooling "map" head) -> pooled feature -> linear
projection into the shared embedding. Token ids -> a text tower: CLIP's causal Transformer (the library's
:class:`~vitkit.models.gpt.GPT` stack: token + learned positions, pre-norm causal blocks, final LayerNorm) pooled at
the end-of-text token, SigLIP's same stack run bidirectionally and pooled at the last position, or a
:class:`~vitkit.models.bert.BertEncoder` (MiniLM, for LiT) with mean / [CLS] / pooler pooling -> linear projection.
A learnable temperature ``logit_scale`` (and SigLIP's ``logit_bias``) turns cosine similarities into logits; the
losses are in :mod:`vitkit.models.contrastive`.

HuggingFace ``CLIPModel`` / ``SiglipModel`` and open_clip checkpoints load bit for bit through
:mod:`vitkit.weights.hf_clip` (``clip_from_huggingface``) and :func:`vitkit.load_pretrained`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import may_inspect_values
from ..registry import create_model, model_config, register_family
from ._checks import check_args
from .bert import BertEncoder
from .gpt import GPT
from .vit import build_backbone

__all__ = ["CLIP", "TEXT_POOLS"]

# how a text tower's hidden states (B, L, D) become one vector per text
TEXT_POOLS = {
    "argmax": "the position of the largest token id (the end-of-text token of CLIP's BPE; OpenAI, open_clip)",
    "eos": "the first position holding eos_token_id (HuggingFace CLIP configs after transformers PR #24773)",
    "first": "the first token ([CLS] of a BERT tower)",
    "last": "the last position, padding or not (SigLIP)",
    "mean": "the mean over the attention mask's tokens (sentence-transformers, MiniLM)",
    "pooler": "BERT's tanh pooler on [CLS]",
}


def _text_tower(text: str, text_args: dict[str, Any] | None) -> tuple[nn.Module, dict[str, Any]]:
    """A registry GPT-shaped or BERT text tower; returns (tower, the arguments to store)."""
    args = dict(text_args or {})
    if model_config(text)["family"] == "bert":
        args["num_classes"] = 0  # the pooled feature, no classifier
    tower = create_model(text, **args)
    if not isinstance(tower, (GPT, BertEncoder)):
        raise ValueError(
            f"CLIP: the text tower must be a GPT-shaped or BERT text model, got {text!r} ({type(tower).__name__})"
        )
    return tower, args


def _right_padded(padding: Tensor) -> bool:
    """(B, L) True = padding: whether every row's padding comes after all of its tokens."""
    return bool((padding[:, :-1] <= padding[:, 1:]).all())


def _projection(width: int, embed_dim: int, use: bool, bias: bool, tower: str) -> nn.Module:
    """Linear(width, embed_dim) with N(0, width^-0.5) weights (open_clip), or Identity when the widths agree."""
    if not use:
        if width != embed_dim:
            raise ValueError(
                f"CLIP: the {tower} tower's width ({width}) differs from embed_dim ({embed_dim}) and "
                f"{tower}_proj=False: set {tower}_proj=True to project it, or embed_dim={width}"
            )
        if bias:
            raise ValueError(f"CLIP: {tower}_proj_bias=True needs {tower}_proj=True")
        return nn.Identity()
    proj = nn.Linear(width, embed_dim, bias=bias)
    nn.init.normal_(proj.weight, std=width**-0.5)
    if bias:
        nn.init.zeros_(proj.bias)
    return proj


class CLIP(nn.Module):
    """Dual encoder: a registry ViT image tower and a text tower projected into one ``embed_dim`` space.

    Args:
        vision, vision_args: registry name of the image tower (a ``vit`` model) and overrides of its config
            (``num_classes`` is always 0: the tower returns its pooled feature).
        text, text_args: registry name of the text tower (``gpt`` family: CLIP / SigLIP shape; ``bert``: BERT,
            MiniLM) and overrides of its config.
        embed_dim: width of the shared embedding.
        vision_proj, text_proj: a linear projection after each tower (False: the tower's width must be
            ``embed_dim``; SigLIP's image tower has none). vision_proj_bias, text_proj_bias: biases on them
            (SigLIP's text head has one; CLIP's projections have none).
        text_pool: one of :data:`TEXT_POOLS` (CLIP: ``"argmax"``, SigLIP: ``"last"``, MiniLM: ``"mean"``).
        text_causal: causal attention in a GPT-shaped tower (CLIP: True, SigLIP: False); None = causal for GPT,
            bidirectional for BERT (which cannot be causal).
        eos_token_id: the end-of-text id ``text_pool="eos"`` looks for.
        logit_scale_init: initial log temperature (CLIP: ln(1/0.07); SigLIP: ln(10)).
        logit_bias_init: initial logit bias (SigLIP: -10); None = no bias (CLIP).
        lock_image, lock_text: LiT (Zhai et al. 2022): the tower and its projection get ``requires_grad=False``
            and stay in eval mode (no dropout / drop-path) even under ``model.train()``; see
            :meth:`lock_image_tower`.

    Raises:
        ValueError: a tower of the wrong kind, an unknown ``text_pool``, towers whose width differs from
            ``embed_dim`` without a projection, ``text_pool="eos"`` without ``eos_token_id``, a causal BERT.
    """

    def __init__(
        self,
        vision: str = "vit_base_patch32_224",
        vision_args: dict[str, Any] | None = None,
        text: str = "clip_text_base",
        text_args: dict[str, Any] | None = None,
        embed_dim: int = 512,
        vision_proj: bool = True,
        vision_proj_bias: bool = False,
        text_proj: bool = True,
        text_proj_bias: bool = False,
        text_pool: str = "argmax",
        text_causal: bool | None = None,
        eos_token_id: int | None = None,
        logit_scale_init: float = math.log(1 / 0.07),
        logit_bias_init: float | None = None,
        lock_image: bool = False,
        lock_text: bool = False,
    ) -> None:
        super().__init__()
        check_args("CLIP", positive={"embed_dim": embed_dim}, integers=("embed_dim",))
        if text_pool not in TEXT_POOLS:
            raise ValueError(f"CLIP: text_pool must be one of {sorted(TEXT_POOLS)}, got {text_pool!r}")
        if text_pool == "eos" and eos_token_id is None:
            raise ValueError("CLIP: text_pool='eos' needs eos_token_id (the end-of-text token's id)")
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.visual, self.config["vision_args"] = build_backbone(vision, vision_args, "CLIP image tower")
        self.text, self.config["text_args"] = _text_tower(text, text_args)
        self.text_causal = self._check_text(text_causal, text_pool)
        self.text_pool, self.eos_token_id, self.embed_dim = text_pool, eos_token_id, embed_dim
        self.visual_proj = _projection(
            self.visual.num_features, embed_dim, vision_proj, vision_proj_bias, "vision"
        )
        self.text_proj = _projection(self.text.embed_dim, embed_dim, text_proj, text_proj_bias, "text")
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.logit_bias = (
            None if logit_bias_init is None else nn.Parameter(torch.tensor(float(logit_bias_init)))
        )
        self.lock_image, self.lock_text = False, False
        if lock_image:
            self.lock_image_tower()
        if lock_text:
            self.lock_text_tower()

    def _check_text(self, text_causal: bool | None, text_pool: str) -> bool:
        """Resolve ``text_causal`` for the tower and freeze what the pooling leaves unused (DDP needs every
        trainable parameter to get a gradient)."""
        bert = isinstance(self.text, BertEncoder)
        if bert and text_causal:
            raise ValueError(
                "CLIP: a BERT text tower is bidirectional; text_causal=True needs a GPT-shaped tower"
            )
        if text_pool == "pooler" and not bert:
            raise ValueError(
                "CLIP: text_pool='pooler' is BERT's pooler; this text tower is a GPT-shaped model"
            )
        if bert and text_pool != "pooler":
            self.text.pooler.requires_grad_(False)
        if not bert and self.text.head is not None:
            self.text.head.requires_grad_(False)  # an untied language-model head is not used
        return (not bert) if text_causal is None else bool(text_causal)

    # ---------------------------------------------------------------- LiT
    def lock_image_tower(self) -> None:
        """LiT: freeze the image tower and its projection (``requires_grad=False``, eval mode from now on: no
        dropout or drop-path even under ``train()``); ``encode_image`` then runs without autograd."""
        for m in (self.visual, self.visual_proj):
            m.requires_grad_(False).eval()
        self.lock_image = self.config["lock_image"] = True

    def lock_text_tower(self) -> None:
        """Freeze the text tower and its projection, as :meth:`lock_image_tower`."""
        for m in (self.text, self.text_proj):
            m.requires_grad_(False).eval()
        self.lock_text = self.config["lock_text"] = True

    def train(self, mode: bool = True) -> CLIP:
        """As ``nn.Module.train``, but a locked tower stays in eval mode."""
        super().train(mode)
        for locked, modules in ((self.lock_image, (self.visual, self.visual_proj)),
                                (self.lock_text, (self.text, self.text_proj))):  # fmt: skip
            for m in modules if locked else ():
                m.eval()
        return self

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The temperature, the bias and the towers' own position tables and tokens."""
        names = {"logit_scale", "logit_bias"}
        for prefix, tower in (("visual", self.visual), ("text", self.text)):
            names |= {f"{prefix}.{n}" for n in tower.no_weight_decay()}
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the blocks' activations of both towers in the backward pass."""
        self.visual.set_grad_checkpointing(enable)
        if isinstance(self.text, GPT):
            self.text.set_grad_checkpointing(enable)

    @torch.no_grad()
    def clamp_logit_scale(self, max_scale: float = 100.0) -> None:
        """Clamp the temperature to ``[1, max_scale]`` in place, as CLIP and open_clip do after every step."""
        self.logit_scale.clamp_(0.0, math.log(max_scale))

    # ---------------------------------------------------------------- encoders
    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        """Images (B, C, H, W) -> embeddings (B, embed_dim); unit length with ``normalize``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.lock_image):
            x = self.visual_proj(self.visual.forward_pooled(images))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, normalize: bool = False
    ) -> Tensor:
        """Token ids (B, L) -> embeddings (B, embed_dim); unit length with ``normalize``.

        ``attention_mask`` (B, L): 1 = token, 0 = padding (kept out of attention and of ``"mean"`` pooling). Without
        it a BERT tower treats its ``pad_token_id`` as padding and a GPT-shaped tower attends to every position
        (CLIP's padding comes after the end-of-text token, which a causal tower never lets it influence).

        Raises:
            TypeError: ids that are not an integer (B, L) tensor.
            ValueError: a text longer than the tower's context; ``text_pool="eos"`` and a text without
                ``eos_token_id``.
        """
        if input_ids.dtype not in (torch.int32, torch.int64) or input_ids.dim() != 2:
            raise TypeError(
                f"input_ids must be integer (batch, length), got {input_ids.dtype} {tuple(input_ids.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.lock_text):
            at = self._pool_position(input_ids)
            self._check_pooled_tokens(at, attention_mask)
            if at is not None and isinstance(self.text, GPT):  # its last block computes that token only
                input_ids, attention_mask = self._trim_after(at, input_ids, attention_mask)
                x = self._text_hidden(input_ids, attention_mask, at)
            else:
                x = self._pool_text(self._text_hidden(input_ids, attention_mask), input_ids, attention_mask)
            x = self.text_proj(x)
        return F.normalize(x, dim=-1) if normalize else x

    def _pool_position(self, ids: Tensor) -> Tensor | None:
        """(B,) the position each text is pooled at, or None for a pooling over several positions (mean, pooler).

        Raises:
            ValueError: ``text_pool="eos"`` and a text without ``eos_token_id``."""
        if self.text_pool not in ("argmax", "eos", "first", "last"):
            return None
        if self.text_pool == "argmax":
            return ids.argmax(dim=-1)
        if self.text_pool == "eos":
            found = ids == self.eos_token_id
            if not torch.compiler.is_compiling() and not found.any(dim=-1).all():
                missing = (~found.any(dim=-1)).nonzero().flatten().tolist()
                raise ValueError(
                    f"text_pool='eos': texts {missing} hold no end-of-text token ({self.eos_token_id})"
                )
            return found.int().argmax(dim=-1)
        return torch.full(
            (ids.shape[0],), 0 if self.text_pool == "first" else ids.shape[1] - 1, device=ids.device
        )

    def _check_pooled_tokens(self, at: Tensor | None, attention_mask: Tensor | None) -> None:
        """Refuse a text pooled at an end-of-text token its ``attention_mask`` marks as padding (its vector would
        be a padding token's). SigLIP's ``"last"`` pools the last position whatever the mask says, as it does."""
        if (
            self.text_pool not in ("argmax", "eos")
            or at is None
            or attention_mask is None
            or not may_inspect_values()
        ):
            return
        padded = attention_mask[torch.arange(len(at), device=at.device), at] == 0
        if padded.any():
            raise ValueError(
                f"text_pool={self.text_pool!r} pools texts {padded.nonzero().flatten().tolist()} at a position "
                f"their attention_mask marks as padding: the mask must cover the end-of-text token"
            )

    def _trim_after(
        self, at: Tensor, ids: Tensor, attention_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Drop the positions after the last pooled one (``at``: (B,)) from a causal tower's input: no pooled
        token sees them (exact), as a tokenizer padding to the batch's longest text would. CLIP's tokenizers pad
        every caption to the context (77); this skips the padding every caption of the batch has."""
        if (not self.text_causal or at.numel() == 0 or ids.shape[1] > self.text.block_size
                or not may_inspect_values()):  # fmt: skip
            return ids, attention_mask  # (a text longer than the context is refused by the tower, by name)
        end = int(at.max()) + 1
        if end >= ids.shape[1]:
            return ids, attention_mask
        return ids[:, :end], None if attention_mask is None else attention_mask[:, :end]

    def _text_hidden(self, ids: Tensor, attention_mask: Tensor | None, at: Tensor | None = None) -> Tensor:
        """The text tower's hidden states (B, L, D), or (B, D) at positions ``at`` (a GPT-shaped tower)."""
        if isinstance(self.text, BertEncoder):
            return self.text.forward_features(ids, attention_mask)
        padding = None if attention_mask is None else attention_mask == 0
        if padding is not None and may_inspect_values():
            if not padding.any() or (
                self.text_causal and self.text_pool != "last" and _right_padded(padding)
            ):
                # no mask at all: the fastest attention kernel. Padding after every token (CLIP's) changes
                # nothing a causal tower computes at the tokens, and only tokens are pooled
                padding = None
        return self.text.forward_features(ids, key_padding_mask=padding, is_causal=self.text_causal, at=at)

    def _pool_text(self, hidden: Tensor, ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Hidden states (B, L, D) -> (B, D) by ``text_pool``."""
        at = self._pool_position(ids)
        if at is not None:
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), at]
        if self.text_pool == "pooler":
            return self.text.pool(hidden)
        if attention_mask is None and isinstance(self.text, BertEncoder):
            attention_mask = ids != self.text.pad_token_id
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    # ---------------------------------------------------------------- both
    def forward(
        self, images: Tensor | None, input_ids: Tensor | None, attention_mask: Tensor | None = None
    ) -> dict[str, Tensor | None]:
        """Images (B, C, H, W) and texts (B', L) -> ``{"image_embeds": (B, D), "text_embeds": (B', D)`` (both unit
        length), ``"logit_scale"``: the temperature's multiplier ``exp(logit_scale)`` (a scalar), ``"logit_bias"``:
        SigLIP's bias or None}: what :func:`~vitkit.models.contrastive.clip_loss` / ``siglip_loss`` take.

        Either input may be None (its embeddings are then None): a training step whose texts' embeddings are
        cached (a locked text tower) still goes through ``forward``, as DDP needs."""
        return {
            "image_embeds": None if images is None else self.encode_image(images, normalize=True),
            "text_embeds": None
            if input_ids is None
            else self.encode_text(input_ids, attention_mask, normalize=True),
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }

    def logits(self, image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """Unit-length embeddings (B, D), (B', D) -> logits (B, B') = exp(logit_scale) * cosine (+ logit_bias):
        softmax over texts for CLIP zero-shot, sigmoid for SigLIP probabilities."""
        logits = self.logit_scale.exp() * image_embeds @ text_embeds.T
        return logits if self.logit_bias is None else logits + self.logit_bias

    def extra_repr(self) -> str:
        return f"family=clip, params={sum(p.numel() for p in self.parameters()) / 1e6:.2f}M"


register_family("clip", CLIP)
