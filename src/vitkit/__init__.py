"""vitkit: Vision Transformers and the Transformer they come from.

Models and weights are imported eagerly; the jobs ``vitkit.train(...)``, ``vitkit.evaluate(...)`` and
``vitkit.predict(...)`` (the Python mirror of the CLI) load on first use.
"""

import importlib

from . import models  # noqa: F401  (registers every model family and named model; the registry imports none)
from .registry import create_model, get_pretrained_cfg, list_models, list_pretrained, model_config
from .weights import CheckpointError, load, load_pretrained, save

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "list_pretrained", "get_pretrained_cfg", "model_config", "load",
    "load_pretrained", "save", "CheckpointError",
    "train", "evaluate", "predict",
]  # fmt: skip

_JOBS = ("train", "evaluate", "predict")


def __getattr__(name: str):
    if name in _JOBS:  # each is a callable module: vitkit.train(...) == vitkit.train.train(...)
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vitkit' has no attribute {name!r}")
