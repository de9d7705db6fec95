"""Weights: safe checkpoint reading, timm/HF/JAX conversion, and vitkit's self-describing save/load."""

from .convert import check_state_dict, detect_layout, hf_to_vitkit, jax_to_vitkit
from .io import CheckpointError, atomic_write, load, read_checkpoint, save
from .pretrained import convert_state_dict, load_pretrained

__all__ = [
    "CheckpointError",
    "atomic_write",
    "check_state_dict",
    "convert_state_dict",
    "detect_layout",
    "hf_to_vitkit",
    "jax_to_vitkit",
    "load",
    "load_pretrained",
    "read_checkpoint",
    "save",
]
