"""Attribute access that imports on first use (PEP 562 ``__getattr__`` of vitkit's packages)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def submodule(package: str, name: str) -> ModuleType:
    """``package.name`` imported now (``vitkit.models.clip`` after a bare ``import vitkit``).

    Raises:
        AttributeError: ``package`` has no module ``name`` (what a missing attribute raises).
    """
    if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
        return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
