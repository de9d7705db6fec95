"""The Python mirror of ``vitkit train`` (and of its aliases ``pretrain``, ``translate train``, ``detect train``,
``segment train``, ``lm train``): resolve a config, train its task, return the summary dict.

``vitkit.train(...)`` calls :func:`train`. The machinery lives in :mod:`vitkit.engine` (the loop) and
:mod:`vitkit.tasks` (what each task does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._callable import make_module_callable
from .tasks import fit

__all__ = ["train", "pretrain", "train_translation", "train_detection", "train_segmentation", "train_lm"]

Source = str | Path | None


def train(
    recipe: str | None = None, config_file: Source = None, resume: Source = None, **overrides: Any
) -> dict:
    """Train ``task`` (an override; default image classification, text classification on a text dataset).

    With no recipe, config file, dataset or resume, the ``digits`` recipe runs (the README's main job).
    """
    main_job = overrides.get("task", "classification") == "classification"
    if resume is None and recipe is None and config_file is None and "dataset" not in overrides and main_job:
        recipe = "digits"
    return fit(recipe, config_file, resume, **overrides)


def pretrain(method: str = "mae", recipe: str | None = None, config_file: Source = None, resume: Source = None,
             **overrides: Any) -> dict:  # fmt: skip
    """Self-supervised pre-training: ``method`` is ``mae`` (images) or ``mlm`` (text)."""
    from .tasks.pretrain import PRETRAIN_METHODS

    if method not in PRETRAIN_METHODS:
        raise ValueError(f"unknown pre-training method {method!r}; known: {list(PRETRAIN_METHODS)}")
    return fit(recipe, config_file, resume, **({} if resume else {"task": method}), **overrides)


def _task_alias(task: str, doc: str):
    def run(
        recipe: str | None = None, config_file: Source = None, resume: Source = None, **overrides: Any
    ) -> dict:
        return fit(recipe, config_file, resume, **({} if resume else {"task": task}), **overrides)

    run.__doc__ = doc
    return run


train_translation = _task_alias(
    "translation", "``vitkit translate train``: :func:`train` with ``task='translation'``."
)
train_detection = _task_alias(
    "detection", "``vitkit detect train``: :func:`train` with ``task='detection'``."
)
train_segmentation = _task_alias(
    "segmentation", "``vitkit segment train``: :func:`train` with ``task='segmentation'``."
)
train_lm = _task_alias("lm", "``vitkit lm train``: :func:`train` with ``task='lm'`` (a GPT on a text).")
train_translation.__name__, train_detection.__name__, train_segmentation.__name__, train_lm.__name__ = (
    "train_translation", "train_detection", "train_segmentation", "train_lm"
)  # fmt: skip

make_module_callable(__name__, "train")
