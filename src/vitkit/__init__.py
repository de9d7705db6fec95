"""vitkit: Vision Transformers and the Transformer they come from."""

from .registry import create_model, list_models, model_config
from .weights import CheckpointError, load, load_pretrained, save

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "model_config", "load", "load_pretrained", "save", "CheckpointError"]
