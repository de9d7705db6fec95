"""Self-supervised pre-training with the Trainer: ``vitkit pretrain --method mae|mlm``.

A :class:`Pretrainer` is the classification :class:`~vitkit.train.trainer.Trainer` (same data pipeline,
augmentation, optimizer, schedule, checkpoints, exact resume, torchrun data parallelism) with the model's own
loss in place of the labels (which are never read) and a validation loss in place of accuracy. It writes
``model.safetensors`` (the whole pre-training model) and ``encoder.safetensors`` (the encoder alone: what
``vitkit finetune --from RUN`` starts from).

- :class:`MAEPretrainer`: masked autoencoder on images (``mae_*`` models), plus ``reconstructions.png``.
- :class:`MLMPretrainer`: BERT's masked language model on text (any ``bert`` encoder; the run's tokenizer).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.bert import MaskedLanguageModel
from ..registry import create_model
from ..weights.io import save as save_model
from .distributed import all_reduce_sum
from .trainer import Trainer, fit_trainer

__all__ = ["Pretrainer", "MAEPretrainer", "MLMPretrainer", "pretrain", "PRETRAIN_METHODS"]

log = logging.getLogger(__name__)


def _own_loss(outputs: tuple[Tensor, ...], targets: Tensor, inputs: Tensor) -> Tensor:
    return outputs[0]  # the model computes its loss on what it hid; labels are never looked at


class Pretrainer(Trainer):
    """Shared by the pre-training methods: the model returns (loss, ...) and is scored by that loss."""

    method = ""
    val_seed = 1234  # validation masks are the same at every evaluation, so the loss curve is comparable

    def __init__(self, cfg, **kwargs: Any) -> None:
        if cfg.teacher or cfg.init_from or cfg.mixup or cfg.cutmix:
            raise ValueError(f"{self.method} pre-training takes no teacher, init_from, mixup or cutmix")
        super().__init__(cfg, loss_fn=_own_loss, **kwargs)

    def count_correct(self, outputs, targets: Tensor) -> Tensor:
        return torch.zeros((), device=self.device)  # no accuracy without labels

    def _val_generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.val_seed + self.dist.rank)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module | None = None, return_outputs: bool = False) -> dict[str, Any]:
        """Mean pre-training loss over the validation split (the same masks every time)."""
        model = model or self.model
        was_training = model.training
        model.eval()
        g = self._val_generator()
        loss_sum, count = 0.0, 0
        for x, _ in self.val_loader:
            x = self._prepare(x, train=False)
            with self._autocast():
                loss = model(x, generator=g)[0]
            loss_sum += float(loss) * len(x)
            count += len(x)
        model.train(was_training)
        loss_sum, count = all_reduce_sum(loss_sum, count, device=self.device)
        return {"val_loss": loss_sum / max(count, 1)}

    def extra_outputs(self, model: nn.Module) -> None:
        """Method-specific files written at the end (rank 0)."""

    def finish(self, stopped_early: bool = False) -> dict[str, Any]:
        model = self.final_model()
        data_config = self.data_config()
        data_config.pop("classes", None)  # pre-training saw no labels
        result = self.evaluate(model)
        summary: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "method": self.method,
            "epochs": self.epoch,
            "val_loss": result["val_loss"],
            "elapsed_s": self.history[-1]["elapsed"] if self.history else 0.0,
            "params": sum(p.numel() for p in model.parameters()),
            "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
            "world_size": self.dist.world_size,
            "stopped_early": stopped_early,
        }
        if not self.is_main:
            return summary
        save_model(model, self.run_dir / "model.safetensors", data_config=data_config)
        save_model(model.encoder, self.run_dir / "encoder.safetensors", data_config=data_config)
        from ..plots import plot_training_curves

        plot_training_curves(
            self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", loss_label=f"{self.method} loss"
        )
        self.extra_outputs(model)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


class MAEPretrainer(Pretrainer):
    """Masked-autoencoder pre-training; ``cfg.model`` names an ``mae`` family model (e.g. ``mae_vit_mnist``)."""

    method = "mae"

    def build_model(self, in_chans: int) -> nn.Module:
        if self.modality != "image":
            raise ValueError(
                f"--method mae pre-trains on images; {self.cfg.dataset!r} is text (use --method mlm)"
            )
        cfg = self.cfg
        model = create_model(cfg.model, in_chans=in_chans, drop_path_rate=cfg.drop_path, **cfg.model_args)
        if getattr(model, "family", None) != "mae":
            raise ValueError(f"--method mae needs an MAE model (e.g. mae_vit_mnist), got {cfg.model!r}")
        return model

    @torch.inference_mode()
    def reconstructions(self, n: int = 8) -> list[tuple[str, Tensor]]:
        """Rows (original, masked, reconstruction) for the first ``n`` validation images, in [0, 1]."""
        from ..models.mae import unpatchify

        model = self.final_model().eval()
        images = torch.stack([self.val_data[i][0] for i in range(min(n, len(self.val_data)))]).to(self.device)
        x = self._prepare(images, train=False)
        _, pred, mask = model(x, generator=torch.Generator(device=self.device).manual_seed(self.val_seed))
        masked, recon = model.reconstruct(x, pred.float(), mask)
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        hidden = unpatchify(
            mask[..., None].expand_as(pred).float(), model.patch_size, model.grid_size, model.in_chans
        )
        return [
            ("original", images.clamp(0, 1)),
            ("masked", (masked * std + mean).clamp(0, 1) * (1 - hidden) + 0.5 * hidden),  # grey = hidden
            ("reconstruction", (recon * std + mean).clamp(0, 1)),
        ]

    def extra_outputs(self, model: nn.Module) -> None:
        from ..plots import plot_image_grid

        plot_image_grid(
            self.reconstructions(), self.run_dir / "reconstructions.png",
            title=f"MAE {self.cfg.model}: mask ratio {model.mask_ratio:g}, epoch {self.epoch}",
        )  # fmt: skip


class MLMPretrainer(Pretrainer):
    """BERT masked-language-model pre-training of ``cfg.model`` (a ``bert`` encoder) on a text dataset's sentences."""

    method = "mlm"

    def build_model(self, in_chans: int) -> nn.Module:
        if self.modality != "text":
            raise ValueError(f"--method mlm pre-trains on text; {self.cfg.dataset!r} is an image dataset")
        tok = self.tokenizer
        encoder_args = {"vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id, **self.cfg.model_args}
        specials = [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id]
        return MaskedLanguageModel(
            self.cfg.model, encoder_args, mask_token_id=tok.mask_id, special_ids=specials
        )

    @torch.inference_mode()
    def evaluate(self, model: nn.Module | None = None, return_outputs: bool = False) -> dict[str, Any]:
        """Masked-token cross-entropy and accuracy (top-1 of the hidden tokens) over the validation split."""
        model = model or self.model
        was_training = model.training
        model.eval()
        g = self._val_generator()
        loss_sum, correct, count = 0.0, 0, 0
        for x, _ in self.val_loader:
            x = self._prepare(x, train=False)
            with self._autocast():
                loss, logits, target = model(x, generator=g)
            loss_sum += float(loss) * len(target)
            correct += int((logits.argmax(-1) == target).sum())
            count += len(target)
        model.train(was_training)
        loss_sum, correct, count = all_reduce_sum(loss_sum, correct, count, device=self.device)
        return {"val_loss": loss_sum / max(count, 1), "val_mlm_acc": correct / max(count, 1)}


PRETRAINERS: dict[str, type[Pretrainer]] = {"mae": MAEPretrainer, "mlm": MLMPretrainer}
PRETRAIN_METHODS = tuple(PRETRAINERS)


def pretrain(
    method: str = "mae",
    recipe: str | None = None,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Python API of ``vitkit pretrain``: resolve the config, pre-train, return the summary dict."""
    if method not in PRETRAINERS:
        raise ValueError(f"unknown pre-training method {method!r}; known: {list(PRETRAIN_METHODS)}")
    return fit_trainer(PRETRAINERS[method], recipe, config_file, resume, **overrides)
