"""Compress trained models: low-rank factorisation of linear layers (more methods: see issue 5)."""

from .edits import apply_edits, record_edit, register_edit
from .lowrank import LowRankLinear, factorize_linear, low_rank, rank_for_energy

__all__ = ["LowRankLinear", "apply_edits", "factorize_linear", "low_rank", "rank_for_energy", "record_edit",
           "register_edit"]  # fmt: skip
