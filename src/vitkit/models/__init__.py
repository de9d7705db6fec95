"""Model families. Importing this package registers every family and named config."""

from .vit import VisionTransformer, vit_flops

__all__ = ["VisionTransformer", "vit_flops"]
