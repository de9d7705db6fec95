"""Vision Transformer (Dosovitskiy et al. 2021) and DeiT's distilled variant (Touvron et al. 2021).

Read top to bottom: image -> patch tokens -> [cls | dist | registers] prefix tokens -> + position table
-> pre-norm encoder blocks -> final norm -> pool -> head. Parameter names follow timm, so timm state
dicts load as they are; HuggingFace and JAX layouts are converted in ``vitkit.weights``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import (
    AttentionPoolLatent,
    EncoderBlock,
    PatchEmbed,
    resample_abs_pos_embed,
    sincos_2d,
    to_2tuple,
)
from ..registry import register_family
from ._checks import check_args
from ._head import new_head

__all__ = ["VisionTransformer", "build_backbone"]

PoolType = Literal["token", "avg", "map", "none"]


def _sizes(name: str, value: int | Sequence[int]) -> dict[str, int]:
    """``img_size=(32, 128)`` -> {'img_size': 32, 'img_size[1]': 128} for :func:`check_args`."""
    if isinstance(value, (int, float)):
        return {name: value}
    return {name if i == 0 else f"{name}[{i}]": v for i, v in enumerate(value)}


def _check_vit_args(args: dict[str, Any]) -> None:
    """Refuse bad VisionTransformer arguments by name (``args``: the constructor's arguments)."""
    a = args
    check_args(
        "VisionTransformer",
        positive={"embed_dim": a["embed_dim"], "num_heads": a["num_heads"], "mlp_ratio": a["mlp_ratio"],
                  "in_chans": a["in_chans"], "norm_eps": a["norm_eps"], **_sizes("img_size", a["img_size"]),
                  **_sizes("patch_size", a["patch_size"])},
        nonnegative={"num_classes": a["num_classes"], "depth": a["depth"], "reg_tokens": a["reg_tokens"]},
        rates={k: a[k] for k in ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate",
                                 "drop_path_rate")},
        integers=("embed_dim", "num_heads", "in_chans", "num_classes", "depth", "reg_tokens", "img_size",
                  "patch_size"),
        divisible=(("embed_dim", a["embed_dim"], "num_heads", a["num_heads"]),),
    )  # fmt: skip
    if a["global_pool"] not in ("token", "avg", "map", "none"):
        raise ValueError(f"global_pool must be 'token', 'avg', 'map' or 'none', got {a['global_pool']!r}")
    if a["global_pool"] == "token" and not a["class_token"]:
        raise ValueError("global_pool='token' needs class_token=True")
    if a["distilled"] and not a["class_token"]:
        raise ValueError("a distilled ViT needs its class token")


