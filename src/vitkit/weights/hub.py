"""Pretrained weights from the Hugging Face Hub: ``hf-hub:org/name[@revision]`` -> a local snapshot folder.

The same ids as timm (``create_model(..., pretrained="hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")``):
timm repos (``model.safetensors`` + a ``config.json`` holding timm's ``pretrained_cfg``) and HuggingFace
transformers repos (``google/vit-base-patch16-224``, ``openai-community/gpt2``, ``google-bert/bert-base-uncased``:
``config.json`` + weights [+ ``preprocessor_config.json``]). Only the files a model needs are fetched, with
``huggingface_hub.hf_hub_download``: ``model.safetensors``, else ``pytorch_model.bin`` (read with
``torch.load(weights_only=True)``, never unpickled), and the small JSON configs. Sharded checkpoints are not read.

Cache: ``$HF_HUB_CACHE`` (or ``$HF_HOME/hub``) when the user set one -- the cache timm and transformers share --
else vitkit's own, ``$VITKIT_CACHE/hub`` (default ``~/.cache/vitkit/hub``), in huggingface_hub's layout
(``models--org--name/{blobs,snapshots/<commit>,refs/main}``). ``HF_HUB_OFFLINE=1`` (read at each call) downloads
nothing: a repo not in the cache raises :class:`HubWeightsNotFoundError` naming the repo, the cache folder and
what to do. ``huggingface_hub`` is an optional dependency (``pip install 'vitkit[hub]'``); this module imports it
only when a Hub id is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .._cache import default_cache_dir

__all__ = [
    "HUB_PREFIX", "HubWeights", "HubWeightsNotFoundError", "is_hub_id", "parse_hub_id", "hub_cache_dir",
    "download_weights", "local_folder", "repo_pretrained_cfg", "resolve_pretrained", "set_pretrained_cfg",
]  # fmt: skip

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
CONFIG_FILES = ("config.json", "preprocessor_config.json")  # optional
_TRUE = {"1", "on", "yes", "true"}


class HubWeightsNotFoundError(FileNotFoundError):
    """Hub weights that could not be found: not cached while offline, an unreachable Hub, a missing repo/file."""


@dataclass
class HubWeights:
    """The local files of one Hub repo at one commit: ``folder`` is its snapshot (``weights`` and the configs)."""

    repo_id: str
    revision: str | None
    folder: Path
    weights: Path
    files: dict[str, Path] = field(default_factory=dict)  # every fetched file by name, configs included


def is_hub_id(source: Any) -> bool:
    """Whether ``source`` is an ``hf-hub:`` id (a string; paths are never Hub ids)."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_id(source: str) -> tuple[str, str | None]:
    """``"hf-hub:org/name@rev"`` -> ``("org/name", "rev")`` (revision None: the ``main`` branch), as timm's
    ``hf_split``. Raises ValueError naming the id when the repo part is empty."""
    rest = source[len(HUB_PREFIX) :] if source.startswith(HUB_PREFIX) else source
    repo_id, _, revision = rest.partition("@")
    if not repo_id.strip() or (rest.count("@") and not revision):
        raise ValueError(f"a Hub id is 'hf-hub:org/name' or 'hf-hub:org/name@revision', got {source!r}")
    return repo_id, revision or None


def _env_true(*names: str) -> bool:
    return any((os.environ.get(n) or "").strip().lower() in _TRUE for n in names)


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set now, or when huggingface_hub was imported."""
    if _env_true("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_cache_dir() -> Path:
    """Where Hub downloads go: ``$HF_HUB_CACHE`` (legacy ``$HUGGINGFACE_HUB_CACHE``) or ``$HF_HOME/hub`` when set
    (the cache shared with timm and transformers), else vitkit's ``$VITKIT_CACHE/hub``."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    return default_cache_dir() / "hub"


def _hub_api():
    """``huggingface_hub`` and its errors, or an ImportError saying how to install it."""
    try:
        import huggingface_hub
        import huggingface_hub.errors
    except ImportError as e:
        raise ImportError(
            "loading 'hf-hub:' weights needs huggingface_hub, which is not installed: "
            "pip install 'vitkit[hub]' (or pip install huggingface_hub); or pass a local weights file"
        ) from e
    return huggingface_hub, huggingface_hub.errors


