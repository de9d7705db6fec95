"""Replaying recorded structural edits on a freshly built model (what ``vitkit.load`` does before the weights).

It imports every compression method so that all their edit kinds are registered; the methods themselves only
import :mod:`.edits`, so there is no cycle.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import lowrank, prune, quantize, tome  # noqa: F401  (each registers its edits on import)
from .edits import registered_edits

__all__ = ["apply_edits"]


def apply_edits(model: nn.Module, edits: list[dict[str, Any]]) -> nn.Module:
    """Replay recorded edits on ``model`` (a fresh build of the same config); returns it."""
    known = registered_edits()
    for edit in edits:
        kind = edit.get("kind")
        if kind not in known:
            raise ValueError(f"unknown structural edit {kind!r} in the model file; known: {sorted(known)}")
        known[kind](model, edit["args"])
    model.structure_edits = list(edits)
    return model
