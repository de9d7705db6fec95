"""Model families. Importing this package registers every family and named config."""

from . import pretrained_cfgs  # noqa: F401  (the default weights of registry names)
from .bert import BertEncoder
from .detr import DETR
from .gpt import GPT
from .mae import MaskedAutoencoder
from .resnet import ResNet
from .segmenter import Segmenter
from .seq2seq import Seq2SeqTransformer
from .vit import VisionTransformer, vit_flops

__all__ = [
    "BertEncoder",
    "DETR",
    "GPT",
    "MaskedAutoencoder",
    "Seq2SeqTransformer",
    "ResNet",
    "Segmenter",
    "VisionTransformer",
    "vit_flops",
]
