"""Structural edits of a model (factorised or pruned layers), recorded so that a saved model can be rebuilt.

``vitkit.save`` writes ``model.structure_edits`` into the safetensors metadata; ``vitkit.load`` builds the model
from its config, replays the edits (structure only, :func:`vitkit.compress.replay.apply_edits`) and then loads the
weights. This module is the bottom of :mod:`vitkit.compress`: the methods import it to record and register their
edits, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["record_edit", "register_edit", "registered_edits"]

_EDITS: dict[str, Callable[[nn.Module, Any], None]] = {}


def register_edit(kind: str) -> Callable:
    """Decorator: ``fn(model, args)`` rebuilds edit ``kind`` on a freshly built model."""

    def wrap(fn: Callable[[nn.Module, Any], None]) -> Callable[[nn.Module, Any], None]:
        _EDITS[kind] = fn
        return fn

    return wrap


def registered_edits() -> dict[str, Callable[[nn.Module, Any], None]]:
    """The edit kinds registered so far (by the modules that were imported) and their replay functions."""
    return dict(_EDITS)


def record_edit(model: nn.Module, kind: str, args: Any) -> None:
    """Append one edit (JSON-able ``args``) to ``model.structure_edits``."""
    edits = list(getattr(model, "structure_edits", []))
    edits.append({"kind": kind, "args": args})
    model.structure_edits = edits
