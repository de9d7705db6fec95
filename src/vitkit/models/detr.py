"""DETR (Carion et al. 2020) on a ViT backbone: learned object queries decode the patch features into boxes.

Read top to bottom: image -> registry ViT -> patch tokens (B, N, D_b) -> LayerNorm + linear to the decoder width,
plus fixed 2D sin-cos positions -> decoder blocks (the library's :class:`~vitkit.layers.DecoderBlock`, no causal
mask: queries attend to each other and to the patches) -> per query a class (``num_classes`` + "no object") and a
box (cx, cy, w, h in [0, 1] of the image). Every decoder layer's output is also scored (auxiliary losses).

``anchors=True`` (the default) gives each query a learned reference point (Anchor DETR / DAB-DETR style), spread
over the image at the start: its sin-cos code -- the same code as the patches' positions -- joins the query at every
decoder layer, and the box centre is predicted as an offset from it (in logit space), so queries start out owning
regions of the image. (In a short A/B on MNIST canvases it learned no faster than ``anchors=False``, plain DETR's
position-free queries.) ``queries="patches"`` puts one query on every patch: its reference point starts at the
patch centre and its content starts from that patch's token (plus a learned embedding), as two-stage DETRs start
queries from encoder tokens. With a convolutional stem under the patch grid (``detr_vitc_canvas``) this is what
made the MNIST-canvas detector converge on a CPU (AP50 0.26 after 4 epochs, against 0.04 for patch queries on
the plain patch embedding and 0.01 for 16 learned queries).

``box_classifier=W`` adds a second stage (:class:`~vitkit.models.box_classifier.BoxClassifier`, a CNN of width
``W``): in eval mode each query's box is cropped from the input image and classified again, and the query's class
distribution becomes the decoder's times the box classifier's, renormalised (a product of experts), its
"no object" probability the decoder's. It learns from boxes given to ``forward`` (the ground truth in training).
On MNIST canvases, where the decoder mistook digits drawn over one another, it took held-out AP50 from 0.892 to
0.912, trained alone for 20 minutes on the frozen detector (docs/detection.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ..layers import DecoderBlock, Mlp, sincos_2d, sincos_2d_points
from ..registry import register_family
from ._checks import check_args
from .box_classifier import BoxClassifier, box_crops
from .vit import build_backbone, freeze_head

__all__ = ["DETR"]


def _check_arguments(a: dict[str, Any]) -> None:
    """DETR's arguments (its ``__init__``'s locals), each wrong one named."""
    check_args(
        "DETR",
        positive={k: a[k] for k in ("num_queries", "embed_dim", "decoder_depth", "num_heads", "mlp_ratio", "box_crop")},
        nonnegative={k: a[k] for k in ("num_classes", "box_classifier")},
        rates={"drop_rate": a["drop_rate"]},
        integers=("num_queries", "embed_dim", "decoder_depth", "num_heads", "num_classes", "box_classifier",
                  "box_crop"),
        divisible=(("embed_dim", a["embed_dim"], "num_heads", a["num_heads"]), ("embed_dim", a["embed_dim"], "4", 4)),
    )  # fmt: skip


class DETR(nn.Module):
    """Set-prediction detector. ``forward(images) -> {"pred_logits": (B, Q, C + 1), "pred_boxes": (B, Q, 4),
    "aux_outputs": [...]}`` (the last class is "no object"; boxes cxcywh normalised to [0, 1]).

    With a box classifier, ``forward(images, boxes)`` (``boxes``: per image an (N_i, 4) cxcywh tensor) also gives
    ``"box_logits"`` (sum N_i, C), its class logits for those boxes in image order; in eval mode ``pred_logits``
    are the log-probabilities of the product of experts (module docstring), in training mode the decoder's.
    """

    def __init__(
        self,
        backbone: str = "vit_mnist",
        backbone_args: dict[str, Any] | None = None,
        num_classes: int = 10,
        num_queries: int = 16,
        embed_dim: int = 128,
        decoder_depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.1,
        anchors: bool = True,
        queries: str = "learned",
        in_chans: int | None = None,
        img_size: int | None = None,
        box_classifier: int = 0,
        box_crop: int = 20,
    ) -> None:
        super().__init__()
        _check_arguments(dict(locals()))
        self.backbone, backbone_args = build_backbone(
            backbone, backbone_args, "DETR backbone", in_chans=in_chans, img_size=img_size
        )
        freeze_head(self.backbone)  # read through forward_features only
        self.config: dict[str, Any] = {
            "backbone": backbone, "backbone_args": backbone_args, "num_classes": num_classes,
            "num_queries": num_queries, "embed_dim": embed_dim, "decoder_depth": decoder_depth,
            "num_heads": num_heads, "mlp_ratio": mlp_ratio, "drop_rate": drop_rate, "anchors": anchors,
            "queries": queries, "box_classifier": box_classifier, "box_crop": box_crop,
        }  # fmt: skip
        num_queries = self._resolve_num_queries(queries, anchors, num_queries)
        self.queries = queries
        self.num_classes, self.num_queries = num_classes, num_queries
        self.input_proj = nn.Sequential(
            nn.LayerNorm(self.backbone.embed_dim), nn.Linear(self.backbone.embed_dim, embed_dim)
        )
        self.register_buffer(
            "pos_embed", sincos_2d(self.backbone.patch_embed.grid_size, embed_dim)[None], False
        )
        self.query_embed = nn.Parameter(torch.randn(1, num_queries, embed_dim) * 0.02)
        self.anchors = anchors
        if anchors:  # reference points (logits of cx, cy), on a grid over the image to start with
            self.reference = nn.Parameter(torch.logit(self._initial_points()))
        self.decoder = nn.ModuleList([
            DecoderBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, proj_drop=drop_rate) for _ in range(decoder_depth)
        ])  # fmt: skip
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.class_head = nn.Linear(embed_dim, num_classes + 1)
        self.box_head = Mlp(embed_dim, embed_dim, out_features=4)
        self.box_classifier = None  # the second stage, optional
        if box_classifier:
            self.box_classifier = BoxClassifier(
                self.backbone.patch_embed.in_chans, num_classes, box_classifier, box_crop
            )

    def _resolve_num_queries(self, queries: str, anchors: bool, num_queries: int) -> int:
        """Check ``queries``; patch queries put one query on every patch (recorded in the config)."""
        if queries not in ("learned", "patches"):
            raise ValueError(f"queries must be 'learned' or 'patches', got {queries!r}")
        if queries == "patches":
            if not anchors:
                raise ValueError("queries='patches' places one query on every patch: it needs anchors=True")
            num_queries = self.backbone.patch_embed.num_patches
            self.config["num_queries"] = num_queries
        return num_queries

    def _initial_points(self) -> Tensor:
        """(Q, 2) starting reference points (cx, cy) in (0, 1): a grid over the image, or the patch centres in
        token order for patch queries."""
        if self.queries == "patches":
            rows, cols = self.backbone.patch_embed.grid_size
        else:
            rows = cols = math.ceil(math.sqrt(self.num_queries))
        ys, xs = (torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols
        return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)[: self.num_queries]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()} | {"query_embed", "reference"}

    def features(self, images: Tensor) -> Tensor:
        """Patch tokens of the backbone, projected, with positions: (B, N, D)."""
        tokens = self.backbone.forward_features(images)[:, self.backbone.num_prefix_tokens :]
        return self.input_proj(tokens) + self.pos_embed

    def _heads(self, x: Tensor) -> dict[str, Tensor]:
        x = self.norm(x)
        boxes = self.box_head(x)
        if self.anchors:  # the centre is an offset from the query's reference point
            boxes = boxes + torch.cat([self.reference, torch.zeros_like(self.reference)], -1)
        return {"pred_logits": self.class_head(x), "pred_boxes": boxes.sigmoid()}

    def query_pos(self) -> Tensor:
        """(1, Q, D) sin-cos code of the reference points, in the patch grid's coordinates (as ``pos_embed``)."""
        h, w = self.backbone.patch_embed.grid_size
        cx, cy = self.reference.sigmoid().unbind(-1)
        return sincos_2d_points(cy * h - 0.5, cx * w - 0.5, self.pos_embed.shape[-1])[None]

    def _second_stage(self, images: Tensor, out: dict[str, Tensor]) -> Tensor:
        """(B, Q, C + 1) log-probabilities: the decoder's class distribution over real classes times the box
        classifier's at each query's box, renormalised, under the decoder's objectness."""
        box = self.box_classifier(images, out["pred_boxes"].detach())
        decoder = out["pred_logits"].float()
        log_p = decoder.log_softmax(-1)
        objectness = log_p[..., :-1].logsumexp(-1, keepdim=True)  # log(1 - p(no object))
        classes = (decoder[..., :-1].log_softmax(-1) + box.float().log_softmax(-1)).log_softmax(-1)
        return torch.cat([classes + objectness, log_p[..., -1:]], -1)

    def decode(self, images: Tensor) -> dict[str, Any]:
        """The decoder's outputs alone (no second stage): ``{"pred_logits", "pred_boxes", "aux_outputs"}``."""
        memory = self.features(images)
        x = self.query_embed.expand(images.shape[0], -1, -1)
        if self.queries == "patches":  # each query starts from the patch token it sits on
            x = x + memory
        pos = self.query_pos() if self.anchors else 0
        outputs = []
        for block in self.decoder:
            x = block(x + pos, memory, is_causal=False)
            outputs.append(self._heads(x))
        return {**outputs[-1], "aux_outputs": outputs[:-1]}

    def forward(self, images: Tensor, boxes: list[Tensor] | None = None) -> dict[str, Any]:
        result = self.decode(images)
        if self.box_classifier is None:
            return result
        if boxes is not None:  # every image's boxes cropped together (padded); only the real ones classified
            padded = pad_sequence([t.to(images.dtype) for t in boxes], batch_first=True)  # (B, max N_i, 4)
            count = torch.tensor([len(t) for t in boxes], device=images.device)
            real = torch.arange(padded.shape[1], device=images.device) < count[:, None]
            crops = box_crops(images, padded, self.box_classifier.crop_size)[real]
            result["box_logits"] = self.box_classifier.classify(crops)
        if not self.training:
            result["pred_logits"] = self._second_stage(images, result)
        return result


register_family("detr", DETR)
