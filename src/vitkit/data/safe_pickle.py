"""A restricted unpickler for the official CIFAR python batches.

The CIFAR ``*-python`` archives are pickles, and unpickling untrusted data can run arbitrary
code. :func:`safe_load_pickle` only lets through the globals needed to rebuild plain containers
and numpy arrays; anything else (``os.system``, ``builtins.eval``, custom classes) raises
:class:`UnsafePickleError` before it is called.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "safe_load_pickle"]


def _numpy_core(submodule: str):
    try:  # numpy >= 2 moved numpy.core to numpy._core (the old name still warns)
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # pragma: no cover - numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("_codecs", "encode")] = __import__("_codecs").encode  # protocol-2 bytes written by Python 3
    return allowed


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle references a global outside the allow-list (a ValueError too: reported as one line, like every
    refused input)."""


class CorruptPickleError(pickle.UnpicklingError, ValueError):
    """The pickle is truncated or malformed."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction helpers; plain dict/list/str/bytes/int
    need no globals at all."""

    _allowed = _allowed_globals()

    def __init__(self, file, *, source: str = "<pickle>", **kw) -> None:
        super().__init__(file, **kw)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {self.source}: it references {module}.{name}, which is not in the "
                "allow-list (numpy arrays and plain containers only). The file is not a genuine CIFAR batch."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing to unpickle {self.source}: persistent ids are not allowed")


def safe_load_pickle(path: str | Path, encoding: str = "latin1") -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler` (``latin1`` decodes Python 2 strings)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, source=str(path), encoding=encoding).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise CorruptPickleError(f"corrupt or truncated pickle {path}: {type(e).__name__}: {e}") from None
