"""The training loop: data on device -> batch augmentation -> AdamW + warmup/cosine -> EMA -> checkpoints.

A run directory holds everything a person or a program needs afterwards:
``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (full training
state, for ``--resume``), ``model.safetensors`` (final weights + data config, for eval/predict/serve),
``curves.png`` and ``confusion_matrix.png``.

Started by ``torchrun`` with several processes, the same loop trains data-parallel (see :mod:`.distributed`):
``batch_size`` stays the global batch, metrics are reduced over ranks and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .. import create_model
from ..weights.io import atomic_write
from ..weights.io import save as save_model
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, resolve_config, save_config
from .distill import DistillationLoss, TeacherInput, load_teacher
from .distributed import (
    DistEnv,
    all_reduce_any,
    all_reduce_sum,
    full_model_state,
    full_state_dicts,
    gather_objects,
    init_distributed,
    is_sharded,
    load_full_state_dicts,
    shutdown_distributed,
    wrap_model,
)
from .finetune import apply_mode, build_from_pretrained, fold_probe_heads, resolve_source
from .optim import build_optimizer, inverse_sqrt_schedule, warmup_cosine_schedule

__all__ = ["Trainer", "train", "TrainingDivergedError", "IMAGE_MODALITIES"]

IMAGE_MODALITIES = ("image", "detection", "segmentation")  # batches of images (normalised, maybe augmented)

log = logging.getLogger("vitkit.train")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------- RNG state (weights_only-safe)
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def build_text_model(cfg: TrainConfig, num_classes: int, tokenizer) -> nn.Module:
    """A text classifier: a HuggingFace BERT folder or vitkit text run (``init_from``) with a new head, or a fresh
    ``cfg.model`` sized to the tokenizer's vocabulary."""
    from ..models.bert import bert_from_huggingface
    from ..weights.io import load

    if cfg.init_from:
        src = Path(cfg.init_from)
        if (src / "config.json").exists():
            model = bert_from_huggingface(src, num_classes=num_classes)
        else:  # a vitkit text run or file; an MLM pre-training run gives its encoder
            model = load(resolve_source(src))
            model.reset_classifier(num_classes)
        vocab = model.embeddings.word.num_embeddings
        if tokenizer.vocab_size > vocab:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's table {vocab}")
        return model
    return create_model(
        cfg.model, num_classes=num_classes, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
        **cfg.model_args,
    )  # fmt: skip


def _input_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size a vitkit model expects (an MAE's is its encoder's), or None when it takes any size."""
    for m in (model, getattr(model, "encoder", None), getattr(model, "backbone", None)):
        size = getattr(m, "config", {}).get("img_size")
        if size is not None:
            return tuple(size)
    return None


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def _rank_device(device: torch.device, env: DistEnv) -> torch.device:
    """One GPU per process under torchrun: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and env.enabled:
        return torch.device("cuda", env.local_rank)
    return device


