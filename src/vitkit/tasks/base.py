"""The Task protocol: what a task tells the task-agnostic :class:`~vitkit.engine.Trainer`.

A task builds its data and model, turns a loader batch into a batch dict, computes the training loss in
:meth:`Task.step`, scores the validation split as per-batch sums (reduced across ranks by the engine) that
:meth:`Task.metrics` turns into figures, and writes its own files at the end (:meth:`Task.artifacts`). The shape
follows timm's ``timm/task`` (a task object whose step returns ``{"loss", "output"}``) and DETR's
``build(args) -> model, criterion, postprocessors``. See ``docs/architecture.md`` for a walk-through.

The engine calls, in order::

    task = TaskClass(cfg, device, dist)
    train_data, val_data = task.build_data(train_data, val_data)
    model = task.prepare_model(model or task.build_model(in_chans))   # seeded: identical on every rank
    task.setup(model)                                # after the model is on the device
    for each training batch:   task.step(model, task.train_batch(batch))   -> {"loss", "output", ...}
    for each validation batch: task.eval_step(model, task.eval_batch(batch), final) -> sums, kept
    task.metrics(sums, kept, model)                   -> {"val_...": ...}
    at the end: task.finalize(model), task.data_config(), task.artifacts(...)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = ["Task", "Batch", "EvalSums", "dataset_label"]

Batch = dict[str, Any]  # what a task's step reads: inputs and targets together, and "size" (samples in it)
EvalSums = dict[str, "float | int | Tensor"]  # per-batch sums, added over batches and ranks by the engine


def dataset_label(dataset: Any) -> str:
    """A dataset as a run-folder name: ``digits``, ``coco:/data/canvas`` -> ``coco-canvas``, ``/a/book.txt`` ->
    ``book`` (no path separators: a run directory is one folder)."""
    kind, sep, rest = str(dataset).partition(":")
    if sep and kind in ("folder", "coco", "manifest", "pairs"):
        return f"{kind}-{Path(rest).stem or kind}"
    return Path(str(dataset)).stem or str(dataset)


class Task:
    """Base class of every task; subclasses override what differs (see the module docstring)."""

    name: ClassVar[str] = ""
    # TrainConfig fields this task reads beyond the engine's own (vitkit.engine.config.ENGINE_OPTIONS): its
    # options section, its command-line flags; any other field set for this task is refused by name
    options: ClassVar[frozenset[str]] = frozenset()
    default_model: ClassVar[str] = ""
    # the validation figure that says which weights are better (EMA or raw) and which epoch was best
    selection: ClassVar[tuple[str, str]] = ("val_loss", "min")
    loss_label: ClassVar[str] = "loss"  # the curve's name in curves.png
    # curves.png's middle panel: (title, y label, figure logged as train_<key> / val_<key>, "max" or "min" is best);
    # None: no middle panel
    quality_curve: ClassVar[tuple[str, str, str, str] | None] = ("Accuracy", "top-1 accuracy", "acc", "max")
    val_split_name: ClassVar[str | None] = None  # a split name used instead of cfg.val_split
    input_kind: ClassVar[str] = "images"  # what predict reads: "images" (files, arrays) or "texts" (strings)

    def __init__(self, cfg, device: torch.device, dist) -> None:
        self.cfg, self.device, self.dist = cfg, device, dist
        self.frozen_modules: list[nn.Module] = []  # kept in eval mode while training
        self.train_data = self.val_data = None
        self.memory_format = torch.contiguous_format

    # ------------------------------------------------------------------ building
    def build_data(self, train_data=None, val_data=None) -> tuple[Any, Any]:
        """The training and validation datasets (``train_data`` / ``val_data`` replace what the config names)."""
        raise NotImplementedError

    def build_model(self, in_chans: int) -> nn.Module:
        raise NotImplementedError

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model built here or handed to the trainer, before it moves to the device (e.g. freeze parts)."""
        return model

    def setup(self, model: nn.Module) -> None:
        """Everything that needs the model on its device: input pipeline, loss modules, teachers."""

    def save_inputs(self, run_dir: Path) -> None:
        """Write what the run's model needs to read its inputs (e.g. ``tokenizer.json``), at the start of a run."""

    def run_name(self) -> str:
        return f"{self.cfg.model}-{dataset_label(self.cfg.dataset)}"

    # ------------------------------------------------------------------ training
    def train_batch(self, batch: Any) -> Batch:
        """A loader batch -> the step's batch dict on the device (augmented)."""
        raise NotImplementedError

    def eval_batch(self, batch: Any) -> Batch:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        """The training forward pass and loss: ``{"loss": scalar tensor, "output": what the model returned}``."""
        raise NotImplementedError

    def train_counts(self, batch: Batch, output: Any) -> dict[str, Tensor]:
        """Per-batch counts summed over an epoch and divided by its samples: ``{"acc": hits}`` -> ``train_acc``."""
        return {}

    # ------------------------------------------------------------------ evaluation
    def begin_evaluation(self) -> None:
        """Called before each pass over the validation split (e.g. to re-seed the validation masks)."""

    def eval_step(self, model: nn.Module, batch: Batch, final: bool) -> tuple[EvalSums, Any]:
        """One validation batch -> (sums, kept): sums are added over batches and ranks; ``kept`` (or None) is
        collected from every batch and rank, for figures that need the whole split (``final``: the last pass,
        whose outputs the artifacts draw)."""
        raise NotImplementedError

    def metrics(self, sums: dict[str, Any], kept: list[Any], model: nn.Module) -> dict[str, Any]:
        """The validation figures (``val_*``) from the reduced sums and the kept outputs."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the end of a run
    def finalize(self, model: nn.Module) -> nn.Module:
        """The model as it is saved (e.g. a linear probe's BatchNorm folded into its linear layer)."""
        return model

    def data_config(self) -> dict[str, Any]:
        """What a saved model records about its inputs and task (``vitkit.load(...).data_config``)."""
        return {"task": self.name, "dataset": self.cfg.dataset}

    def save_model(self, model: nn.Module, run_dir: Path, state_dict: dict | None = None) -> None:
        """``model.safetensors``: a registry model with its config (``vitkit.load`` rebuilds it); any other module
        as its weights alone."""
        from ..weights.files import atomic_write, save

        if hasattr(model, "config") and hasattr(model, "family"):
            save(model, run_dir / "model.safetensors", data_config=self.data_config(), state_dict=state_dict)
            return
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
        atomic_write(run_dir / "model.safetensors", lambda tmp: save_file(state, str(tmp)))

    def curve_options(self) -> dict[str, Any]:
        """How ``curves.png`` labels this task's figures (:func:`vitkit.plots.plot_training_curves`)."""
        return {"loss_label": self.loss_label, "quality": self.quality_curve}

    def summary(self, result: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        """The figures of the final evaluation that go into ``summary.json`` (every rank)."""
        return {k: v for k, v in result.items() if k.startswith("val_") and not isinstance(v, (Tensor, list))}

    def artifacts(self, model: nn.Module, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """Write ``eval.json``, drawings and plots (rank 0); returns figures to add to the summary."""
        return {}

    # ------------------------------------------------------------------ a saved model (predict, serve)
    @classmethod
    def predict(
        cls, model: nn.Module, inputs: list[Any], source: Path | None, out_dir: Path, **options: Any
    ) -> list:
        """What ``vitkit predict`` / ``vitkit.predict`` return for ``inputs``: one JSON-able dict per input.

        ``source``: the folder the model file is in (a text model's ``tokenizer.json``); ``out_dir``: where files
        (drawings, masks) go."""
        raise ValueError(f"a {cls.name} model does not predict")

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        """The human-readable form of :meth:`predict`'s results."""
        import json

        return "\n".join(json.dumps(r) for r in results)

    @classmethod
    def training_mode(cls, options: dict[str, Any]) -> str:
        """What trains when starting from other weights (``mode:`` of the printed result): the options' own
        ``finetune_mode`` where this task takes one, else ``full``."""
        return options.get("finetune_mode", "full") if "finetune_mode" in cls.options else "full"

    @classmethod
    def report(cls, summary: dict[str, Any]) -> str:
        """The figures of the one-line result ``vitkit`` prints after training."""
        return f"val loss: {summary['val_loss']:.4f}"