def _vit_config(args: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments as stored in ``model.config`` (sizes and stems as plain lists)."""
    config = dict(args)
    config["img_size"] = list(to_2tuple(args["img_size"]))
    config["patch_size"] = list(to_2tuple(args["patch_size"]))
    config["stem_channels"] = [int(c) for c in args["stem_channels"]]
    config["stem_strides"] = None if args["stem_strides"] is None else [int(c) for c in args["stem_strides"]]
    return config


def _encoder_blocks(args: dict[str, Any]) -> nn.Sequential:
    """The pre-norm encoder blocks, with stochastic depth growing linearly with depth."""
    a, depth = args, args["depth"]
    dpr = torch.linspace(
        0, a["drop_path_rate"], depth, device="cpu"
    ).tolist()  # (plain numbers, also on meta)
    return nn.Sequential(*[
        EncoderBlock(
            a["embed_dim"], a["num_heads"], mlp_ratio=a["mlp_ratio"], qkv_bias=a["qkv_bias"], qk_norm=a["qk_norm"],
            proj_drop=a["proj_drop_rate"], attn_drop=a["attn_drop_rate"], init_values=a["init_values"],
            drop_path=dpr[i], act_layer=a["act_layer"], norm_eps=a["norm_eps"],
        )
        for i in range(depth)
    ])  # fmt: skip


class VisionTransformer(nn.Module):
    """ViT / DeiT classifier with timm-compatible parameter names.

    Args:
        img_size, patch_size, in_chans: input geometry; the image must be divisible by the patch.
        num_classes: head outputs (0 = no head, ``forward`` returns pooled features).
        global_pool: "token" (class token), "avg" (mean of patch tokens, with ``fc_norm``), "map" (attention
            pooling of the patch tokens by a learned query: SigLIP's head, :class:`~vitkit.layers.AttentionPoolLatent`,
            as ``attn_pool``) or "none".
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_norm: encoder shape.
        class_token, reg_tokens, distilled: prefix tokens (class, register tokens, DeiT distillation token).
        pos_embed: "learn" (learned table), "sincos" (fixed 2D sin-cos, as MAE) or "none".
        no_embed_class: the position table covers only patches, not prefix tokens (DeiT-III, big_vision).
        dynamic_img_size: accept any divisible input size, resampling the position table on the fly.
        init_values: LayerScale init (None = no LayerScale). drop_path_rate: stochastic depth, linear in depth.
        stem_channels, stem_strides: channels (and optionally strides) of a convolutional stem before the patch
            projection (see ``PatchEmbed``); empty = the classic single strided convolution.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: PoolType = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        init_values: float | None = None,
        class_token: bool = True,
        reg_tokens: int = 0,
        distilled: bool = False,
        pos_embed: Literal["learn", "sincos", "none"] = "learn",
        no_embed_class: bool = False,
        dynamic_img_size: bool = False,
        pre_norm: bool = False,
        fc_norm: bool | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        act_layer: str = "gelu",  # "quick_gelu": OpenAI CLIP's towers
        norm_eps: float = 1e-6,
        stem_channels: Sequence[int] = (),
        stem_strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        _check_vit_args(args)
        self.config: dict[str, Any] = _vit_config(args)

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = int(class_token) + int(distilled) + reg_tokens
        self.num_reg_tokens = reg_tokens
        self.no_embed_class = no_embed_class
        self.dynamic_img_size = dynamic_img_size
        self.distilled = distilled
        self.distilled_training = False  # DeiT: return (cls_logits, dist_logits) while training
        self.grad_checkpointing = False
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm

        # submodules and parameters are created in this order (it fixes the seeded initial weights)
        self._build_embeddings(args)
        self.blocks = _encoder_blocks(args)
        self.attn_pool = (
            AttentionPoolLatent(embed_dim, num_heads, mlp_ratio, qkv_bias, act_layer, norm_eps)
            if global_pool == "map"
            else None
        )
        self._build_head(embed_dim, num_classes, drop_rate, norm_eps, use_fc_norm)
        self.init_weights()

    def _build_embeddings(self, args: dict[str, Any]) -> None:
        """Patch embedding, prefix tokens, position table, position dropout and the optional pre-norm."""
        embed_dim, dynamic = args["embed_dim"], args["dynamic_img_size"]
        self.patch_embed = PatchEmbed(
            args["img_size"], args["patch_size"], args["in_chans"], embed_dim, bias=not args["pre_norm"],
            strict_img_size=not dynamic, flatten=not dynamic, stem_channels=args["stem_channels"],
            stem_strides=args["stem_strides"],
        )  # fmt: skip
        reg_tokens = args["reg_tokens"]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if args["class_token"] else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if args["distilled"] else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self._build_pos_embed(args["pos_embed"], embed_dim)
        self.pos_drop = nn.Dropout(args["pos_drop_rate"])
        self.norm_pre = nn.LayerNorm(embed_dim, eps=args["norm_eps"]) if args["pre_norm"] else nn.Identity()

    def _build_pos_embed(self, kind: str, embed_dim: int) -> None:
        """The position table: a learned parameter, a fixed sin-cos buffer or None."""
        embed_len = self.patch_embed.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)
        self.pos_embed_type = kind
        if kind == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim))
        elif kind == "sincos":
            if not self.no_embed_class:
                raise ValueError(
                    "pos_embed='sincos' needs no_embed_class=True (the table covers patches only)"
                )
            self.register_buffer("pos_embed", sincos_2d(self.patch_embed.grid_size, embed_dim)[None], False)
        elif kind == "none":
            self.pos_embed = None
        else:
            raise ValueError(f"pos_embed must be 'learn', 'sincos' or 'none', got {kind!r}")

    def _build_head(
        self, embed_dim: int, num_classes: int, drop_rate: float, norm_eps: float, use_fc_norm: bool
    ) -> None:
        """Final norm (or ``fc_norm`` after pooling), head dropout, the head and DeiT's distillation head."""
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = (
            (nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity())
            if self.distilled
            else None
        )

    # ---------------------------------------------------------------- set-up
    def init_weights(self) -> None:
        """timm's default ViT init: truncated-normal(0.02) tables and linears, tiny prefix tokens."""
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight  # init the patch projection like a linear layer (MAE)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not get weight decay."""
        return {"pos_embed", "cls_token", "dist_token", "reg_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: PoolType | None = None) -> None:
        """Replace the head (and optionally the pooling) for a new number of classes."""
        self.num_classes = self.config["num_classes"] = num_classes
        if global_pool is not None:
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token")
            if global_pool == "map" and self.attn_pool is None:
                raise ValueError(
                    "global_pool='map' needs the attention-pooling head: build the model with it"
                )
            if global_pool != "map":
                self.attn_pool = None
            self.global_pool = self.config["global_pool"] = global_pool
        self.head = new_head(self, self.embed_dim, num_classes)  # the model's device and dtype
        if self.distilled:
            self.head_dist = new_head(self, self.embed_dim, num_classes)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Change the expected input size, resampling the learned position table once."""
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_img_size(img_size)
        self.config["img_size"] = list(self.patch_embed.img_size)
        new_grid = self.patch_embed.grid_size
        if isinstance(self.pos_embed, nn.Parameter):
            prefix = 0 if self.no_embed_class else self.num_prefix_tokens
            with torch.no_grad():
                table = resample_abs_pos_embed(self.pos_embed, new_grid, old_grid, num_prefix_tokens=prefix)
            self.pos_embed = nn.Parameter(table)
        elif self.pos_embed is not None:
            self.pos_embed = sincos_2d(new_grid, self.embed_dim)[None].to(self.pos_embed)  # device and dtype

    # ---------------------------------------------------------------- forward
    def prefix_tokens(self, batch: int) -> list[Tensor]:
        tokens = [t for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        return [t.expand(batch, -1, -1) for t in tokens]

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Add position embeddings and the prefix tokens: (B, N, D) or (B, h, w, D) -> (B, prefix + N, D)."""
        if self.dynamic_img_size:
            B, h, w, D = x.shape
            x = x.reshape(B, h * w, D)
            pos_embed = self.pos_embed
            if pos_embed is not None and (h, w) != self.patch_embed.grid_size:
                if isinstance(pos_embed, nn.Parameter):
                    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
                    pos_embed = resample_abs_pos_embed(pos_embed, (h, w), self.patch_embed.grid_size, prefix)
                else:
                    pos_embed = sincos_2d((h, w), D)[None].to(x)
        else:
            pos_embed = self.pos_embed
        prefix = self.prefix_tokens(x.shape[0])
        if pos_embed is None:
            x = torch.cat(prefix + [x], dim=1)
        elif self.no_embed_class:
            x = torch.cat(prefix + [x + pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos_embed
        return self.pos_drop(x)

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, prefix + N, D)."""
        x = self.norm_pre(self._pos_embed(self.patch_embed(x)))
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(x)

    def pool(self, x: Tensor) -> Tensor:
        """Tokens (B, L, D) -> (B, D) by the class token, the mean of patch tokens or attention pooling."""
        if self.attn_pool is not None:
            return self.attn_pool(x[:, self.num_prefix_tokens :])
        if self.global_pool == "token":
            return x[:, 0]
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Tokens -> logits (B, num_classes), or pooled features (B, D) with ``pre_logits``."""
        if self.distilled:
            cls_feat, dist_feat = self.fc_norm(x[:, 0]), self.fc_norm(x[:, 1])
            if pre_logits:
                return (cls_feat + dist_feat) / 2
            cls_logits, dist_logits = (
                self.head(self.head_drop(cls_feat)),
                self.head_dist(self.head_drop(dist_feat)),
            )
            if self.distilled_training and self.training:
                return cls_logits, dist_logits
            return (cls_logits + dist_logits) / 2  # DeiT inference: average the two heads
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward_pooled(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> pooled features (B, num_features): ``forward_head(forward_features(x),
        pre_logits=True)``. With class-token pooling the last block computes the class token only (its keys and
        values still come from every token, ``EncoderBlock(..., at=)``): the same features
        for about ``1/depth`` less work (CLIP's image tower)."""
        last = self.blocks[-1] if len(self.blocks) else None
        if self.global_pool != "token" or self.distilled or self.attn_pool is not None or last is None:
            return self.forward_head(self.forward_features(x), pre_logits=True)
        x = self.norm_pre(self._pos_embed(self.patch_embed(x)))
        for block in self.blocks[:-1]:
            x = self._run_block(block, x)
        x = last(x, at=torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        return self.forward_head(self.norm(x), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: Literal["NCHW", "NLC"] = "NCHW",
        return_prefix_tokens: bool = False,
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Per-block features for dense tasks.

        ``indices``: an int n takes the last n blocks, a sequence takes those block indices (negative allowed),
        None takes all. Patch features come as (B, D, h, w) ("NCHW") or (B, N, D) ("NLC"); with
        ``return_prefix_tokens`` each item is a (features, prefix tokens (B, P, D)) pair.
        Returns the intermediates, and unless ``intermediates_only`` the final normalised tokens first.
        """
        depth = len(self.blocks)
        if indices is None:
            take = list(range(depth))
        elif isinstance(indices, int):
            take = list(range(depth - indices, depth))
        else:
            if any(not -depth <= i < depth for i in indices):
                raise ValueError(f"block indices {list(indices)} out of range for a model of depth {depth}")
            take = [i % depth for i in indices]
        if not take or min(take) < 0:
            raise ValueError(f"block indices {indices} out of range for a model of depth {depth}")
        B, _, H, W = x.shape
        grid_h, grid_w = H // self.patch_embed.patch_size[0], W // self.patch_embed.patch_size[1]
        x = self.norm_pre(self._pos_embed(self.patch_embed(x)))
        outputs = []
        last = max(take)
        for i, block in enumerate(self.blocks):
            x = self._run_block(block, x)
            if i in take:
                feat = self.norm(x) if norm else x
                prefix, patches = feat[:, : self.num_prefix_tokens], feat[:, self.num_prefix_tokens :]
                if output_fmt == "NCHW":
                    patches = patches.reshape(B, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()
                outputs.append((patches, prefix) if return_prefix_tokens else patches)
            if intermediates_only and i == last:
                return outputs
        return self.norm(x), outputs

    def extra_repr(self) -> str:
        return f"family=vit, params={sum(p.numel() for p in self.parameters()) / 1e6:.2f}M"


register_family("vit", VisionTransformer)


def build_backbone(name: str, args: dict[str, Any] | None, role: str, **overrides: Any):
    """A headless registry ViT for a larger model (MAE encoder, DETR / Segmenter backbone).

    ``overrides`` that are not None replace entries of ``args``; returns (the ViT, the complete argument dict to
    store in the owner's config). A model that is not a ViT is refused, naming ``role``.
    """
    from ..registry import create_model

    args = {**(args or {}), **{k: v for k, v in overrides.items() if v is not None}, "num_classes": 0}
    model = create_model(name, **args)
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"the {role} must be a ViT, got {name!r} ({type(model).__name__})")
    return model, args


def freeze_head(model: VisionTransformer) -> None:
    """Take the gradient from the parts only ``forward_head`` reads (``fc_norm``, attention pooling, the heads): a
    dense model (DETR, Segmenter) reads ``forward_features``, and PyTorch DDP refuses parameters that never get a
    gradient. Their weights stay in the state dict (a backbone file keeps loading)."""
    for name in ("fc_norm", "attn_pool", "head", "head_dist"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            module.requires_grad_(False)


def vit_flops(model: VisionTransformer, img_size: tuple[int, int] | None = None) -> int:
    """Approximate forward FLOPs (2 x multiply-adds) of the encoder and head for one image."""
    h, w = img_size or model.patch_embed.img_size
    ph, pw = model.patch_embed.patch_size
    n = (h // ph) * (w // pw)
    length = n + model.num_prefix_tokens
    d = model.embed_dim
    c_in = model.patch_embed.in_chans
    hidden = model.blocks[0].mlp.fc1.out_features if len(model.blocks) else 0
    per_block = 2 * length * (3 * d * d + d * d + 2 * d * hidden) + 2 * 2 * length * length * d
    head = 2 * d * model.num_classes
    if model.attn_pool is not None:  # the query's projections and attention, and the MLP of one token
        head += 2 * (n * 2 * d * d + 2 * d * d + n * 2 * d + 2 * d * hidden)
    embed = 2 * n * c_in * ph * pw * d
    if model.patch_embed.stem is not None:
        embed, hh, ww = 0, h, w
        for m in list(model.patch_embed.stem) + [model.patch_embed.proj]:
            if isinstance(m, nn.Conv2d):
                hh, ww = hh // m.stride[0], ww // m.stride[1]
                embed += 2 * hh * ww * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
    return int(embed + len(model.blocks) * per_block + head)
