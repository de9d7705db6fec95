"""Training: config and recipes, optimizer and schedule, checkpoints, the Trainer."""

from .._callable import make_module_callable
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RECIPES, TrainConfig, resolve_config, save_config
from .optim import build_optimizer, param_groups_weight_decay, warmup_cosine_schedule
from .trainer import Trainer, TrainingDivergedError, train

__all__ = [
    "RECIPES",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "build_optimizer",
    "load_checkpoint",
    "param_groups_weight_decay",
    "resolve_config",
    "save_checkpoint",
    "save_config",
    "train",
    "warmup_cosine_schedule",
]

make_module_callable(__name__, "train")
