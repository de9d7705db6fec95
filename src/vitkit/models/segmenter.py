"""Semantic segmentation on a ViT (Strudel et al. 2021, Segmenter): a linear decoder and the mask transformer.

Read top to bottom: image -> registry ViT -> patch tokens (B, N, D) -> decoder -> per-patch class scores
(B, C, h, w) -> bilinear upsampling to the image (B, C, H, W).

- ``decoder="linear"``: one linear layer per patch token (the simple baseline).
- ``decoder="mask"``: ``num_classes`` learned class embeddings join the (projected) patch tokens in a few
  transformer blocks; each class's mask is the scalar product of the L2-normalised patch and class embeddings.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import EncoderBlock
from ..registry import register_family
from ._checks import check_args
from .vit import build_backbone, freeze_head

__all__ = ["Segmenter", "segmentation_metrics", "confusion_metrics"]


class Segmenter(nn.Module):
    """``forward(images) -> logits (B, num_classes, H, W)``."""

    def __init__(
        self,
        backbone: str = "vit_mnist",
        backbone_args: dict[str, Any] | None = None,
        num_classes: int = 11,
        decoder: Literal["linear", "mask"] = "mask",
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        drop_rate: float = 0.0,
        in_chans: int | None = None,
        img_size: int | None = None,
    ) -> None:
        super().__init__()
        if decoder not in ("linear", "mask"):
            raise ValueError(f"decoder must be 'linear' or 'mask', got {decoder!r}")
        check_args(
            "Segmenter",
            positive={"num_classes": num_classes, "decoder_dim": decoder_dim, "decoder_heads": decoder_heads},
            nonnegative={"decoder_depth": decoder_depth},
            rates={"drop_rate": drop_rate},
            integers=("num_classes", "decoder_dim", "decoder_heads", "decoder_depth"),
            divisible=(("decoder_dim", decoder_dim, "decoder_heads", decoder_heads),) if decoder == "mask" else (),
        )  # fmt: skip
        self.backbone, backbone_args = build_backbone(
            backbone, backbone_args, "Segmenter backbone", in_chans=in_chans, img_size=img_size
        )
        freeze_head(self.backbone)  # read through forward_features only
        self.config: dict[str, Any] = {
            "backbone": backbone, "backbone_args": backbone_args, "num_classes": num_classes, "decoder": decoder,
            "decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads,
            "drop_rate": drop_rate,
        }  # fmt: skip
        self.num_classes, self.decoder_type = num_classes, decoder
        dim = self.backbone.embed_dim
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if decoder == "linear":
            self.head = nn.Linear(dim, num_classes)
        else:
            self.proj = nn.Linear(dim, decoder_dim)
            self.class_embed = nn.Parameter(torch.randn(1, num_classes, decoder_dim) * 0.02)
            self.blocks = nn.ModuleList([
                EncoderBlock(decoder_dim, decoder_heads, proj_drop=drop_rate) for _ in range(decoder_depth)
            ])  # fmt: skip
            self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
            self.mask_norm = nn.LayerNorm(num_classes, eps=1e-6)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()} | {"class_embed"}

    def patch_scores(self, images: Tensor) -> Tensor:
        """Class scores per patch: (B, C, h, w)."""
        tokens = self.norm(self.backbone.forward_features(images)[:, self.backbone.num_prefix_tokens :])
        B, N, _ = tokens.shape
        h = images.shape[-2] // self.backbone.patch_embed.patch_size[0]
        w = N // h
        if self.decoder_type == "linear":
            scores = self.head(tokens)
        else:
            x = torch.cat([self.proj(tokens), self.class_embed.expand(B, -1, -1)], dim=1)
            for block in self.blocks:
                x = block(x)
            x = self.decoder_norm(x)
            patches, classes = F.normalize(x[:, :N], dim=-1), F.normalize(x[:, N:], dim=-1)
            scores = self.mask_norm(patches @ classes.transpose(1, 2))  # B, N, C
        return scores.transpose(1, 2).reshape(B, self.num_classes, h, w)

    def forward(self, images: Tensor) -> Tensor:
        scores = self.patch_scores(images)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


register_family("segmenter", Segmenter)


def segmentation_metrics(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255
) -> dict[str, Any]:
    """Pixel accuracy, per-class IoU and mIoU (over classes present in prediction or target) of label maps."""
    keep = target != ignore_index
    p, t = pred[keep].long().flatten(), target[keep].long().flatten()
    if ((p < 0) | (p >= num_classes) | (t < 0) | (t >= num_classes)).any():
        raise ValueError(f"labels outside [0, {num_classes})")
    confusion = torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    return {**confusion_metrics(confusion), "confusion": confusion}


def confusion_metrics(confusion: Tensor) -> dict[str, Any]:
    """Pixel accuracy, per-class IoU (NaN for a class in neither prediction nor target) and mIoU over the classes
    present, from a (target, prediction) confusion matrix -- e.g. one summed over batches."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    return {
        "pixel_acc": float(tp.sum() / max(1, int(confusion.sum()))),
        "mIoU": float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else 0.0,
        "iou": iou.tolist(),
    }
