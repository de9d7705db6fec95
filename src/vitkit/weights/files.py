"""Reading checkpoint files safely, and writing vitkit's own self-describing safetensors format.

The lowest layer of :mod:`vitkit.weights`: it imports no other vitkit module but :mod:`.qstate`. Rebuilding a
model from a file (:func:`vitkit.weights.rebuild.load`) needs the model registry and lives one layer up.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .qstate import to_plain

__all__ = [
    "strip_wrapper_prefixes",
    "read_checkpoint",
    "read_metadata",
    "save",
    "atomic_write",
    "CheckpointError",
]

FORMAT_VERSION = "1"


# path components that wrappers insert anywhere in a key: torch.compile (OptimizedModule), FSDP, activation
# checkpointing; DDP / DataParallel / timm's ModelEma put ``module.`` in front.
_WRAPPER_PARTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
_LEADING_PARTS = ("module",)


def strip_wrapper_prefixes(key: str) -> str:
    """``_orig_mod.module.blocks.0._fsdp_wrapped_module.attn.qkv.weight`` -> ``blocks.0.attn.qkv.weight``.

    Removes what ``torch.compile``, FSDP and activation checkpointing insert anywhere in a key, and any number of
    leading ``module.`` (DDP, DataParallel, timm's ModelEma), in every order and nesting."""
    parts = [p for p in key.split(".") if p not in _WRAPPER_PARTS]
    while len(parts) > 1 and parts[0] in _LEADING_PARTS:
        parts = parts[1:]
    return ".".join(parts)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` on a temp file beside ``path``, then rename it into place atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_torch(path: Path) -> dict[str, Any]:
    """A ``torch.save`` file read with ``weights_only=True``; a CheckpointError names the file and the problem
    (a pickle holding code is refused, never run)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except (zipfile.BadZipFile, EOFError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path}: corrupt or truncated file ({e})") from e
    except Exception as e:  # weights_only's unpickler refuses anything but tensors and plain containers
        msg = str(e)
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "nsupported" in ln), lines[0] if lines else type(e).__name__)
        if "GLOBAL" in msg or "Unsupported global" in msg:
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled objects other than tensors ({detail}); "
                "only tensors and plain containers are read, pickled code is never executed"
            ) from e
        raise CheckpointError(
            f"cannot read {path}: corrupt or truncated file, or not a checkpoint ({detail})"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: torch.from_numpy(np.asarray(npz[k]).copy()) for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"cannot read {path} as a NumPy .npz archive: {e}") from e


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: corrupt or truncated file ({e})") from e


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read tensors from a file or HuggingFace model directory. Returns (state dict, HF config or None).

    Supports ``.safetensors``, ``.pth``/``.pt``/``.bin`` (``torch.load(weights_only=True)``), ``.npz``
    (``allow_pickle=False``) and directories holding ``model.safetensors`` or ``pytorch_model.bin``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    hf_config = None
    if path.is_dir():
        config_file = path / "config.json"
        if config_file.exists():
            hf_config = json.loads(config_file.read_text())
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a directory without model.safetensors or pytorch_model.bin")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path), hf_config
    if suffix == ".npz":
        return _read_npz(path), hf_config
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return read_torch(path), hf_config
    with open(path, "rb") as f:  # unknown suffix: sniff the content
        head = f.read(8)
    if head.startswith(b"PK"):  # a zip: torch.save's (a data.pkl inside) or numpy's .npz (.npy members)
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith(".npy") for n in names) and not any(n.endswith("data.pkl") for n in names):
            return _read_npz(path), hf_config
        return read_torch(path), hf_config
    return _read_safetensors(path), hf_config


def save(
    model: nn.Module,
    path: str | os.PathLike,
    data_config: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model``'s weights and the config it was built with to a safetensors file (atomically).

    ``state_dict`` replaces ``model.state_dict()`` (e.g. the gathered full weights of an FSDP-sharded model).
    ``data_config`` (default: ``model.data_config`` if set) records how inputs were prepared -- class names,
    normalisation mean/std, image size, channels -- so that prediction can reproduce it. It must be JSON-able.
    """
    config = getattr(model, "config", None)
    family = getattr(model, "family", None)
    if config is None or family is None:
        raise TypeError(
            f"{type(model).__name__} is not a vitkit model (no .config/.family); use safetensors directly"
        )
    state_dict = model.state_dict() if state_dict is None else state_dict
    state = {  # the plain model's names, also for the state dict of a DDP / FSDP / compiled model
        strip_wrapper_prefixes(k): v.detach().contiguous().cpu() for k, v in to_plain(state_dict).items()
    }
    metadata = {
        "format": "vitkit",
        "format_version": FORMAT_VERSION,
        "family": family,
        "config": json.dumps(config),
        "model_name": str(getattr(model, "model_name", "")),
    }
    data_config = data_config if data_config is not None else getattr(model, "data_config", None)
    if data_config:
        metadata["data_config"] = json.dumps(data_config)
    if getattr(model, "structure_edits", None):  # factorised / pruned layers (vitkit.compress)
        metadata["structure_edits"] = json.dumps(model.structure_edits)
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (vitkit's ``format``, ``family``, ``config``, ...)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: corrupt or truncated file ({e})") from e
