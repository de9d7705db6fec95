"""Tasks: each a :class:`Task` that the task-agnostic :class:`~vitkit.engine.Trainer` runs.

| name | module | data | model |
|---|---|---|---|
| ``classification`` | :mod:`.classification` | labelled images | ViT / DeiT / ResNet (fine-tuning, distillation) |
| ``text-classification`` | :mod:`.text_classification` | labelled sentences | BERT encoder + head |
| ``mae`` | :mod:`.pretrain` | images (labels unused) | masked autoencoder |
| ``mlm`` | :mod:`.pretrain` | sentences | BERT masked language model |
| ``translation`` | :mod:`.translation` | sentence pairs | encoder-decoder Transformer |
| ``detection`` | :mod:`.detection` | COCO boxes | DETR |
| ``segmentation`` | :mod:`.segmentation` | COCO + masks | Segmenter |
| ``lm`` | :mod:`.language_modeling` | a UTF-8 text | GPT (decoder-only, next-token prediction) |
| ``contrastive`` | :mod:`.contrastive` | labelled images + caption templates, or image-text pairs | CLIP / SigLIP / LiT |

:func:`register_task` adds one (see ``docs/architecture.md``); :func:`fit` resolves a config, builds the
trainer for its task, trains (or resumes) and returns the summary.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ..engine.checkpoint import load_checkpoint
from ..engine.config import (
    RECIPES,
    TrainConfig,
    check_task_options,
    load_config_file,
    resolve_config,
    resume_config,
)
from ..engine.distributed import shutdown_distributed
from ..engine.runtime import TrainingInterrupted
from ..engine.trainer import Trainer
from .base import Batch, EvalSums, Task
from .classification import ImageClassification
from .contrastive import Contrastive
from .detection import Detection
from .language_modeling import LanguageModeling
from .pretrain import MAEPretraining, MLMPretraining
from .segmentation import Segmentation
from .text_classification import TextClassification
from .translation import Translation

__all__ = [
    "Task",
    "Batch",
    "EvalSums",
    "TASKS",
    "register_task",
    "get_task",
    "build_trainer",
    "fit",
    "task_for",
    "resolve_task_config",
]

TASKS: dict[str, type[Task]] = {}


def register_task(task: type[Task]) -> type[Task]:
    """Make ``task`` trainable by name (``vitkit train --task NAME``); usable as a class decorator."""
    if not task.name:
        raise ValueError(f"{task.__name__} has no name")
    TASKS[task.name] = task
    return task


for _task in (ImageClassification, TextClassification, MAEPretraining, MLMPretraining, Translation, Detection,
              Segmentation, LanguageModeling, Contrastive):  # fmt: skip
    register_task(_task)


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown task {name!r}{hint} (tasks: {', '.join(TASKS)})")
    return TASKS[name]


def task_for(dataset: str | None) -> str:
    """The task a dataset name implies when none is named: text datasets are text classification."""
    from ..data.text import is_text_dataset

    return "text-classification" if is_text_dataset(dataset) else "classification"


def build_trainer(cfg: TrainConfig, **kwargs: Any) -> Trainer:
    """The engine's :class:`Trainer` for ``cfg.task`` (``kwargs``: model, train_data, val_data, loss_fn, run_dir)."""
    task = get_task(cfg.task)
    check_task_options(cfg, task.name, task.options)
    return Trainer(cfg, task, **kwargs)


def resolve_task_config(
    recipe: str | None = None, config_file: str | Path | None = None, **overrides: Any
) -> TrainConfig:
    """:func:`~vitkit.engine.config.resolve_config`, with image classification on a text dataset read as text
    classification (``vitkit train --data sst2`` needs no ``--task``)."""
    cfg = resolve_config(recipe, config_file, **overrides)
    if cfg.task == "classification":
        cfg.task = task_for(cfg.dataset)
    named = [overrides.get("model"), RECIPES.get(recipe or cfg.recipe or "", {}).get("model")]
    if config_file is not None:
        named.append(load_config_file(config_file).get("model"))
    if not any(named) and get_task(cfg.task).default_model:  # no model named anywhere: the task's own
        cfg.model = get_task(cfg.task).default_model
    return cfg


def _resumed_config(run_dir: Path, state: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The checkpoint's own config (config.yaml only for checkpoints that predate it), with what a resume may
    change; a text run reads its own vocabulary again (a retrained one would give other token ids)."""
    saved = state.get("config")
    if not saved:
        import yaml

        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    cfg = resume_config(saved, **overrides)
    if cfg.task == "classification":
        cfg.task = task_for(cfg.dataset)
    if "tokenizer" in get_task(cfg.task).options and (run_dir / "tokenizer.json").is_file():
        cfg.tokenizer = str(run_dir / "tokenizer.json")
    return cfg


def fit(
    recipe: str | None = None, config_file: str | Path | None = None, resume: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:  # fmt: skip
    """Resolve the config (defaults < recipe < YAML < ``overrides``), train its task, return the summary dict.

    ``resume`` continues a run directory from its last checkpoint with that run's saved config.
    """
    if resume is not None:
        run_dir = Path(resume)
        state = load_checkpoint(run_dir / "checkpoint.pt")
        trainer = build_trainer(_resumed_config(run_dir, state, overrides), run_dir=run_dir)
        trainer.resume(run_dir, state)
    else:
        trainer = build_trainer(resolve_task_config(recipe, config_file, **overrides))
    try:
        summary = trainer.fit()
    except KeyboardInterrupt:  # Ctrl-C: say what is kept and how to go on, not a traceback
        shutdown_distributed(trainer.dist)
        raise TrainingInterrupted(trainer.run_dir, trainer.epoch) from None
    except BaseException:
        shutdown_distributed(trainer.dist)
        raise
    trainer.close()
    return summary
