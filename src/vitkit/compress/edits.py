"""Structural edits of a model (factorised or pruned layers), recorded so that a saved model can be rebuilt.

``vitkit.save`` writes ``model.structure_edits`` into the safetensors metadata; ``vitkit.load`` builds the model
from its config, replays the edits (structure only) and then loads the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["record_edit", "register_edit", "apply_edits"]

_EDITS: dict[str, Callable[[nn.Module, Any], None]] = {}


def register_edit(kind: str) -> Callable:
    """Decorator: ``fn(model, args)`` rebuilds edit ``kind`` on a freshly built model."""

    def wrap(fn: Callable[[nn.Module, Any], None]) -> Callable[[nn.Module, Any], None]:
        _EDITS[kind] = fn
        return fn

    return wrap


def record_edit(model: nn.Module, kind: str, args: Any) -> None:
    """Append one edit (JSON-able ``args``) to ``model.structure_edits``."""
    edits = list(getattr(model, "structure_edits", []))
    edits.append({"kind": kind, "args": args})
    model.structure_edits = edits


def apply_edits(model: nn.Module, edits: list[dict[str, Any]]) -> nn.Module:
    """Replay recorded edits on ``model`` (a fresh build of the same config); returns it."""
    from . import lowrank, prune, quantize, tome  # noqa: F401  (register their edits)

    for edit in edits:
        kind = edit.get("kind")
        if kind not in _EDITS:
            raise ValueError(f"unknown structural edit {kind!r} in the model file; known: {sorted(_EDITS)}")
        _EDITS[kind](model, edit["args"])
    model.structure_edits = list(edits)
    return model
