"""Compress trained models: int8 quantization, low-rank factorisation, structured pruning of heads and MLP
units, token merging."""

from .edits import record_edit, register_edit
from .lowrank import LowRankLinear, factorize_linear, low_rank, rank_for_energy
from .prune import prune_by_importance, prune_heads, prune_mlp, unit_importance
from .quantize import quantize_int8, quantized_modules
from .replay import apply_edits
from .tome import apply_tome, remove_tome

__all__ = ["LowRankLinear", "apply_edits", "apply_tome", "remove_tome", "factorize_linear", "low_rank", "prune_by_importance", "prune_heads",
           "prune_mlp", "quantize_int8", "quantized_modules", "rank_for_energy", "record_edit", "register_edit", "unit_importance"]  # fmt: skip
