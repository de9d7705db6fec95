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


def _reference(name: str, what: str):
    """The reference library ``refs.import_<name>()`` gives, or a skip that names it and why it failed."""
    import refs

    try:
        return getattr(refs, f"import_{name}")()
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"{what} is not importable: {e}")


@pytest.fixture(scope="session")
def timm():
    return _reference("timm", "timm (reference library)")


@pytest.fixture(scope="session")
def open_clip():
    return _reference("open_clip", "open_clip (reference library, pip install open_clip_torch)")


@pytest.fixture(scope="session")
def transformers():
    return _reference("transformers", "transformers (reference library)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real datasets: $VITKIT_DATA, else ../shared/data beside the repo."""
    root = Path(os.environ.get("VITKIT_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set VITKIT_DATA to the folder holding them)")
    return root
