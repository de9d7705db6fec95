"""Model registry: named configurations of model families, built with ``create_model``.

A *family* is a model class (``VisionTransformer``, ...). A *named model* is a family plus a dict of
constructor arguments. Models remember the arguments they were built with in ``model.config`` so that
``vitkit.save`` / ``vitkit.load`` can rebuild them without any other input.

The named models come from :mod:`vitkit.models.catalog` (plain data, no PyTorch), so listing them imports no
model. A family's module registers its class when imported (``register_family``); the registry imports it by name
(:data:`~vitkit.models.catalog.FAMILY_MODULES`, as a plugin is loaded) the first time it builds a model of that
family, so ``vitkit models`` and ``vitkit --help`` start without importing PyTorch.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models.catalog import FAMILY_MODULES, MODELS

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "register_family", "register_model", "create_model", "list_models", "list_families", "get_family", "model_config",
]  # fmt: skip


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    config: dict[str, Any] = field(default_factory=dict)


_FAMILIES: dict[str, type[nn.Module]] = {}
_MODELS: dict[str, ModelEntry] = {
    name: ModelEntry(name, family, dict(cfg)) for name, (family, cfg) in MODELS.items()
}
_FAMILY_MODULES: dict[str, str] = dict(FAMILY_MODULES)


def register_family(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Make a model class buildable by family name (used by ``vitkit.load``)."""
    _FAMILIES[name] = cls
    cls.family = name
    return cls


def register_model(name: str, family: str, **config: Any) -> None:
    """Register ``name`` as ``family`` built with ``config``."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = ModelEntry(name, family, dict(config))


def get_family(name: str) -> type[nn.Module]:
    """The model class registered as family ``name`` (its module is imported on first use)."""
    if name not in _FAMILIES and name in _FAMILY_MODULES:
        importlib.import_module(_FAMILY_MODULES[name])
    if name not in _FAMILIES:
        known = sorted(set(_FAMILIES) | set(_FAMILY_MODULES))
        raise ValueError(f"unknown model family {name!r}; known families: {known}")
    return _FAMILIES[name]


def list_families() -> list[str]:
    """Every family name: the built-in ones and those registered since."""
    return sorted(set(_FAMILIES) | set(_FAMILY_MODULES))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"vit_*_patch16_224"``), sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_config(name: str) -> dict[str, Any]:
    """The family and constructor arguments of a named model."""
    entry = _lookup(name)
    return {"family": entry.family, **entry.config}


def _lookup(name: str) -> ModelEntry:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} (vitkit.list_models() lists all {len(_MODELS)} names)"
        )
    return _MODELS[name]


def check_kwargs(cls: type, kwargs: dict[str, Any]) -> None:
    """Raise a clear error for constructor arguments ``cls`` does not take."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = sorted(p for p in params if p != "self")
        raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; valid options: {valid}")


def create_model(
    name: str, pretrained: str | None = None, pretrained_grid: tuple[int, int] | None = None, **overrides: Any
) -> nn.Module:
    """Build a registered model, optionally overriding its config and loading weights from a local file.

    ``pretrained_grid=(rows, cols)``: the patch grid of ``pretrained``'s position table when the file does not
    record it (see :func:`vitkit.load_pretrained`'s ``old_grid``)."""
    entry = _lookup(name)
    cls = get_family(entry.family)
    config = {**entry.config, **overrides}
    check_kwargs(cls, config)
    model = cls(**config)
    model.model_name = name
    if pretrained is not None:
        from .weights.pretrained import load_pretrained  # the module, not the package (which imports .load)

        load_pretrained(model, pretrained, old_grid=pretrained_grid)
    return model
