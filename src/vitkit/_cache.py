"""vitkit's own cache folder (decoded datasets, Hugging Face Hub downloads), shared by the packages that write one."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$VITKIT_CACHE`` if set, else ``~/.cache/vitkit``."""
    return Path(os.environ.get("VITKIT_CACHE") or Path.home() / ".cache" / "vitkit").expanduser()
