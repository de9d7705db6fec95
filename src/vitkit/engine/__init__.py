"""The task-agnostic training engine: config, optimizer and schedules, distributed helpers, checkpoints and the
:class:`Trainer`. It imports no task: a :class:`vitkit.tasks.Task` is handed to it."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ENGINE_OPTIONS, RECIPES, TrainConfig, resolve_config, save_config
from .optim import build_optimizer, param_groups_weight_decay, warmup_cosine_schedule
from .trainer import Trainer, TrainingDivergedError

__all__ = [
    "ENGINE_OPTIONS", "RECIPES", "TrainConfig", "Trainer", "TrainingDivergedError", "build_optimizer",
    "load_checkpoint", "param_groups_weight_decay", "resolve_config", "save_checkpoint", "save_config",
    "warmup_cosine_schedule",
]  # fmt: skip
