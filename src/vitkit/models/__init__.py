"""Model families. Importing this package registers every family and named config."""

from .resnet import ResNet
from .vit import VisionTransformer, vit_flops

__all__ = ["ResNet", "VisionTransformer", "vit_flops"]
