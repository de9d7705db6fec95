"""Reading checkpoint files safely, and vitkit's own self-describing safetensors format."""

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

from .qstate import from_plain, is_plain, to_plain

__all__ = ["read_checkpoint", "save", "load", "atomic_write", "CheckpointError"]

FORMAT_VERSION = "1"


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


def _read_torch(path: Path) -> dict[str, Any]:
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
        return _read_torch(path), hf_config
    with open(path, "rb") as f:  # unknown suffix: sniff the content
        head = f.read(8)
    if head.startswith(b"PK"):
        try:
            return _read_torch(path), hf_config
        except CheckpointError:
            return _read_npz(path), hf_config
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
    from .convert import strip_wrapper_prefixes

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
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: corrupt or truncated file ({e})") from e


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by :func:`save`, weights included, with no other input."""
    from ..registry import get_family

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    meta = read_metadata(path)
    if meta.get("format") != "vitkit":
        raise CheckpointError(
            f"{path} has no vitkit config in its metadata; build the model with vitkit.create_model(...) and "
            "use vitkit.load_pretrained(model, path)"
        )
    cls = get_family(meta["family"])
    model = cls(**json.loads(meta["config"]))
    if meta.get("model_name"):
        model.model_name = meta["model_name"]
    if meta.get("data_config"):
        model.data_config = json.loads(meta["data_config"])
    if meta.get("structure_edits"):
        from ..compress.edits import apply_edits

        apply_edits(model, json.loads(meta["structure_edits"]))
    from .convert import check_state_dict, unwrap_state_dict

    state = unwrap_state_dict(_read_safetensors(path))  # files written by hand from a wrapped model

    template = model.state_dict()
    if is_plain(template):
        check_state_dict(model, state, source=str(path))
    else:  # int8 layers (vitkit.compress.quantize_int8): compare and load their plain form
        check_state_dict(model, state, source=str(path), expected=to_plain(template))
        state = from_plain(template, state)
        if torch.device(device).type != "cpu":
            raise ValueError(
                f"{path} is an int8 model: PyTorch's quantized kernels run on the CPU only (device='cpu')"
            )
    model.load_state_dict(state)
    return model.to(device)
