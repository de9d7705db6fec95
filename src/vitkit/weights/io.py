"""Compatibility names: ``vitkit.weights.io`` was split into :mod:`vitkit.weights.files` (reading and writing
checkpoint files, the lowest layer) and :mod:`vitkit.weights.rebuild` (rebuilding a model, above the registry).

New code imports from those modules or from :mod:`vitkit.weights`. Nothing inside ``vitkit.weights`` or below the
registry may import this module (it imports :mod:`.rebuild`, hence the registry and the models).
"""

from .files import CheckpointError, atomic_write, read_checkpoint, read_metadata, save
from .rebuild import load

__all__ = ["read_checkpoint", "read_metadata", "save", "load", "atomic_write", "CheckpointError"]
