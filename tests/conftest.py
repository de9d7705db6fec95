from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def timm():
    from refs import import_timm

    try:
        return import_timm()
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"timm (reference library) is not importable: {e}")


@pytest.fixture(scope="session")
def open_clip():
    from refs import import_open_clip

    try:
        return import_open_clip()
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"open_clip (reference library, pip install open_clip_torch) is not importable: {e}")


@pytest.fixture(scope="session")
def transformers():
    from refs import import_transformers

    try:
        return import_transformers()
    except Exception as e:  # pragma: no cover
        pytest.skip(f"transformers (reference library) is not importable: {e}")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real datasets: $VITKIT_DATA, else ../shared/data beside the repo."""
    root = Path(os.environ.get("VITKIT_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set VITKIT_DATA to the folder holding them)")
    return root
