"""The default published weights of registry models: what ``create_model(name, pretrained=True)`` loads.

As timm's ``default_cfgs``: one record per registry name (:data:`PRETRAINED_CFGS`, read by :mod:`vitkit.registry`;
:func:`vitkit.registry.register_pretrained_cfg` adds more) with the Hugging Face Hub repo and how the weights expect their inputs. The ViT / DeiT rows are timm 1.0's default tags for
the same names (``timm.models.get_pretrained_cfg(name)``; ``tests/test_hub.py`` compares every field with the
installed timm): mean/std ``0.5`` (Inception) for Google's AugReg / original ViTs, ImageNet's for DeiT and DINO; a
224 input is center-cropped from a ``224 / 0.9`` resize, a 384 one resized whole. Some default tags have no
ImageNet-1k head (``num_classes`` 0: ``orig_in21k`` features, DINO). GPT-2 and BERT point at the HuggingFace
transformers repos of the released models.
"""

from __future__ import annotations

from typing import Any

from .catalog import MODELS

__all__ = ["TIMM_VIT_TAGS", "HF_TEXT_REPOS", "PRETRAINED_CFGS"]

INCEPTION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

# registry name: (timm tag, num_classes, normalisation); the Hub repo is timm/<name>.<tag>
TIMM_VIT_TAGS = {
    "vit_tiny_patch16_224": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_tiny_patch16_384": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_small_patch32_224": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_small_patch32_384": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_small_patch16_224": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_small_patch16_384": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_small_patch8_224": ("dino", 0, IMAGENET),
    "vit_base_patch32_224": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_base_patch32_384": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_base_patch16_224": ("augreg2_in21k_ft_in1k", 1000, INCEPTION),
    "vit_base_patch16_384": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_base_patch8_224": ("augreg2_in21k_ft_in1k", 1000, INCEPTION),
    "vit_large_patch32_224": ("orig_in21k", 0, INCEPTION),
    "vit_large_patch32_384": ("orig_in21k_ft_in1k", 1000, INCEPTION),
    "vit_large_patch16_224": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_large_patch16_384": ("augreg_in21k_ft_in1k", 1000, INCEPTION),
    "vit_huge_patch14_224": ("orig_in21k", 0, INCEPTION),
    **{name: ("fb_in1k", 1000, IMAGENET) for name in (
        "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224", "deit_base_patch16_384",
        "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224",
        "deit_base_distilled_patch16_384")},
}  # fmt: skip

# registry name: (Hub repo, license) of the released HuggingFace transformers checkpoints
HF_TEXT_REPOS = {
    "gpt2": ("openai-community/gpt2", "mit"),
    "gpt2_medium": ("openai-community/gpt2-medium", "mit"),
    "gpt2_large": ("openai-community/gpt2-large", "mit"),
    "gpt2_xl": ("openai-community/gpt2-xl", "mit"),
    "bert_base_uncased": ("google-bert/bert-base-uncased", "apache-2.0"),
    "minilm_l6_h384_uncased": ("nreimers/MiniLM-L6-H384-uncased", "mit"),
}


def _records() -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for name, (tag, num_classes, stats) in TIMM_VIT_TAGS.items():
        size = int(MODELS[name][1]["img_size"])
        records[name] = dict(
            hf_hub_id=f"timm/{name}.{tag}", tag=tag, source="timm", license="apache-2.0",
            num_classes=num_classes, input_size=(3, size, size), crop_pct=0.9 if size == 224 else 1.0,
            crop_mode="center", interpolation="bicubic", **stats,
        )  # fmt: skip
    for name, (repo, license_) in HF_TEXT_REPOS.items():
        extra = {"num_classes": 0} if MODELS[name][0] == "bert" else {}
        records[name] = dict(hf_hub_id=repo, source="transformers", license=license_, **extra)
    return records


#: registry name -> its default published weights (without ``architecture``, which the registry adds)
PRETRAINED_CFGS: dict[str, dict[str, Any]] = _records()
