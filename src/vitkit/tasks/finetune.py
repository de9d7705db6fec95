"""Fine-tuning: start a model from pre-trained weights, choose what trains, and scale learning rates by depth.

- :func:`build_from_pretrained`: a vitkit run / model file / MAE pre-training run (the architecture comes from the
  file, ``model_args`` may change e.g. ``img_size``) or a timm / HuggingFace / JAX checkpoint, local or an
  ``hf-hub:`` id (the architecture is ``model`` + ``model_args``), with a freshly initialised head for the new classes and the position table resampled
  to the new image size.
- :func:`apply_mode`: ``full`` (everything trains), ``linear`` (linear probe: frozen backbone, MAE's probe of a
  parameter-free BatchNorm then a linear layer, folded into one linear layer when training ends) or ``partial``
  (the patch embedding, prefix tokens, position table and the first ``freeze_blocks`` blocks frozen).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import MaskedAutoencoder, VisionTransformer
from ..registry import create_model, get_family, get_pretrained_cfg
from ..weights import load_pretrained
from ..weights.files import CheckpointError, read_metadata
from ..weights.hub import is_hub_id, resolve_pretrained, set_pretrained_cfg
from ..weights.qstate import is_plain
from ..weights.rebuild import load

__all__ = [
    "FINETUNE_MODES",
    "resolve_source",
    "build_from_pretrained",
    "pretrained_backbone",
    "trained_model",
    "apply_mode",
    "ProbeHead",
    "fold_probe_heads",
]

log = logging.getLogger(__name__)

FINETUNE_MODES = ("full", "linear", "partial")
HEAD_PREFIXES = ("head.", "head_dist.")


def resolve_source(path: str | Path) -> Path:
    """A run directory -> its weights (``encoder.safetensors`` of an MAE run, else ``model.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("encoder.safetensors", "model.safetensors"):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"{path} holds no encoder.safetensors or model.safetensors to fine-tune from")
    if not path.exists():
        raise FileNotFoundError(f"weights to fine-tune from not found: {path}")
    return path


