"""Model families. Importing this package registers every family and named config."""

from .bert import BertEncoder
from .clip import CLIP
from .contrastive import clip_loss, siglip_loss
from .detr import DETR
from .gpt import GPT
from .mae import MaskedAutoencoder
from .resnet import ResNet
from .segmenter import Segmenter
from .seq2seq import Seq2SeqTransformer
from .vit import VisionTransformer, vit_flops

__all__ = [
    "BertEncoder",
    "CLIP",
    "clip_loss",
    "siglip_loss",
    "DETR",
    "GPT",
    "MaskedAutoencoder",
    "Seq2SeqTransformer",
    "ResNet",
    "Segmenter",
    "VisionTransformer",
    "vit_flops",
]
