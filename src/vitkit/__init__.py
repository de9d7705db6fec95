"""vitkit: Vision Transformers and the Transformer they come from.

Everything is imported on first use: ``import vitkit`` (and the ``vitkit`` command's start-up) imports no
PyTorch; ``vitkit.create_model``, ``vitkit.load`` ... and the jobs ``vitkit.train(...)``,
``vitkit.evaluate(...)``, ``vitkit.predict(...)`` and ``vitkit.fewshot(...)`` (the Python mirror of the CLI) load
their modules when asked, as do the subpackages (``vitkit.models.clip.CLIP``, ``vitkit.tasks.detection``).
"""

import importlib

from ._lazy import submodule

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "create_model": "registry", "list_models": "registry", "model_config": "registry",
    "list_pretrained": "registry", "get_pretrained_cfg": "registry",
    "load": "weights", "load_pretrained": "weights", "save": "weights", "CheckpointError": "weights",
    "zeroshot_classifier": "zeroshot", "retrieval_recall": "zeroshot",
}  # fmt: skip
_JOBS = ("train", "evaluate", "predict", "fewshot", "zeroshot")

__all__ = [*_EXPORTS, *_JOBS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    # a subpackage or module (vitkit.models, ...; the jobs are callable modules: vitkit.train(...) ==
    # vitkit.train.train(...)); else AttributeError
    return submodule(__name__, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
