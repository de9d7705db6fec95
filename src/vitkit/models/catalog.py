"""Every named model: its family and constructor arguments, written without PyTorch.

The named configurations live apart from the model code (as HuggingFace keeps ``configuration_*.py`` beside
``modeling_*.py``) so that ``vitkit models`` and ``vitkit --help`` list and parse without importing PyTorch;
:mod:`vitkit.registry` reads :data:`MODELS` at import and imports a family's module (:data:`FAMILY_MODULES`) the
first time a model of that family is built.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MODELS", "FAMILY_MODULES"]

#: family name -> the module whose import registers it (``register_family``)
FAMILY_MODULES: dict[str, str] = {
    "vit": "vitkit.models.vit",
    "resnet": "vitkit.models.resnet",
    "mae": "vitkit.models.mae",
    "detr": "vitkit.models.detr",
    "segmenter": "vitkit.models.segmenter",
    "bert": "vitkit.models.bert",
    "bert_mlm": "vitkit.models.bert",
    "seq2seq": "vitkit.models.seq2seq",
    "gpt": "vitkit.models.gpt",
    "clip": "vitkit.models.clip",
}

#: model name -> (family, constructor arguments)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {}


def _add(name: str, family: str, **config: Any) -> None:
    if name in MODELS:
        raise ValueError(f"model {name!r} is named twice in the catalog")
    MODELS[name] = (family, config)


# ---------------------------------------------------------------- ViT / DeiT (Dosovitskiy et al. 2021, Touvron et al. 2021)
# (width, depth, heads) per size; the registry is the cross product of sizes x patches x image sizes.
VIT_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
VIT_PATCHES = (32, 16, 14, 8)
VIT_IMAGES = (224, 384)

for _size, (_dim, _depth, _heads) in VIT_SIZES.items():
    _shape = dict(embed_dim=_dim, depth=_depth, num_heads=_heads)
    for _patch in VIT_PATCHES:
        for _img in VIT_IMAGES:
            _add(f"vit_{_size}_patch{_patch}_{_img}", "vit", img_size=_img, patch_size=_patch, **_shape)
    if _size in ("tiny", "small", "base"):  # DeiT: same shapes, trained with distillation at 224 (B also 384)
        for _img in (224, 384) if _size == "base" else (224,):
            _add(f"deit_{_size}_patch16_{_img}", "vit", img_size=_img, patch_size=16, **_shape)
            _add(f"deit_{_size}_distilled_patch16_{_img}", "vit", img_size=_img, patch_size=16, distilled=True,
                 **_shape)  # fmt: skip
# Small-image models for the datasets vitkit trains on a laptop CPU.
_add("vit_digits", "vit", img_size=8, patch_size=2, in_chans=1, num_classes=10,
     embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, global_pool="avg")  # fmt: skip
_add("vit_mnist", "vit", img_size=28, patch_size=4, in_chans=1, num_classes=10,
     embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, global_pool="avg")  # fmt: skip
_add("vit_cifar", "vit", img_size=32, patch_size=4, num_classes=10,
     embed_dim=192, depth=9, num_heads=3, mlp_ratio=2.0, global_pool="avg")  # fmt: skip
# ViT_C (Xiao et al. 2021): the same encoders behind a convolutional stem (3x3 conv-BN-ReLU stages, stride 2
# while the patch allows) instead of one strided patch convolution: same tokens, far faster learning.
_add("vitc_mnist", "vit", img_size=28, patch_size=4, in_chans=1, num_classes=10,
     embed_dim=96, depth=3, num_heads=3, mlp_ratio=2.0, global_pool="avg",
     stem_channels=(16, 64, 128, 128), stem_strides=(1, 2, 2, 1))  # fmt: skip
_add("vitc_cifar", "vit", img_size=32, patch_size=4, num_classes=10,
     embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, global_pool="avg",
     stem_channels=(32, 64, 128), stem_strides=(1, 2, 2))  # fmt: skip

# ---------------------------------------------------------------- ResNet (He et al. 2016), small-image baselines
# 28x28 grey: 0.17M params, 40 MFLOPs/img; 32x32 RGB: 0.70M params, 210 MFLOPs/img
_add("resnet_mnist", "resnet", img_size=28, in_chans=1, num_classes=10, widths=(16, 32, 64),
     depths=(2, 2, 2), stem_channels=16)  # fmt: skip
_add("resnet_cifar", "resnet", img_size=32, in_chans=3, num_classes=10, widths=(32, 64, 128),
     depths=(2, 2, 2), stem_channels=32)  # fmt: skip

# ---------------------------------------------------------------- MAE (He et al. 2022)
# MNIST-sized MAE: the plain-patch ViT of vit_mnist (4x4 patches, 49 tokens) with MAE's fixed 2D sin-cos positions
_add("mae_vit_mnist", "mae", encoder="vit_mnist",
     encoder_args={"pos_embed": "sincos", "no_embed_class": True}, decoder_dim=64, decoder_depth=2,
     decoder_heads=4)  # fmt: skip
_add("mae_vit_digits", "mae", encoder="vit_digits",
     encoder_args={"pos_embed": "sincos", "no_embed_class": True}, decoder_dim=32, decoder_depth=1,
     decoder_heads=2)  # fmt: skip
_add("mae_vit_base_patch16_224", "mae", encoder="vit_base_patch16_224",
     encoder_args={"pos_embed": "sincos", "no_embed_class": True}, decoder_dim=512, decoder_depth=8,
     decoder_heads=16, decoder_mlp_ratio=4.0)  # fmt: skip

# ---------------------------------------------------------------- DETR (Carion et al. 2020) on a ViT backbone
_add("detr_vit_canvas", "detr", backbone="vit_mnist", backbone_args={"img_size": 64, "patch_size": 8},
     num_queries=16, embed_dim=128, decoder_depth=3, num_heads=4)  # fmt: skip
# the canvas detector that converges on a CPU: a conv stem under the 8x8 patch grid and one query per patch
_add("detr_vitc_canvas", "detr", backbone="vit_mnist", queries="patches", embed_dim=128, decoder_depth=3,
     backbone_args={"img_size": 64, "patch_size": 8, "stem_channels": (32, 64, 128)}, num_heads=4)  # fmt: skip

# ---------------------------------------------------------------- Segmenter (Strudel et al. 2021)
_add("segmenter_vit_canvas", "segmenter", backbone="vit_mnist",
     backbone_args={"img_size": 64, "patch_size": 4}, decoder="mask")  # fmt: skip
_add("segmenter_linear_vit_canvas", "segmenter", backbone="vit_mnist",
     backbone_args={"img_size": 64, "patch_size": 4}, decoder="linear")  # fmt: skip

# ---------------------------------------------------------------- BERT (Devlin et al. 2019)
_add("bert_base_uncased", "bert")
_add("minilm_l6_h384_uncased", "bert", embed_dim=384, depth=6, num_heads=12, mlp_dim=1536)
_add("bert_tiny", "bert", embed_dim=128, depth=2, num_heads=2, mlp_dim=512)

# ---------------------------------------------------------------- encoder-decoder Transformer (Vaswani et al. 2017)
_add("transformer_base", "seq2seq", embed_dim=512, encoder_depth=6, decoder_depth=6, num_heads=8,
     mlp_dim=2048, vocab_size=16000)  # fmt: skip
_add("transformer_small", "seq2seq", embed_dim=256, encoder_depth=3, decoder_depth=3, num_heads=4,
     mlp_dim=1024)  # fmt: skip
_add("transformer_tiny", "seq2seq", embed_dim=64, encoder_depth=2, decoder_depth=2, num_heads=2,
     mlp_dim=128, vocab_size=64, max_len=64)  # fmt: skip

# ---------------------------------------------------------------- GPT (Radford et al. 2019)
# GPT-2: the four released sizes, context 1024, BPE vocabulary of 50,257
for _name, (_dim, _depth, _heads) in {
    "gpt2": (768, 12, 12),  # 124M
    "gpt2_medium": (1024, 24, 16),  # 350M
    "gpt2_large": (1280, 36, 20),  # 774M
    "gpt2_xl": (1600, 48, 25),  # 1.5B
}.items():
    _add(_name, "gpt", embed_dim=_dim, depth=_depth, num_heads=_heads, vocab_size=50257, block_size=1024)
# small models for small data (character-level Shakespeare: vocab_size is set by the tokenizer)
_add("gpt_nano", "gpt", embed_dim=64, depth=2, num_heads=2, block_size=64, vocab_size=256)
_add("gpt_micro", "gpt", embed_dim=128, depth=4, num_heads=4, block_size=64, vocab_size=256)
_add("gpt_mini", "gpt", embed_dim=192, depth=6, num_heads=6, block_size=128, vocab_size=256)
_add("gpt_small_char", "gpt", embed_dim=384, depth=6, num_heads=6, block_size=256, vocab_size=256,
     drop_rate=0.2)  # fmt: skip

# ---------------------------------------------------------------- CLIP, SigLIP, LiT (Radford 2021, Zhai 2023, 2022)
# Text towers (GPT-shaped stacks; CLIP runs them causally, SigLIP bidirectionally). Vocabularies: CLIP's BPE (49,408
# tokens, context 77), SigLIP's SentencePiece (32,000, context 64).
_CLIP_TEXT = dict(vocab_size=49408, block_size=77, act_layer="quick_gelu", norm_eps=1e-5)
_add("clip_text_base", "gpt", embed_dim=512, depth=12, num_heads=8, **_CLIP_TEXT)
_add("clip_text_large", "gpt", embed_dim=768, depth=12, num_heads=12, **_CLIP_TEXT)
_add("clip_text_tiny", "gpt", embed_dim=128, depth=4, num_heads=4, vocab_size=49408, block_size=77)
_add("siglip_text_base", "gpt", embed_dim=768, depth=12, num_heads=12, vocab_size=32000, block_size=64,
     act_layer="gelu_tanh", norm_eps=1e-6)  # fmt: skip
# OpenAI CLIP image towers: class token, ln_pre (pre_norm), QuickGELU, LayerNorm eps 1e-5
_CLIP_VISION = dict(pre_norm=True, act_layer="quick_gelu", norm_eps=1e-5)
for _name, _vit, _text, _dim in (
    ("clip_vit_base_patch32", "vit_base_patch32_224", "clip_text_base", 512),
    ("clip_vit_base_patch16", "vit_base_patch16_224", "clip_text_base", 512),
    ("clip_vit_large_patch14", "vit_large_patch14_224", "clip_text_large", 768),
):
    _add(_name, "clip", vision=_vit, vision_args=_CLIP_VISION, text=_text, embed_dim=_dim)
# SigLIP B/16 (Zhai et al. 2023): "map" attention pooling, no image projection, a biased text head, sigmoid loss
_add(
    "siglip_base_patch16_224", "clip", vision="vit_base_patch16_224",
    vision_args=dict(class_token=False, global_pool="map", act_layer="gelu_tanh"), text="siglip_text_base",
    embed_dim=768, vision_proj=False, text_proj_bias=True, text_pool="last", text_causal=False,
    logit_scale_init=math.log(10), logit_bias_init=-10.0,
)  # fmt: skip
# Small images (32x32, e.g. CIFAR captions) on a CPU: ViT-Tiny width, 6 blocks, 4x4 patches, a 4-block text tower
_add("clip_vit_tiny_patch4_32", "clip", vision="vit_tiny_patch16_224",
     vision_args=dict(img_size=32, patch_size=4, depth=6, pre_norm=True), text="clip_text_tiny",
     embed_dim=128)  # fmt: skip
# LiT: a locked image tower (the CIFAR ViT, pre-trained) and MiniLM-L6 (BERT shape, 384 wide) with mean pooling
_add("lit_vit_cifar_minilm_l6", "clip", vision="vit_cifar", text="minilm_l6_h384_uncased",
     embed_dim=256, text_pool="mean", lock_image=True)  # fmt: skip
