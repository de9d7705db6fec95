"""A saved model of any task: find its task, predict with it, evaluate it.

A model file records its task in ``data_config["task"]`` (older files: the model family and the data config's
``modality`` tell it). :func:`predict` runs the task's own :meth:`~vitkit.tasks.Task.predict` (a classifier's
top-k, a detector's boxes, a segmenter's mask, a translation, an MLM's filled ``[MASK]``, an MAE's
reconstruction); :func:`evaluate` scores the model on its task's validation split with the task's own metrics,
through the same code that evaluated it while training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import build_trainer, get_task
from .base import Task

__all__ = ["task_of", "task_of_file", "load_task_model", "model_file", "predict", "evaluate"]

_FAMILY_TASKS = {"vit": "classification", "resnet": "classification", "bert": "text-classification",
                 "bert_mlm": "mlm", "seq2seq": "translation", "mae": "mae", "detr": "detection",
                 "segmenter": "segmentation", "gpt": "lm"}  # fmt: skip
_MODALITY_TASKS = {"text": "text-classification", "translation": "translation", "detection": "detection",
                   "segmentation": "segmentation"}  # fmt: skip


def task_of(model: nn.Module) -> str:
    """The task a (loaded) model was trained for."""
    data = getattr(model, "data_config", None) or {}
    if data.get("task"):
        return data["task"]
    if data.get("modality") in _MODALITY_TASKS:
        return _MODALITY_TASKS[data["modality"]]
    family = getattr(model, "family", "")
    if family not in _FAMILY_TASKS:
        raise ValueError(f"{type(model).__name__} (family {family!r}) belongs to no vitkit task")
    return _FAMILY_TASKS[family]


def task_of_file(path: str | os.PathLike) -> str | None:
    """The task recorded in a model file's metadata (no model is built); None when it is not a vitkit file."""
    from ..weights.files import CheckpointError, read_metadata

    try:
        meta = read_metadata(model_file(path))
    except (CheckpointError, FileNotFoundError, OSError, ValueError):
        return None
    data = json.loads(meta["data_config"]) if meta.get("data_config") else {}

    class _Recorded:  # what task_of reads from a model
        family, data_config = meta.get("family", ""), data

    try:
        return task_of(_Recorded())  # type: ignore[arg-type]
    except ValueError:
        return None


def model_file(path: str | os.PathLike) -> Path:
    """A run directory -> its ``model.safetensors``; a model file as it is."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"no model at {p} (give a run directory or a model .safetensors)")
    return p


def load_task_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, type[Task]]:
    """(model in eval mode, its Task class) of a run directory or model file."""
    from ..weights import load

    model = load(model_file(path), device=device).eval()
    return model, get_task(task_of(model))


def predict(
    path_or_model: str | os.PathLike | nn.Module, inputs: list[Any], out_dir: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None, **options: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """What the model's task makes of ``inputs`` (image files or arrays; sentences for text tasks).

    ``source``: the run directory or file the model came from (where a text model's ``tokenizer.json`` is);
    ``out_dir``: where drawings, masks and reconstructions go (default: ``predictions/`` beside the model);
    ``options``: the task's (``topk``, ``threshold``, ``beam``, ...).
    """
    if isinstance(path_or_model, nn.Module):
        model, task = path_or_model.eval(), get_task(task_of(path_or_model))
    else:
        model, task = load_task_model(path_or_model)
        source = source or path_or_model
    folder = model_file(source).parent if source is not None else None
    out = Path(out_dir) if out_dir is not None else (folder or Path(".")) / "predictions"
    if not inputs:
        raise ValueError("nothing to predict: give at least one input")
    return task.predict(model, list(inputs), source=folder, out_dir=out, **options)


def evaluate(
    path: str | os.PathLike, dataset: str | None = None, data_dir: str | os.PathLike | None = None,
    out_json: str | os.PathLike | None = None, device: str = "cpu", batch_size: int | None = None,
    split: str | None = None, resize: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The task's validation figures for the model of a run directory or file (written to ``out_json``, default
    ``eval-<dataset>.json`` beside the model); the run's ``config.yaml`` says how its data was read.

    A ``dataset`` other than the run's whose images all have another size than the model's input raises
    :class:`~vitkit.data.ImageSizeError` unless ``resize`` (the images are then resized as in training)."""
    import yaml

    from ..data import canonical_name, check_image_size
    from ..engine.config import TrainConfig
    from ..engine.trainer import loggable
    from .inputs import input_size

    file = model_file(path)
    model, task = load_task_model(file, device=device)
    config_path = file.parent / "config.yaml"
    values = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    values = {k: v for k, v in (values or {}).items() if k in TrainConfig.__dataclass_fields__}
    own = values.get("dataset") or (model.data_config or {}).get("dataset")
    values.update(task=task.name, device=device, progress=False, threads=None, compile=False, ema_decay=None)
    values.update(
        {k: v for k, v in dict(dataset=dataset, data_dir=data_dir, batch_size=batch_size).items() if v}
    )
    if not values.get("dataset"):
        values["dataset"] = own
    for name in ("tokenizer.json",):  # the run's vocabulary, not a new one
        if (file.parent / name).is_file():
            values["tokenizer"] = str(file.parent / name)
    cfg = TrainConfig(**{**values, "betas": tuple(values.get("betas", (0.9, 0.999)))})
    cfg.init_from = None  # the weights are the model's own
    trainer = build_trainer(cfg, model=model, run_dir=file.parent)
    if dataset and canonical_name(str(dataset)) != canonical_name(str(own)):
        check_image_size(trainer.val_data, input_size(model), str(dataset), resize)
    result = {k: v for k, v in trainer.evaluate().items() if loggable(v)}
    result.update(checkpoint=str(file), task=task.name, dataset=cfg.dataset)
    out = (
        Path(out_json)
        if out_json
        else file.parent / f"eval-{Path(str(cfg.dataset)).name.replace(':', '-')}.json"
    )
    out.write_text(json.dumps(result, indent=2))
    result["eval_json"] = str(out)
    return result