def _fetch(repo_id: str, filename: str, revision: str | None, cache: Path, local_only: bool) -> Path | str:
    """One file's local path, or the kind of failure: ``"absent"`` (the repo has no such file) or
    ``"not cached"`` (offline / Hub unreachable and not in the cache)."""
    hub, errors = _hub_api()
    try:
        return Path(hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache,
                                        local_files_only=local_only))  # fmt: skip
    except errors.LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError)
        return "not cached"
    except errors.EntryNotFoundError:
        return "absent"
    except errors.HFValidationError as e:
        raise ValueError(f"{HUB_PREFIX}{repo_id}: not a valid Hub repo id ({e})") from None
    except errors.RepositoryNotFoundError as e:
        raise HubWeightsNotFoundError(
            f"{HUB_PREFIX}{repo_id}: no such repository on the Hugging Face Hub, or a private / gated one "
            f"(log in with `hf auth login` and accept its terms): {e}"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubWeightsNotFoundError(
            f"{HUB_PREFIX}{repo_id}: no revision {revision!r} in the repo"
        ) from None


def _not_found(
    repo_id: str, revision: str | None, cache: Path, failures: list[str]
) -> HubWeightsNotFoundError:
    name = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    if "not cached" not in failures:
        return HubWeightsNotFoundError(
            f"{name} holds neither {' nor '.join(WEIGHT_FILES)} (sharded checkpoints are not read); "
            "download its weights yourself and pass the local file"
        )
    if offline():
        why, todo = (
            "HF_HUB_OFFLINE is set: nothing is downloaded",
            "Download it once online (unset HF_HUB_OFFLINE)",
        )
    else:
        why, todo = (
            "the Hub could not be reached",
            "Download it once online (check the connection, HF_ENDPOINT)",
        )
    return HubWeightsNotFoundError(
        f"{name} is not in the Hugging Face cache at {cache} ({why}). {todo}, point HF_HUB_CACHE at a cache that "
        "holds it, or pass a local weights file or folder (pretrained='path/to/model.safetensors', "
        "vitkit ... --from PATH)"
    )


def _cached_or_fetch(repo_id: str, filename: str, commit: str, cache: Path, local_only: bool) -> Path | None:
    """An optional file at the weights' ``commit``: from the snapshot folder, None when huggingface_hub recorded
    that the repo has no such file (``.no_exist``), else fetched (None when absent or unreachable)."""
    hub, _ = _hub_api()
    cached = hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=commit)
    if isinstance(cached, str):
        return Path(cached)
    if cached is not None:  # known to be absent at this commit
        return None
    found = _fetch(repo_id, filename, commit, cache, local_only)
    return found if isinstance(found, Path) else None


def download_weights(source: str, extra_files: tuple[str, ...] = ()) -> HubWeights:
    """Fetch (or find in the cache) the weights of ``source`` (``hf-hub:org/name[@revision]``), its
    ``config.json`` / ``preprocessor_config.json`` if it has them, and any ``extra_files`` it has (e.g. a
    tokenizer), all at the weights' commit. Raises :class:`HubWeightsNotFoundError` naming the repo and the cache
    folder. Once the Hub proved unreachable only the cache is read (huggingface_hub retries each uncached file
    for ~23 s)."""
    repo_id, revision = parse_hub_id(source)
    cache, local_only = hub_cache_dir(), offline()
    failures: list[str] = []
    weights = None
    for filename in WEIGHT_FILES:
        found = _fetch(repo_id, filename, revision, cache, local_only)
        if isinstance(found, Path):
            weights = found
            break
        failures.append(found)
        local_only = local_only or found == "not cached"
    if weights is None:
        raise _not_found(repo_id, revision, cache, failures)
    files = {weights.name: weights}
    for filename in (*CONFIG_FILES, *extra_files):
        found = _cached_or_fetch(repo_id, filename, weights.parent.name, cache, local_only)
        if found is not None:
            files[filename] = found
    log.info("%s%s: %s", HUB_PREFIX, repo_id, weights)
    return HubWeights(repo_id, revision, weights.parent, weights, files)


def local_folder(source: str | os.PathLike, extra_files: tuple[str, ...] = ()) -> str | os.PathLike:
    """``source`` itself, or for an ``hf-hub:`` id its snapshot folder (weights, configs and any ``extra_files``
    it has, e.g. ``tokenizer.json``), fetched or found in the cache (:func:`download_weights`)."""
    return str(download_weights(str(source), extra_files).folder) if is_hub_id(source) else source


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as JSON: {e}") from None
    return data if isinstance(data, dict) else {}


