"""Model families, one module each; the named configurations are in :mod:`.catalog` (no PyTorch).

The classes are imported on first use (``vitkit.models.VisionTransformer``), so that importing the package, or
its catalog, costs nothing; :func:`vitkit.create_model` imports the family it builds.
"""

import importlib

from .._lazy import submodule

_CLASSES = {
    "BertEncoder": "bert",
    "CLIP": "clip",
    "clip_loss": "contrastive",
    "siglip_loss": "contrastive",
    "DETR": "detr",
    "GPT": "gpt",
    "MaskedAutoencoder": "mae",
    "ResNet": "resnet",
    "Segmenter": "segmenter",
    "Seq2SeqTransformer": "seq2seq",
    "VisionTransformer": "vit",
    "vit_flops": "vit",
}

__all__ = sorted(_CLASSES)


def __getattr__(name: str):
    if name in _CLASSES:
        return getattr(importlib.import_module(f".{_CLASSES[name]}", __name__), name)
    return submodule(__name__, name)  # its modules too; else AttributeError
