"""The training loop, for any task: data on device -> task step -> AdamW + schedule -> EMA -> checkpoints.

The :class:`Trainer` knows no task. A :class:`~vitkit.tasks.Task` builds the data and model, computes the loss of a
batch and scores the validation split; the trainer does the rest, once, for every task: seeding, devices, AdamW
groups, warmup + cosine (or inverse-sqrt), clipping, accumulation, EMA, bf16 autocast, ``torch.compile``, torchrun
DDP / FSDP2, atomic checkpoints with exact resume, the NaN guard, the time limit, progress bars, ``metrics.jsonl``
and ``curves.png``.

A run directory holds ``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt``
(full training state, for ``--resume``), ``model.safetensors`` (final weights + data config), ``summary.json`` and
what the task adds (``eval.json``, plots). Under ``torchrun`` ``batch_size`` stays the global batch, sums are
reduced over ranks and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..weights.files import atomic_write
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, config_dict, save_config
from .distributed import (
    all_reduce_any,
    all_reduce_sum,
    full_model_state,
    full_state_dicts,
    gather_objects,
    init_distributed,
    is_sharded,
    load_full_state_dicts,
    reduce_sums,
    shutdown_distributed,
    wrap_model,
)
from .optim import build_optimizer, inverse_sqrt_schedule, warmup_cosine_schedule
from .progress import RunProgress
from .runtime import check_batches, check_run_dir, on_disk, rank_device, resolve_device, seed_everything
from .threads import threads_for_run

__all__ = ["Trainer", "TrainingDivergedError", "seed_everything", "resolve_device"]

log = logging.getLogger("vitkit.train")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def loggable(value: Any) -> bool:
    """Whether a figure goes into ``metrics.jsonl`` (numbers and lists of numbers, not kept outputs)."""
    if isinstance(value, list):
        return all(v is None or isinstance(v, (int, float)) for v in value)
    return value is None or isinstance(value, (int, float))


class Trainer:
    """Train ``task`` (a :class:`~vitkit.tasks.Task` class) with the settings of ``cfg``.

    ``model``, ``train_data`` / ``val_data`` and ``loss_fn`` replace what the task would build (custom data,
    fine-tuning a model in hand, a custom loss); ``run_dir`` names the run directory.
    """

    def __init__(
        self, cfg: TrainConfig, task: type, model: nn.Module | None = None, train_data=None, val_data=None,
        loss_fn=None, run_dir: str | Path | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        seed_everything(cfg.seed, cfg.deterministic, cfg.compile)  # the same on every rank: identical weights
        device = resolve_device(cfg.device)
        self.dist = init_distributed(device.type)
        self.device = rank_device(device, self.dist)
        self.use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.is_main = self.dist.is_main
        if cfg.distributed == "fsdp" and cfg.ema_decay:
            raise ValueError(
                "ema_decay is not supported with distributed='fsdp' (the EMA copy would be sharded)"
            )

        self.task = task(cfg, self.device, self.dist)
        self.train_data, self.val_data = self.task.build_data(train_data, val_data)
        if model is None:
            model = self.task.build_model(int(getattr(self.train_data, "num_channels", 0)))
        self.model = self._place(self.task.prepare_model(model))
        self.threads = threads_for_run(
            cfg.threads, self.model, cfg.batch_size, self.device, announce=self.is_main
        )
        self.task.setup(self.model)
        if loss_fn is not None:
            self.task.loss_fn = loss_fn
        self._build_loaders()
        self.parallel_model = wrap_model(
            self.model, self.dist, cfg.distributed, self.device
        )  # before the optimizer
        self._build_optimizer()
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay else None
        )  # fmt: skip
        self.step_model = torch.compile(self.parallel_model) if cfg.compile else self.parallel_model
        if self.dist.enabled:  # augmentation and drop-path draw differently on every rank
            torch.manual_seed(cfg.seed + self.dist.rank)

        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.best = None  # the best value of the task's selection metric so far
        self.resumed = False  # set by resume(): the run directory already holds this run
        self.history: list[dict[str, Any]] = []
        name = cfg.name or f"{self.task.run_name()}-{datetime.now():%Y%m%d-%H%M%S}"
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.out_dir) / name
        self._tb = None

    # ---------------------------------------------------------------- set-up
    def _place(self, model: nn.Module) -> nn.Module:
        cfg = self.cfg
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.task.memory_format = self.memory_format
        if self.dist.enabled and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            if self.device.type == "cuda":  # batch statistics over the global batch, as on one process
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                log.warning(
                    "BatchNorm on CPU ranks uses each rank's share of the batch (SyncBatchNorm is GPU-only)"
                )
        model = model.to(self.device, memory_format=self.memory_format)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model

    def _build_loaders(self) -> None:
        from ..data.loader import make_loader

        cfg = self.cfg
        shards = dict(rank=self.dist.rank, world_size=self.dist.world_size, num_workers=cfg.num_workers,
                      device=self.device, seed=cfg.seed)  # fmt: skip
        self.train_loader = make_loader(
            self.train_data, cfg.batch_size, shuffle=True, drop_last=True, **shards
        )
        val_batch = getattr(self.task, "eval_batch_size", None) or max(cfg.batch_size, 256)
        self.val_loader = make_loader(self.val_data, val_batch, shuffle=False, drop_last=False, **shards)

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        # fused AdamW: one kernel for every parameter (on a CPU, 5.3 -> 1.8 ms of a small ViT's ~50 ms step)
        fused = self.device.type == "cuda" or (self.device.type == "cpu" and not is_sharded(self.model))
        self.optimizer = build_optimizer(
            self.model, cfg.lr, cfg.weight_decay, cfg.betas, fused=fused, layer_decay=cfg.layer_decay
        )
        self.steps_per_epoch = max(1, len(self.train_loader) // cfg.accum_steps)
        total = cfg.epochs * self.steps_per_epoch
        warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = (
            inverse_sqrt_schedule(self.optimizer, warmup)
            if cfg.schedule == "inverse_sqrt"
            else warmup_cosine_schedule(self.optimizer, warmup, total, cfg.min_lr / cfg.lr)
        )

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def _grad_sync(self, stepping: bool):
        """DDP skips the gradient all-reduce on accumulation micro-steps (it runs on the stepping one)."""
        if not stepping and hasattr(self.parallel_model, "no_sync"):
            return self.parallel_model.no_sync()
        return nullcontext()

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Full training state, the same at any world size (under FSDP every rank must call this)."""
        model_state, optim_state = full_state_dicts(self.model, self.optimizer)
        rng = rng_state()
        return {
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best": self.best,
            "loader": self.train_loader.state_dict() if hasattr(self.train_loader, "state_dict") else None,
            "rng": rng,
            "rng_per_rank": gather_objects(rng) if self.dist.enabled else None,
            "world_size": self.dist.world_size,
            "config": config_dict(self.cfg),  # a resume trains with exactly this
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_full_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.best = state.get("best", state.get("best_acc"))  # older checkpoints kept the best accuracy
        if state.get("loader") is not None and hasattr(self.train_loader, "load_state_dict"):
            self.train_loader.load_state_dict(state["loader"])
        per_rank = state.get("rng_per_rank")
        if state.get("world_size", 1) == self.dist.world_size and self.dist.enabled and per_rank:
            set_rng_state(per_rank[self.dist.rank])
        else:
            set_rng_state(state["rng"])
            if self.dist.enabled:  # a new world size: fresh, distinct random streams per rank from here on
                torch.manual_seed(self.cfg.seed + 7919 * (self.epoch + 1) + self.dist.rank)

    def resume(self, path: str | Path | None = None, state: dict[str, Any] | None = None) -> None:
        """Continue from ``path`` (a checkpoint file or run directory; default this run's checkpoint), whose
        checkpoint ``state`` may already be read."""
        path = Path(path) if path else self.run_dir
        if path.is_dir():
            self.run_dir = path
            path = path / "checkpoint.pt"
        self.load_state_dict(state if state is not None else load_checkpoint(path))
        self.resumed = True
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():  # drop lines written after the checkpoint (a crash between the two writes)
            lines = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
            self.history = [m for m in lines if m["epoch"] <= self.epoch]
            if self.is_main:  # atomically: other ranks may be reading it
                text = "".join(json.dumps(m) + "\n" for m in self.history)
                atomic_write(metrics, lambda tmp: Path(tmp).write_text(text))
        log.info("resumed from %s at epoch %d", path, self.epoch)

    # ---------------------------------------------------------------- loops
    def train_one_epoch(self, progress: RunProgress | None = None) -> dict[str, float]:
        cfg, task = self.cfg, self.task
        self.model.train()
        for module in task.frozen_modules:  # frozen parts: no dropout, BatchNorm statistics unchanged
            module.eval()
        for source in (self.train_loader, self.train_data):  # a dataset may draw items per epoch (LM)
            getattr(source, "set_epoch", lambda epoch: None)(self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        counts: dict[str, Tensor] = {}
        seen = tokens = 0
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        check_every = 1 if self.device.type == "cpu" else 25
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        i, loss, weight = -1, None, 0
        for i, raw in enumerate(self.train_loader):
            stepping = (i + 1) % cfg.accum_steps == 0
            batch, out = self._micro_step(raw, stepping)
            loss, weight = out["loss"], weight + out.get("weight", 0)
            # On a GPU, reading the loss stalls the pipeline: check every `check_every` steps there (weights
            # updated after a bad step are never checkpointed), every step on the CPU where it costs nothing.
            bad = bad | ~torch.isfinite(loss.detach())
            if (i + 1) % check_every == 0 and all_reduce_any(bad, self.device):
                self._diverged(loss, i + 1, check_every)
            if stepping:
                self._optimizer_step(weight if "loss_sum" in out else None)
                weight = 0
            n = batch["size"]
            seen += n
            tokens += batch.get("tokens", 0)
            loss_sum += loss.detach() * n
            for k, v in task.train_counts(batch, out["output"]).items():
                counts[k] = counts.get(k, torch.zeros((), device=self.device)) + v
            if progress is not None:
                progress.step(i, loss, self.optimizer.param_groups[0]["lr"], tokens or seen,
                              "tokens" if tokens else "samples")  # fmt: skip
        if loss is not None and all_reduce_any(bad, self.device):
            self._diverged(loss, i + 1, check_every)
        elapsed = time.perf_counter() - start
        names = sorted(counts)
        loss_total, *totals, seen = all_reduce_sum(
            loss_sum, *(counts[k] for k in names), seen, device=self.device
        )
        record = {"train_loss": loss_total / max(seen, 1)}
        record.update({f"train_{k}": v / max(seen, 1) for k, v in zip(names, totals, strict=True)})
        record.update({"images_per_s": seen / elapsed, "train_time": elapsed})
        if tokens:  # text tasks count tokens
            record["tokens_per_s"] = all_reduce_sum(tokens, device=self.device)[0] / elapsed
        return record

    def _micro_step(self, raw: Any, stepping: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Forward and backward of one loader batch (DDP syncs gradients on the stepping one).

        A task's step that returns ``loss_sum`` and ``weight`` (e.g. summed over target tokens, and their count) is
        back-propagated as the sum; :meth:`_optimizer_step` then divides the accumulated gradient by the weight of
        the whole accumulated batch over every rank, so accumulation and data parallelism give the full batch's
        gradient. Any other step's mean loss is divided by ``accum_steps``.
        """
        batch = self.task.train_batch(raw)
        with self._grad_sync(stepping):
            with self._autocast():
                out = self.task.step(self.step_model, batch)
            (out["loss_sum"] if "loss_sum" in out else out["loss"] / self.cfg.accum_steps).backward()
        return batch, out

    def _optimizer_step(self, weight: Tensor | float | None = None) -> None:
        """Clip, step, schedule, EMA. ``weight``: what the accumulated ``loss_sum`` gradients are divided by
        (summed over ranks; DDP has averaged the gradients, hence the world size)."""
        if weight is not None:
            (total,) = all_reduce_sum(weight, device=self.device)
            scale = self.dist.world_size / max(total, 1.0)
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        if self.cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _diverged(self, loss: Tensor, step: int, check_every: int) -> None:
        where = f"step {step}" if check_every == 1 else f"one of the {check_every} steps up to step {step}"
        value = loss.item()  # the last loss; with check_every > 1 the bad one may be earlier
        shown = value if not math.isfinite(value) else "NaN or infinite"
        kept = on_disk(self.run_dir / "checkpoint.pt", self.epoch)
        raise TrainingDivergedError(
            f"loss became {shown} at epoch {self.epoch + 1}, {where}; stopping. {kept} (try a lower lr or clip_grad)"
        )

    @torch.inference_mode()
    def evaluate(self, model: nn.Module | None = None, final: bool = False) -> dict[str, Any]:
        """The task's validation figures; with ``final`` also what the task keeps for its artifacts.

        Each rank scores its share; the sums are reduced and the kept outputs gathered, so every rank gets the
        totals.
        """
        model = model or self.model
        was_training = model.training
        model.eval()
        self.task.begin_evaluation()
        sums: dict[str, Any] = {}
        kept: list[Any] = []
        batches, empty = 0, None
        for raw in self.val_loader:
            batches += 1
            batch = self.task.eval_batch(raw)
            empty = batch
            with self._autocast():
                batch_sums, keep = self.task.eval_step(model, batch, final)
            for k, v in batch_sums.items():
                sums[k] = sums[k] + v if k in sums else v
            if keep is not None:
                kept.append(keep)
        if is_sharded(model) and empty is not None:  # every rank must join each forward's weight all-gather
            for _ in range(len(self.val_loader) - batches):
                self.task.eval_step(model, empty, False)
        sums = reduce_sums(sums, self.device)
        if self.dist.enabled and kept:
            kept = [item for share in gather_objects(kept) for item in share]
        with self._autocast():
            result = self.task.metrics(sums, kept, model)
        model.train(was_training)
        return result

    # ---------------------------------------------------------------- fit
    def _log_epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)  # on every rank: all of them decide alike (best model, EMA or not)
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(k, v, record["epoch"])

    def _better(self, a: float | None, b: float | None) -> bool:
        """Whether selection value ``a`` is at least as good as ``b`` (None: not measured)."""
        if a is None:
            return False
        if b is None:
            return True
        return a >= b if self.task.selection[1] == "max" else a <= b

    def _start_run(self) -> None:
        if self.is_main:
            if not self.resumed:
                check_run_dir(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.glob(".*.tmp"):  # half-written files of a killed process: never read
                stale.unlink(missing_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
            self.task.save_inputs(self.run_dir)
        self.task.run_dir = self.run_dir
        if self.cfg.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError(
                    "tensorboard=True needs the tensorboard package: pip install tensorboard"
                ) from e
            self._tb = SummaryWriter(self.run_dir / "tensorboard")

    def _evaluate_epoch(self, record: dict[str, Any]) -> None:
        key = self.task.selection[0]
        record.update({k: v for k, v in self.evaluate().items() if loggable(v)})
        if self.ema is not None:
            record.update({f"ema_{k}": v for k, v in self.evaluate(self.ema.module).items() if loggable(v)})
        for value in (record.get(f"ema_{key}"), record.get(key)):
            if self._better(value, self.best):
                self.best = value

    def fit(self) -> dict[str, Any]:
        """Train for the configured epochs (from where a resume left off); returns a summary dict."""
        cfg = self.cfg
        check_batches(len(self.train_loader), self.train_data, cfg.batch_size, cfg.accum_steps)
        self._start_run()
        skipped = getattr(self.train_data, "num_skipped", 0) + getattr(self.val_data, "num_skipped", 0)
        if skipped and self.is_main:
            log.warning("skipped %d unreadable images (see the dataset's .skipped list)", skipped)
        t0 = time.perf_counter() - (self.history[-1]["elapsed"] if self.history else 0.0)
        progress = RunProgress(cfg.progress, self.is_main, self.epoch, cfg.epochs, len(self.train_loader))
        stopped_early = False
        for _ in progress:
            progress.start_epoch(self.epoch)
            record: dict[str, Any] = {"epoch": self.epoch + 1}
            record.update(self.train_one_epoch(progress))
            self.epoch += 1
            last = self.epoch == cfg.epochs
            if self.epoch % cfg.eval_every == 0 or last:
                self._evaluate_epoch(record)
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            record["elapsed"] = time.perf_counter() - t0
            record["skipped_images"] = skipped
            self._log_epoch(record)
            progress.end_epoch(record, self.task.selection[0])
            out_of_time = (
                bool(cfg.time_limit_min) and record["elapsed"] > cfg.time_limit_min * 60 and not last
            )
            out_of_time = all_reduce_any(out_of_time, self.device)
            if self.epoch % cfg.save_every == 0 or last or out_of_time:
                self._save_checkpoint()
            if out_of_time:
                log.warning("time limit of %.1f min reached after epoch %d", cfg.time_limit_min, self.epoch)
                stopped_early = True
                break
        progress.close()
        return self.finish(stopped_early)

    def close(self) -> None:
        """After a run that ended on every rank: DDP's reducer is freed while the process group is alive and every
        rank still there (freed after its gloo group, it can hang joining a thread), then the group is left."""
        self.parallel_model = self.step_model = None
        gc.collect()
        shutdown_distributed(self.dist, wait=True)

    def _save_checkpoint(self) -> None:
        state = self.state_dict()  # a collective under FSDP: every rank gathers, rank 0 writes
        if self.is_main:
            save_checkpoint(state, self.run_dir / "checkpoint.pt")

    def final_model(self) -> nn.Module:
        """The EMA weights when EMA is on and at least as good by the task's selection metric, else the raw."""
        if self.ema is not None and self.history:
            key, last = self.task.selection[0], self.history[-1]
            if key in last and self._better(last.get(f"ema_{key}"), last[key]):
                return self.ema.module
        return self.model

    def finish(self, stopped_early: bool = False) -> dict[str, Any]:
        """Save the final model, evaluate it, write the task's artifacts, curves and ``summary.json``."""
        from ..plots import plot_training_curves

        model = self.task.finalize(self.final_model())
        model.data_config = self.task.data_config()
        weights = full_model_state(model) if is_sharded(model) else None
        if self.is_main:
            self.task.save_model(model, self.run_dir, state_dict=weights)
        result = self.evaluate(model, final=True)
        summary: dict[str, Any] = {
            "run_dir": str(self.run_dir), "task": self.task.name, "epochs": self.epoch,
            **self.task.summary(result, model),
            "elapsed_s": self.history[-1]["elapsed"] if self.history else 0.0,
            "params": sum(p.numel() for p in model.parameters()),  # DTensors count their full size
            "train_samples": len(self.train_data), "world_size": self.dist.world_size,
            "stopped_early": stopped_early, "used_ema": model is not self.model,
        }  # fmt: skip
        key, final = self.task.selection[0], result.get(self.task.selection[0])
        summary[f"best_{key}"] = final if self._better(final, self.best) else self.best
        if not self.is_main:
            return summary
        summary.update(self.task.artifacts(model, result, self.run_dir))
        plot_training_curves(
            self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", **self.task.curve_options()
        )
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if self._tb is not None:
            self._tb.close()
        return summary