class Trainer:
    """Train a classifier from a :class:`TrainConfig`.

    ``model``, ``train_data`` / ``val_data`` (vitkit datasets) and ``loss_fn(logits, targets, images)`` may be
    passed in to replace what the config would build (fine-tuning, distillation, custom data).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module | None = None,
        train_data=None,
        val_data=None,
        loss_fn: Callable[..., Tensor] | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)  # the same on every rank: identical initial weights
        device = _resolve_device(cfg.device)
        self.dist = init_distributed(device.type)
        self.device = _rank_device(device, self.dist)
        self.use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.is_main = self.dist.is_main
        if cfg.distributed == "fsdp" and cfg.ema_decay:
            raise ValueError(
                "ema_decay is not supported with distributed='fsdp' (the EMA copy would be sharded)"
            )

        from .. import data as vdata

        self.modality = self.detect_modality(train_data)  # image | text | translation | detection | ...
        if self.modality not in ("image", "detection") and (
            cfg.mixup or cfg.cutmix or cfg.teacher or cfg.finetune_mode != "full"
        ):
            raise ValueError(
                f"{self.modality} training takes no mixup/cutmix, teacher or frozen fine-tuning modes"
            )
        self.tokenizer = self._build_tokenizer() if self.modality not in IMAGE_MODALITIES else None
        self.train_data = train_data if train_data is not None else self._build_dataset("train")
        if cfg.train_subset is not None:
            self.train_data = vdata.stratified_subset(self.train_data, cfg.train_subset, cfg.seed)
        self.val_data = val_data if val_data is not None else self._build_dataset(cfg.val_split)
        self.classes = list(self.train_data.classes)
        in_chans = int(getattr(self.train_data, "num_channels", 0))

        if model is None:
            model = self.build_model(in_chans)
        self.frozen_modules = apply_mode(model, cfg.finetune_mode, cfg.freeze_blocks)  # kept in eval mode
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if self.dist.enabled and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            if self.device.type == "cuda":  # batch statistics over the global batch, as on one process
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                log.warning(
                    "BatchNorm on CPU ranks uses each rank's share of the batch (SyncBatchNorm is GPU-only)"
                )
        self.model = model.to(self.device, memory_format=self.memory_format)
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.input_size = _input_size(self.model)

        self.mean = self.std = self.normalize = self.augment = None  # text: token ids go in as they are
        if self.modality in IMAGE_MODALITIES:
            mean, std = vdata.dataset_stats(cfg.dataset, self.train_data)
            self.mean, self.std = list(map(float, mean)), list(map(float, std))
            self.normalize = vdata.Normalize(self.mean, self.std).to(self.device)
            self.augment = vdata.build_train_augment(
                self.input_size, rrc_scale=cfg.rrc_scale, hflip=cfg.hflip, pad_crop=cfg.pad_crop,
                randaugment=cfg.randaugment or None, trivialaugment=cfg.trivialaugment,
                random_erasing=cfg.random_erasing,
            ).to(self.device)  # fmt: skip
        self.mix = (
            vdata.MixupCutmix(cfg.mixup, cfg.cutmix, cfg.mix_prob, label_smoothing=cfg.label_smoothing,
                              num_classes=len(self.classes))
            if cfg.mixup > 0 or cfg.cutmix > 0 else None
        )  # fmt: skip
        shards = dict(rank=self.dist.rank, world_size=self.dist.world_size)
        self.train_loader = vdata.make_loader(
            self.train_data, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed,
            num_workers=cfg.num_workers, device=self.device, **shards,
        )  # fmt: skip
        self.val_loader = vdata.make_loader(
            self.val_data, max(cfg.batch_size, 256), shuffle=False, drop_last=False, seed=cfg.seed,
            num_workers=cfg.num_workers, device=self.device, **shards,
        )  # fmt: skip
        self.loss_fn = loss_fn or (self._distillation_loss() if cfg.teacher else self._default_loss)

        self.parallel_model = wrap_model(
            self.model, self.dist, cfg.distributed, self.device
        )  # before the optimizer
        self.optimizer = build_optimizer(
            self.model, cfg.lr, cfg.weight_decay, cfg.betas, fused=self.device.type == "cuda",
            layer_decay=cfg.layer_decay,
        )  # fmt: skip
        self.steps_per_epoch = max(1, len(self.train_loader) // cfg.accum_steps)
        total = cfg.epochs * self.steps_per_epoch
        warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = (
            inverse_sqrt_schedule(self.optimizer, warmup)
            if cfg.schedule == "inverse_sqrt"
            else warmup_cosine_schedule(self.optimizer, warmup, total, cfg.min_lr / cfg.lr)
        )
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay else None
        )  # fmt: skip
        self.step_model = torch.compile(self.parallel_model) if cfg.compile else self.parallel_model
        if self.dist.enabled:  # augmentation and drop-path draw differently on every rank
            torch.manual_seed(cfg.seed + self.dist.rank)

        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.best_acc = 0.0
        self.history: list[dict[str, Any]] = []
        kind = f"finetune-{cfg.model}" if cfg.init_from else cfg.model
        name = cfg.name or f"{kind}-{cfg.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.out_dir) / name
        self._tb = None

    # ---------------------------------------------------------------- set-up helpers
    def build_model(self, in_chans: int) -> nn.Module:
        """The configured model: from the registry, or from pre-trained weights when ``init_from`` is set."""
        cfg = self.cfg
        if self.modality == "text":
            return build_text_model(cfg, len(self.classes), self.tokenizer)
        if cfg.init_from:
            model = build_from_pretrained(
                cfg.init_from, len(self.classes), in_chans, cfg.model, cfg.model_args, cfg.drop_path
            )
            cfg.model = (
                getattr(model, "model_name", "") or cfg.model
            )  # the architecture the weights came with
            return model
        return create_model(
            cfg.model, num_classes=len(self.classes), in_chans=in_chans, drop_path_rate=cfg.drop_path,
            **cfg.model_args,
        )  # fmt: skip

    def detect_modality(self, train_data=None) -> str:
        """What the batches hold: 'image' tensors, 'text' token ids (classification) or 'translation' pairs."""
        if train_data is not None:
            return getattr(train_data, "modality", "image")
        from ..data import is_text_dataset

        return "text" if is_text_dataset(self.cfg.dataset) else "image"

    def _build_tokenizer(self):
        """Text: ``cfg.tokenizer``, else the one beside ``init_from``, else WordPiece trained on the training texts."""
        from ..data.text import TextTokenizer, read_text_split

        cfg = self.cfg
        if cfg.tokenizer:
            return TextTokenizer.from_file(cfg.tokenizer, cfg.max_length)
        if cfg.init_from:
            src = Path(cfg.init_from)
            for name in ("tokenizer.json", "vocab.txt"):
                found = (src if src.is_dir() else src.parent) / name
                if found.exists():
                    return TextTokenizer.from_file(found, cfg.max_length)
        texts, _, _ = read_text_split(cfg.dataset, "train", cfg.data_dir)
        return TextTokenizer.train_wordpiece(texts, vocab_size=8000, max_length=cfg.max_length)

    def _build_dataset(self, split: str):
        from ..data import build_dataset

        if self.modality == "text":
            from ..data.text import build_text_dataset

            return build_text_dataset(self.cfg.dataset, split, self.tokenizer, self.cfg.data_dir)
        return build_dataset(
            self.cfg.dataset, split, data_dir=self.cfg.data_dir, on_error=self.cfg.on_bad_image
        )

    def _distillation_loss(self) -> DistillationLoss:
        """DeiT distillation from ``cfg.teacher``; a distilled ViT student returns both heads' logits in training."""
        cfg = self.cfg
        teacher = load_teacher(cfg.teacher, self.device).to(memory_format=self.memory_format)
        data = getattr(teacher, "data_config", None) or {}
        if data.get("in_chans") not in (None, self.train_data.num_channels):
            raise ValueError(
                f"teacher {cfg.teacher} takes {data['in_chans']}-channel images but {cfg.dataset} has "
                f"{self.train_data.num_channels}"
            )
        adapt = TeacherInput(self.mean, self.std, data.get("mean", self.mean), data.get("std", self.std),
                             data.get("img_size")).to(self.device)  # fmt: skip
        if getattr(self.model, "distilled", False):
            self.model.distilled_training = True
        return DistillationLoss(
            teacher, self._default_loss, cfg.distill, cfg.distill_alpha, cfg.distill_tau, adapt
        )

    def _default_loss(self, logits: Tensor, target: Tensor, images: Tensor | None = None) -> Tensor:
        if target.dtype.is_floating_point:  # soft targets from mixup/cutmix (smoothing already applied)
            return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), target, label_smoothing=self.cfg.label_smoothing)

    def data_config(self) -> dict[str, Any]:
        if self.modality == "text":
            return {"dataset": self.cfg.dataset, "classes": self.classes, "modality": "text",
                    "max_length": self.cfg.max_length}  # fmt: skip
        return {
            "dataset": self.cfg.dataset, "classes": self.classes, "mean": self.mean, "std": self.std,
            "img_size": list(self.input_size) if self.input_size else None,
            "in_chans": int(self.train_data.num_channels),
        }  # fmt: skip

    def _prepare(self, x: Tensor, train: bool) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.modality not in IMAGE_MODALITIES:  # token ids: cut the batch to its longest sentence
            return x[:, : int((x != self.tokenizer.pad_id).sum(1).max())]
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.input_size and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        if train:
            x = self.augment(x)
        return self.normalize(x).contiguous(memory_format=self.memory_format)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Full training state, the same at any world size (under FSDP every rank must call this)."""
        model_state, optim_state = full_state_dicts(self.model, self.optimizer)
        rng = _rng_state()
        return {
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_acc": self.best_acc,
            "loader": self.train_loader.state_dict() if hasattr(self.train_loader, "state_dict") else None,
            "rng": rng,
            "rng_per_rank": gather_objects(rng) if self.dist.enabled else None,
            "world_size": self.dist.world_size,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.cfg).items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_full_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.global_step, self.best_acc = state["epoch"], state["global_step"], state["best_acc"]
        if state.get("loader") is not None and hasattr(self.train_loader, "load_state_dict"):
            self.train_loader.load_state_dict(state["loader"])
        per_rank = state.get("rng_per_rank")
        if state.get("world_size", 1) == self.dist.world_size and self.dist.enabled and per_rank:
            _set_rng_state(per_rank[self.dist.rank])
        else:
            _set_rng_state(state["rng"])
            if self.dist.enabled:  # a new world size: fresh, distinct random streams per rank from here on
                torch.manual_seed(self.cfg.seed + 7919 * (self.epoch + 1) + self.dist.rank)

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from ``path`` (a checkpoint file or run directory; default this run's checkpoint)."""
        path = Path(path) if path else self.run_dir
        if path.is_dir():
            self.run_dir = path
            path = path / "checkpoint.pt"
        self.load_state_dict(load_checkpoint(path))
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():  # drop lines written after the checkpoint (a crash between the two writes)
            lines = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
            self.history = [m for m in lines if m["epoch"] <= self.epoch]
            if self.is_main:  # atomically: other ranks may be reading it
                text = "".join(json.dumps(m) + "\n" for m in self.history)
                atomic_write(metrics, lambda tmp: Path(tmp).write_text(text))
        log.info("resumed from %s at epoch %d", path, self.epoch)

    # ---------------------------------------------------------------- loops
    def train_one_epoch(self, bar=None) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        for module in self.frozen_modules:  # frozen parts: no dropout, BatchNorm statistics unchanged
            module.eval()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        check_every = 1 if self.device.type == "cpu" else 25
        show = bar is not None and not bar.disable
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        i = -1
        for i, (x, y) in enumerate(self.train_loader):
            y = y.to(self.device, non_blocking=True)
            x = self._prepare(x, train=True)
            target = y
            if self.mix is not None:
                x, target = self.mix(x, y)
            stepping = (i + 1) % cfg.accum_steps == 0
            with self._grad_sync(stepping):
                with self._autocast():
                    logits = self.forward_step(x, target)
                loss = self.loss_fn(logits, target, x)
                # On a GPU, reading the loss stalls the pipeline: check every `check_every` steps there (weights
                # updated after a bad step are never checkpointed), every step on the CPU where it costs nothing.
                bad = bad | ~torch.isfinite(loss.detach())
                if (i + 1) % check_every == 0 and all_reduce_any(bad, self.device):
                    self._diverged(loss, i + 1, check_every)
                (loss / cfg.accum_steps).backward()
            if stepping:
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.global_step += 1
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
            n = y.shape[0]
            seen += n
            loss_sum += loss.detach() * n
            correct += self.count_correct(logits, y)
            if show:
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                    img_s=f"{seen / (time.perf_counter() - start):.0f}")  # fmt: skip
        if all_reduce_any(bad, self.device):
            self._diverged(loss, i + 1, check_every)
        elapsed = time.perf_counter() - start
        loss_total, correct_total, seen = all_reduce_sum(loss_sum, correct, seen, device=self.device)
        return {
            "train_loss": loss_total / max(seen, 1),
            "train_acc": correct_total / max(seen, 1),
            "images_per_s": seen / elapsed,
            "train_time": elapsed,
        }

    def forward_step(self, x: Tensor, target: Tensor) -> Any:
        """The training forward pass (a sequence-to-sequence model also takes the target)."""
        return self.step_model(x)

    def count_correct(self, outputs: Tensor | tuple[Tensor, ...], targets: Tensor) -> Tensor:
        """Training-batch hits for ``train_acc`` (the class head's logits when the model returns a tuple)."""
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        return (logits.detach().argmax(-1) == targets).sum()

    def _grad_sync(self, stepping: bool):
        """DDP skips the gradient all-reduce on accumulation micro-steps (it runs on the stepping one)."""
        if not stepping and hasattr(self.parallel_model, "no_sync"):
            return self.parallel_model.no_sync()
        return nullcontext()

    def _diverged(self, loss: Tensor, step: int, check_every: int) -> None:
        where = f"step {step}" if check_every == 1 else f"one of the {check_every} steps up to step {step}"
        value = loss.item()  # the last loss; with check_every > 1 the bad one may be earlier
        shown = value if not math.isfinite(value) else "NaN or infinite"
        raise TrainingDivergedError(
            f"loss became {shown} at epoch {self.epoch + 1}, {where}; stopping. The last good checkpoint is "
            f"kept at {self.run_dir / 'checkpoint.pt'} (try a lower lr or clip_grad)"
        )

    @torch.inference_mode()
    def evaluate(self, model: nn.Module | None = None, return_outputs: bool = False) -> dict[str, Any]:
        """Loss and top-1 accuracy on the validation split (optionally the logits and targets too).

        Data-parallel: each rank scores its share and the sums are reduced, so every rank gets the totals.
        """
        model = model or self.model
        was_training = model.training
        model.eval()
        loss_sum, correct, count, batches, empty = 0.0, 0, 0, 0, None
        logits_all, targets_all = [], []
        for x, y in self.val_loader:
            batches += 1
            y = y.to(self.device)
            x = self._prepare(x, train=False)
            empty = x[:0]
            with self._autocast():
                logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
            count += len(y)
            if return_outputs:
                logits_all.append(logits.cpu())
                targets_all.append(y.cpu())
        if is_sharded(model) and empty is not None:  # every rank must join each forward's weight all-gather
            for _ in range(len(self.val_loader) - batches):
                model(empty)
        model.train(was_training)
        loss_sum, correct, count = all_reduce_sum(loss_sum, correct, count, device=self.device)
        out: dict[str, Any] = {"val_loss": loss_sum / max(count, 1), "val_acc": correct / max(count, 1)}
        if return_outputs:
            shares = gather_objects((torch.cat(logits_all), torch.cat(targets_all)))
            out["logits"] = torch.cat([lg for lg, _ in shares])
            out["targets"] = torch.cat([t for _, t in shares])
        return out

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

    def fit(self) -> dict[str, Any]:
        """Train for the configured epochs (from where a resume left off); returns a summary dict."""
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            if self.tokenizer is not None:  # the vocabulary the model's token ids mean
                self.tokenizer.save(self.run_dir / "tokenizer.json")
        if cfg.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError(
                    "tensorboard=True needs the tensorboard package: pip install tensorboard"
                ) from e
            self._tb = SummaryWriter(self.run_dir / "tensorboard")
        skipped = getattr(self.train_data, "num_skipped", 0) + getattr(self.val_data, "num_skipped", 0)
        if skipped and self.is_main:
            log.warning("skipped %d unreadable images (see the dataset's .skipped list)", skipped)
        t0 = time.perf_counter() - (self.history[-1]["elapsed"] if self.history else 0.0)
        epochs = tqdm(range(self.epoch, cfg.epochs), desc="epochs", initial=self.epoch, total=cfg.epochs,
                      disable=not (cfg.progress and self.is_main), dynamic_ncols=True)  # fmt: skip
        stopped_early = False
        for _ in epochs:
            steps = tqdm(total=len(self.train_loader), desc=f"epoch {self.epoch + 1}", leave=False,
                         disable=not (cfg.progress and self.is_main), dynamic_ncols=True)  # fmt: skip
            record: dict[str, Any] = {"epoch": self.epoch + 1}
            record.update(self.train_one_epoch(steps))
            steps.close()
            self.epoch += 1
            last = self.epoch == cfg.epochs
            if self.epoch % cfg.eval_every == 0 or last:
                record.update(self.evaluate())
                if self.ema is not None:
                    ema_eval = self.evaluate(self.ema.module)
                    record["ema_val_loss"], record["ema_val_acc"] = ema_eval["val_loss"], ema_eval["val_acc"]
                self.best_acc = max(self.best_acc, record.get("ema_val_acc", 0.0), record.get("val_acc", 0.0))
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            record["elapsed"] = time.perf_counter() - t0
            record["skipped_images"] = skipped
            self._log_epoch(record)
            epochs.set_postfix(
                loss=f"{record['train_loss']:.3f}", val_acc=f"{record.get('val_acc', float('nan')):.4f}"
            )
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
        epochs.close()
        return self.finish(stopped_early)

    def _save_checkpoint(self) -> None:
        state = self.state_dict()  # a collective under FSDP: every rank gathers, rank 0 writes
        if self.is_main:
            save_checkpoint(state, self.run_dir / "checkpoint.pt")

    def final_model(self) -> nn.Module:
        """The EMA weights when EMA is on and at least as good, else the raw weights."""
        if self.ema is not None and self.history:
            last = self.history[-1]
            if last.get("ema_val_acc", -1) >= last.get("val_acc", math.inf):
                return self.ema.module
        return self.model

    def finish(self, stopped_early: bool = False) -> dict[str, Any]:
        """Write the final model, evaluation, plots; return the summary."""
        model = self.final_model()
        fold_probe_heads(model)  # a linear probe's BatchNorm folds into its linear layer: a plain ViT again
        model.data_config = self.data_config()
        weights = full_model_state(model) if is_sharded(model) else None
        if self.is_main:
            save_model(
                model, self.run_dir / "model.safetensors", data_config=self.data_config(), state_dict=weights
            )
        result = self.evaluate(model, return_outputs=True)
        summary: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "epochs": self.epoch,
            "val_acc": result["val_acc"],
            "val_loss": result["val_loss"],
            "best_val_acc": max(self.best_acc, result["val_acc"]),
            "elapsed_s": self.history[-1]["elapsed"] if self.history else 0.0,
            "params": sum(p.numel() for p in model.parameters()),  # DTensors count their full size
            "train_samples": len(self.train_data),
            "world_size": self.dist.world_size,
            "stopped_early": stopped_early,
            "used_ema": model is not self.model,
        }
        if not self.is_main:
            return summary
        try:
            from ..metrics import classification_metrics
            from ..plots import plot_confusion_matrix, plot_training_curves

            metrics = classification_metrics(result["logits"], result["targets"], self.classes)
            (self.run_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
            plot_confusion_matrix(
                metrics["confusion_matrix"], self.classes, self.run_dir / "confusion_matrix.png"
            )
            plot_training_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
            summary.update({k: metrics[k] for k in ("top1", "top5", "macro_f1") if k in metrics})
        except ImportError as e:  # pragma: no cover - metrics/plots are part of the package
            log.warning("skipping metrics and plots: %s", e)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if self._tb is not None:
            self._tb.close()
        return summary


def train(
    recipe: str | None = None,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Python API of ``vitkit train``: resolve the config, train, return the summary dict.

    ``resume`` continues a run directory from its last checkpoint with that run's saved config.
    """
    if resume is None and recipe is None and config_file is None and "dataset" not in overrides:
        recipe = "digits"
    return fit_trainer(Trainer, recipe, config_file, resume, **overrides)


def fit_trainer(
    cls: type[Trainer],
    recipe: str | None = None,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Resolve the config, build ``cls`` (a Trainer or subclass), train (or resume ``resume``), return the summary.

    ``resume`` continues a run directory from its last checkpoint with that run's saved config.
    """
    if resume is not None:
        run_dir = Path(resume)
        cfg = resolve_config(config_file=run_dir / "config.yaml", **overrides)
        trainer = cls(cfg, run_dir=run_dir)
        trainer.resume(run_dir)
    else:
        trainer = cls(resolve_config(recipe, config_file, **overrides))
    try:
        return trainer.fit()
    finally:
        shutdown_distributed(trainer.dist)