def _vitkit_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a file :func:`vitkit.save` wrote; None for any other file (e.g. a timm checkpoint)."""
    if path.suffix != ".safetensors":
        return None
    try:
        meta = read_metadata(path)
    except CheckpointError:
        return None
    return meta if meta.get("format") == "vitkit" else None


def _vitkit_source(path: Path) -> tuple[nn.Module, dict[str, Any]] | None:
    """(source model, its config) when ``path`` is a vitkit model file; an MAE model gives its encoder."""
    if _vitkit_metadata(path) is None:
        return None
    source = load(path)
    if isinstance(source, MaskedAutoencoder):
        source = source.encoder
    if not isinstance(source, VisionTransformer):
        raise ValueError(f"fine-tuning starts from a ViT; {path} holds a {type(source).__name__}")
    return source, dict(source.config)


def build_from_pretrained(
    path: str | Path,
    num_classes: int,
    in_chans: int,
    model: str | None = None,
    model_args: dict[str, Any] | None = None,
    drop_path_rate: float | None = None,
) -> nn.Module:
    """A ViT for ``num_classes`` classes with every backbone weight from ``path`` and a new head.

    ``path``: a run directory, a weights file or an ``hf-hub:org/name[@revision]`` id (:mod:`vitkit.weights.hub`;
    the model then carries the repo's ``pretrained_cfg``, whose mean/std the fine-tuning normalises with).

    Raises a CheckpointError naming the keys when the backbone does not match, and a ValueError when the
    channels differ.
    """
    hub_cfg, name = None, str(path)
    if is_hub_id(path):  # its snapshot folder (config.json: grid, HF's norm eps) and published pretrained cfg
        folder, hub_cfg = resolve_pretrained(str(path), get_pretrained_cfg(model) if model else None)
        path = Path(folder)
        found = _vitkit_source(path / "model.safetensors") if (path / "model.safetensors").exists() else None
    else:
        path = resolve_source(path)
        found = _vitkit_source(path)
    model_args = dict(model_args or {})
    if drop_path_rate is not None:
        model_args["drop_path_rate"] = drop_path_rate
    if found is not None:
        source, config = found
        config.update(model_args, num_classes=num_classes)
        _check_channels(path, config, in_chans)
        target = get_family("vit")(**config)
        target.model_name = getattr(source, "model_name", "")
        state: Any = source.state_dict()
        old_grid = tuple(source.patch_embed.grid_size)  # the source's real grid (rectangular grids too)
    else:  # timm / HuggingFace / JAX file: the architecture is named by the caller
        if model is None:
            raise ValueError(f"{path} is not a vitkit model file: name the architecture (model=...)")
        target = create_model(model, num_classes=num_classes, in_chans=in_chans, **model_args)
        state, old_grid = str(path), None  # the file's own config (if any) names its grid
    if not isinstance(target, VisionTransformer):
        raise ValueError(f"fine-tuning builds a ViT; {model!r} is a {type(target).__name__}")
    load_pretrained(target, state, ignore_head=True, old_grid=old_grid)
    if hub_cfg:
        set_pretrained_cfg(target, hub_cfg)  # its mean/std normalise the fine-tuning data
    loaded = sum(1 for k in target.state_dict() if not k.startswith(HEAD_PREFIXES))
    log.info("fine-tuning from %s: %d backbone tensors loaded, new %d-class head", name, loaded, num_classes)
    return target


def _check_channels(path: Path, config: dict[str, Any], in_chans: int) -> None:
    if int(config.get("in_chans", 3)) != in_chans:
        raise ValueError(
            f"{path} was trained on {config.get('in_chans', 3)}-channel images, the data has {in_chans}"
        )


def trained_model(path: str | Path, model_type: type[nn.Module]) -> nn.Module | None:
    """The whole ``model_type`` model (e.g. a DETR) saved in a vitkit run or model file, to train on from every
    weight; ``None`` when ``path`` holds something else (a ViT, to start a backbone from)."""
    path = resolve_source(path)
    meta = _vitkit_metadata(path)
    if meta is None:
        return None
    try:  # the family from the metadata: a ViT file is read once, by the backbone path, not loaded here too
        family = get_family(meta.get("family") or "")
    except ValueError:
        family = None  # load() below names what is wrong with the file
    if family is not None and not issubclass(family, model_type):
        return None
    model = load(path)
    if meta.get("structure_edits") or not is_plain(model.state_dict()):
        raise ValueError(
            f"{path} is a compressed model (pruned or int8); train on from the model it came from"
        )
    return model


def pretrained_backbone(
    path: str | Path, in_chans: int
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(registry name, architecture arguments, state dict) of the ViT in a vitkit run or model file (an MAE run
    gives its encoder), for a larger model (DETR, Segmenter) on ``in_chans``-channel images to build its backbone
    like it and load it."""
    path = resolve_source(path)
    found = _vitkit_source(path)
    if found is None:
        raise ValueError(f"a pre-trained backbone comes from a vitkit run or model file; {path} is not one")
    source, config = found
    _check_channels(path, config, in_chans)
    name = getattr(source, "model_name", "")
    if not name:
        raise ValueError(f"{path} does not name its architecture (no registry model name in its metadata)")
    config.pop("num_classes", None)
    return name, config, source.state_dict()


class ProbeHead(nn.Module):
    """MAE's linear probe: BatchNorm without affine parameters, then a linear layer."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(linear.in_features, affine=False, eps=1e-6)
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """The one linear layer equal to this head in eval mode (BatchNorm's running statistics folded in)."""
        scale = (self.norm.running_var + self.norm.eps).rsqrt()
        out = nn.Linear(
            self.linear.in_features,
            self.linear.out_features,
            device=scale.device,
            dtype=self.linear.weight.dtype,
        )
        out.weight.copy_(self.linear.weight * scale)
        out.bias.copy_(self.linear.bias - out.weight @ self.norm.running_mean)
        return out


def fold_probe_heads(model: nn.Module) -> None:
    """Replace :class:`ProbeHead` heads by their folded linear layers (the model is a plain ViT again)."""
    for name in ("head", "head_dist"):
        head = getattr(model, name, None)
        if isinstance(head, ProbeHead):
            setattr(model, name, head.fold())


def _backbone_parts(model: VisionTransformer, freeze_blocks: int | None) -> list[nn.Module]:
    blocks = list(model.blocks) if freeze_blocks is None else list(model.blocks)[:freeze_blocks]
    parts = [model.patch_embed, model.norm_pre, *blocks]
    if freeze_blocks is None:
        parts += [model.norm, model.fc_norm]
    return parts


def apply_mode(model: nn.Module, mode: str = "full", freeze_blocks: int = 0) -> list[nn.Module]:
    """Freeze what ``mode`` leaves fixed; returns the frozen modules (to keep in eval mode while training)."""
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune_mode must be one of {list(FINETUNE_MODES)}, got {mode!r}")
    if mode == "full":
        return []
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"finetune_mode={mode!r} needs a ViT, got {type(model).__name__}")
    depth = len(model.blocks)
    if mode == "partial" and not 0 <= freeze_blocks <= depth:
        raise ValueError(
            f"freeze_blocks must be in [0, {depth}] for a {depth}-block model, got {freeze_blocks}"
        )
    frozen = _backbone_parts(model, None if mode == "linear" else freeze_blocks)
    for module in frozen:
        module.requires_grad_(False)
    for name in ("cls_token", "dist_token", "reg_token", "pos_embed"):
        p = getattr(model, name, None)
        if isinstance(p, nn.Parameter):
            p.requires_grad_(False)
    if mode == "linear":
        for name in ("head", "head_dist"):
            head = getattr(model, name, None)
            if isinstance(head, nn.Linear):
                setattr(model, name, ProbeHead(head))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("finetune_mode=%s: %d trainable parameters", mode, trainable)
    return frozen