_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _hw(size: Any) -> tuple[int, int] | None:
    """A transformers size (an int, ``{"height", "width"}`` or ``{"shortest_edge"}``) -> (H, W)."""
    if isinstance(size, dict):
        size = (
            (size.get("height"), size.get("width")) if "height" in size else (size.get("shortest_edge"),) * 2
        )
    if isinstance(size, (int, float)):
        size = (size, size)
    return (int(size[0]), int(size[1])) if size and all(size) else None


def _hf_image_cfg(pre: dict[str, Any]) -> dict[str, Any]:
    """A transformers ``preprocessor_config.json`` -> mean, std, input_size, crop_pct (crop / resize size when it
    center-crops, else 1.0: the image is resized to the input size), interpolation."""
    out: dict[str, Any] = {}
    if pre.get("image_mean") is not None and pre.get("image_std") is not None:
        out["mean"], out["std"] = tuple(pre["image_mean"]), tuple(pre["image_std"])
    resize, crop = _hw(pre.get("size")), _hw(pre.get("crop_size")) if pre.get("do_center_crop") else None
    if crop or resize:
        out["input_size"] = (len(out.get("mean", (0,) * 3)), *(crop or resize))
        out["crop_pct"] = round(crop[0] / resize[0], 4) if crop and resize else 1.0
    if pre.get("resample") in _PIL_RESAMPLE:
        out["interpolation"] = _PIL_RESAMPLE[pre["resample"]]
    return out


def repo_pretrained_cfg(files: HubWeights) -> dict[str, Any]:
    """The pretrained cfg a repo publishes: timm's (``config.json``'s ``pretrained_cfg``, ``num_classes``) or
    transformers' (``preprocessor_config.json``'s mean/std/size; ``num_classes`` from ``id2label`` of a
    ``...ForImageClassification`` / ``...ForSequenceClassification`` model, else 0)."""
    config = _read_json(files.files.get("config.json"))
    cfg: dict[str, Any] = {"hf_hub_id": files.repo_id}
    if "pretrained_cfg" in config or "architecture" in config:  # timm's config.json
        cfg.update(
            source="timm", **{k: v for k, v in (config.get("pretrained_cfg") or {}).items() if v is not None}
        )
        if config.get("num_classes") is not None:
            cfg["num_classes"] = int(config["num_classes"])
    elif config:
        cfg["source"] = "transformers"
        heads = [a for a in config.get("architectures") or [] if a.endswith(("ForImageClassification",
                                                                              "ForSequenceClassification"))]  # fmt: skip
        if config.get("model_type") in ("vit", "deit", "bert"):
            cfg["num_classes"] = len(config.get("id2label") or {}) if heads else 0
        cfg.update(_hf_image_cfg(_read_json(files.files.get("preprocessor_config.json"))))
    for key in ("mean", "std", "input_size"):
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    return cfg


def resolve_pretrained(
    source: str | os.PathLike, known: dict[str, Any] | None = None
) -> tuple[str | os.PathLike, dict[str, Any] | None]:
    """What to load for ``create_model``'s ``pretrained``: a local path as given (no cfg), or a Hub id's snapshot
    folder and its pretrained cfg -- ``known`` (the registry name's default) when it names the same repo, else
    the one the repo publishes (:func:`repo_pretrained_cfg`)."""
    if not is_hub_id(source):
        return source, None
    files = download_weights(str(source))
    if known is not None and known.get("hf_hub_id") == files.repo_id:
        cfg = dict(known)
    else:
        cfg = repo_pretrained_cfg(files)
    if files.revision:
        cfg["hf_hub_revision"] = files.revision
    return str(files.folder), cfg


def set_pretrained_cfg(model: nn.Module, cfg: dict[str, Any]) -> None:
    """Attach ``cfg`` as ``model.pretrained_cfg``; for image weights (mean/std given) also set
    ``model.data_config`` -- mean, std, the model's own input size and channels, crop_pct, interpolation -- which
    :func:`vitkit.predict.predict` and :func:`vitkit.save` read."""
    model.pretrained_cfg = dict(cfg)
    if cfg.get("mean") is None or cfg.get("std") is None:
        return
    config = getattr(model, "config", {}) or {}
    size = config.get("img_size") or (cfg.get("input_size") or (None, None, None))[1:]
    size = [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]
    data = {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]], "img_size": size,
            "in_chans": int(config.get("in_chans", len(cfg["mean"])))}  # fmt: skip
    for key in ("crop_pct", "crop_mode", "interpolation"):
        if cfg.get(key) is not None:
            data[key] = cfg[key]
    model.data_config = data
