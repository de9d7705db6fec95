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
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models.catalog import FAMILY_MODULES, MODELS
from .models.pretrained_cfgs import PRETRAINED_CFGS

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "register_family", "register_model", "register_pretrained_cfg", "create_model", "list_models", "list_families",
    "list_pretrained", "get_family", "get_pretrained_cfg", "model_config",
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
# registry name -> its default published weights (timm's ``pretrained_cfg``)
_PRETRAINED: dict[str, dict[str, Any]] = {
    name: {"architecture": name, **cfg} for name, cfg in PRETRAINED_CFGS.items()
}


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


def register_pretrained_cfg(name: str, **cfg: Any) -> None:
    """Record the default published weights of the registered model ``name``: what ``create_model(name,
    pretrained=True)`` loads, as timm's ``pretrained_cfg``. ``cfg`` holds ``hf_hub_id`` (a Hugging Face Hub repo,
    required) and, as published, ``tag``, ``source``, ``license``, ``num_classes`` and for images ``mean``,
    ``std``, ``input_size`` (C, H, W), ``crop_pct``, ``crop_mode``, ``interpolation``."""
    _lookup(name)
    if not cfg.get("hf_hub_id"):
        raise ValueError(f"the pretrained cfg of {name!r} needs an hf_hub_id")
    _PRETRAINED[name] = {"architecture": name, **cfg}


def get_pretrained_cfg(name: str) -> dict[str, Any] | None:
    """The default pretrained cfg of registry model ``name`` (a copy), or None when it has none."""
    _lookup(name)
    cfg = _PRETRAINED.get(name)
    return dict(cfg) if cfg is not None else None


def list_pretrained(pattern: str = "*") -> list[str]:
    """Registered model names matching ``pattern`` that have default published weights (``pretrained=True``)."""
    return sorted(n for n in _PRETRAINED if fnmatch.fnmatch(n, pattern))


def get_family(name: str) -> type[nn.Module]:
    """The model class registered as family ``name`` (its module is imported on first use)."""
    if name not in _FAMILIES and name in FAMILY_MODULES:
        importlib.import_module(FAMILY_MODULES[name])
    if name not in _FAMILIES:
        known = sorted(set(_FAMILIES) | set(FAMILY_MODULES))
        raise ValueError(f"unknown model family {name!r}; known families: {known}")
    return _FAMILIES[name]


def list_families() -> list[str]:
    """Every family name: the built-in ones and those registered since."""
    return sorted(set(_FAMILIES) | set(FAMILY_MODULES))


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
    name: str,
    pretrained: bool | str | os.PathLike | None = None,
    pretrained_grid: tuple[int, int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally overriding its config and loading pretrained weights.

    ``pretrained``: ``True`` loads the name's default published weights (:func:`get_pretrained_cfg`, timm's
    default tag) from the Hugging Face Hub; ``"hf-hub:org/name[@revision]"`` loads that Hub repo (timm or
    HuggingFace layout, see :mod:`vitkit.weights.hub`); a path loads a local file or folder (timm, HuggingFace, JAX
    or vitkit layout, see :func:`vitkit.load_pretrained`). Weights from the Hub set ``model.pretrained_cfg`` (the
    repo, mean/std, input size, crop) and, for images, ``model.data_config``; their ``num_classes`` is the
    default, and a model built with another ``num_classes`` keeps a fresh head (as timm does).
    ``pretrained_grid=(rows, cols)``: the patch grid of ``pretrained``'s position table when the file does not
    record it (see :func:`vitkit.load_pretrained`'s ``old_grid``).
    Raises ValueError for ``pretrained=True`` on a name without default weights, FileNotFoundError for weights
    not found (:class:`vitkit.weights.hub.HubWeightsNotFoundError` for the Hub, naming the repo and cache)."""
    entry = _lookup(name)
    cls = get_family(entry.family)
    source, local, pcfg = _pretrained_source(name, pretrained), None, None
    if source is not None:
        from .weights.hub import resolve_pretrained  # imports no registry: no cycle

        local, pcfg = resolve_pretrained(source, _PRETRAINED.get(name))
        if (
            pcfg
            and pcfg.get("num_classes") is not None
            and "num_classes" in inspect.signature(cls).parameters
        ):
            overrides.setdefault("num_classes", int(pcfg["num_classes"]))
    config = {**entry.config, **overrides}
    check_kwargs(cls, config)
    model = cls(**config)
    model.model_name = name
    if source is not None:
        from .weights.hub import set_pretrained_cfg
        from .weights.pretrained import load_pretrained  # the module, not the package (which imports .load)

        head = pcfg is not None and pcfg.get("num_classes") not in (None, getattr(model, "num_classes", None))
        load_pretrained(model, local, ignore_head=head, old_grid=pretrained_grid)
        if pcfg:
            set_pretrained_cfg(model, pcfg)
    return model


def _pretrained_source(name: str, pretrained: bool | str | os.PathLike | None) -> str | os.PathLike | None:
    """What ``create_model``'s ``pretrained`` names: None, a path, or an ``hf-hub:`` id (``True``: the default)."""
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        cfg = _PRETRAINED.get(name)
        if cfg is None:
            raise ValueError(
                f"{name!r} has no default pretrained weights (vitkit.list_pretrained() lists the "
                f"{len(_PRETRAINED)} names that do); pass the weights instead: "
                "pretrained='path/to/weights.safetensors' (or .pth/.bin/.npz, a HuggingFace folder) or "
                "pretrained='hf-hub:org/name'"
            )
        return "hf-hub:" + cfg["hf_hub_id"]
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(
            f"pretrained must be True, a path or an 'hf-hub:' id, got {type(pretrained).__name__}"
        )
    return pretrained
