"""Model families. Importing this package registers every family and named config."""

from .mae import MaskedAutoencoder
from .resnet import ResNet
from .vit import VisionTransformer, vit_flops

__all__ = ["MaskedAutoencoder", "ResNet", "VisionTransformer", "vit_flops"]
