"""Training flags generated from :class:`~vitkit.engine.config.TrainConfig`, per task.

A task's parser gets the engine's flags and the task's own options (``Task.options``), nothing else, so
``--help`` lists exactly what applies and a flag of another task is refused by name.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["add_own_parser", "add_train_flags", "train_overrides", "task_fields", "refuse_other_task_flags"]


def task_fields(task) -> list[str]:
    """The TrainConfig fields ``task`` (a Task class) takes: the engine's and its own, in the dataclass order."""
    from ..engine.config import ENGINE_OPTIONS, config_field_types

    return [n for n in config_field_types() if n in ENGINE_OPTIONS or n in task.options]


def _optional(base):
    from ..engine.config import NONE

    def cast(value: str):
        return NONE if value.lower() in ("none", "null") else base(value)  # explicitly off, not "not given"

    cast.__name__ = base.__name__
    return cast


def add_train_flags(p: argparse.ArgumentParser, names: Iterable[str], skip: Iterable[str] = ()) -> None:
    """One ``--flag`` per TrainConfig field in ``names`` (except ``skip``), typed from the dataclass."""
    from ..engine.config import config_field_types

    types, skip = config_field_types(), {"recipe", "task", *skip}
    group = p.add_argument_group("training options (override the recipe / config file)")
    for name in names:
        if name in skip:
            continue
        flag, hint = "--" + name.replace("_", "-"), str(types[name].type)
        if "dict" in hint:
            group.add_argument(flag, dest=name, type=json.loads, default=None, help="JSON object")
        elif hint.startswith("bool"):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif "list" in hint:  # one or more values (templates with spaces: quote each)
            group.add_argument(flag, dest=name, nargs="+", default=None, metavar=name.split("_")[-1].upper())
        elif "tuple" in hint:
            group.add_argument(flag, dest=name, type=float, nargs=2, default=None, metavar=("A", "B"))
        else:
            base = next(({"float": float, "int": int}[k] for k in ("float", "int") if k in hint), str)
            group.add_argument(flag, dest=name, type=_optional(base), default=None)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values given on the command line (flags left out are None and not returned)."""
    from ..engine.config import config_field_types

    out = {}
    for name in config_field_types():
        value = getattr(args, name, None)
        if value is not None and name != "recipe":
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def refuse_other_task_flags(unknown: list[str], task_name: str, parser: argparse.ArgumentParser) -> None:
    """Name the flags of ``unknown`` that are training options of other tasks; argparse reports the rest."""
    from ..engine.config import config_field_types

    fields = config_field_types()
    other = [a for a in unknown if a.startswith("--") and a[2:].split("=")[0].replace("-", "_") in fields]
    if other:
        parser.error(f"the {task_name} task does not take {', '.join(a.split('=')[0] for a in other)}")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")


def add_own_parser(sub, name: str, func, text: str) -> None:
    """A command that parses its own arguments (one parser per task): everything after its name goes to ``func``
    as ``args.rest`` (see :func:`vitkit.cli.main`)."""
    p = sub.add_parser(name, add_help=False, help=text)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=func)
