"""Explain ViT predictions: per-layer attention weights, attention rollout, gradient-weighted rollout, figures."""

from .attention import AttentionRecorder, attention_maps
from .figure import explain_image, plot_explanation
from .rollout import HEAD_FUSIONS, METHODS, attention_rollout, explain, gradient_rollout

__all__ = [
    "HEAD_FUSIONS",
    "METHODS",
    "AttentionRecorder",
    "attention_maps",
    "attention_rollout",
    "explain",
    "explain_image",
    "gradient_rollout",
    "plot_explanation",
]
