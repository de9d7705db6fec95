"""Make a module callable, so that ``vitkit.train(...)`` runs ``vitkit.train.train(...)``.

The jobs of the command line (``train``, ``evaluate``, ``predict``; ``fewshot``, whose function is ``fewshot_eval``)
are modules holding a function of the same name; this lets the Python API mirror the CLI without the module and the function shadowing each other.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def make_module_callable(module_name: str, function_name: str) -> None:
    """Calling module ``module_name`` calls its attribute ``function_name`` with the same arguments."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
