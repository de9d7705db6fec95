"""Explain ViT predictions: per-layer attention weights, attention rollout, gradient-weighted rollout, figures.

The names are imported on first use, so that the ``vitkit`` command's parser (which offers :data:`METHODS` and
:data:`HEAD_FUSIONS`) imports no PyTorch.
"""

import importlib

from .._lazy import submodule

#: how attention heads are fused per layer in rollout (Abnar & Zuidema 2020)
HEAD_FUSIONS = ("mean", "max", "min")
#: ``rollout`` (Abnar & Zuidema 2020) or ``grad-rollout`` (gradient-weighted, Chefer et al. 2021)
METHODS = ("rollout", "grad-rollout")

_EXPORTS = {
    "AttentionRecorder": "attention", "attention_maps": "attention",
    "explain_image": "figure", "plot_explanation": "figure",
    "attention_rollout": "rollout", "explain": "rollout", "gradient_rollout": "rollout",
}  # fmt: skip

__all__ = ["HEAD_FUSIONS", "METHODS", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    return submodule(__name__, name)  # its modules too; else AttributeError
