"""Self-supervised pre-training with the Trainer: ``vitkit pretrain --method mae``.

:class:`MAEPretrainer` is the classification :class:`~vitkit.train.trainer.Trainer` (same data pipeline,
augmentation, optimizer, schedule, checkpoints, exact resume, torchrun data parallelism) with the model's own
reconstruction loss in place of the labels, a validation reconstruction loss in place of accuracy, and different
outputs: ``model.safetensors`` (the whole MAE), ``encoder.safetensors`` (the ViT encoder alone, what
``vitkit finetune --from RUN`` starts from) and ``reconstructions.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import create_model
from ..weights.io import save as save_model
from .config import resolve_config
from .distributed import all_reduce_sum, shutdown_distributed
from .trainer import Trainer

__all__ = ["MAEPretrainer", "pretrain", "PRETRAIN_METHODS"]

log = logging.getLogger(__name__)

PRETRAIN_METHODS = ("mae",)


def _reconstruction_loss(outputs: tuple[Tensor, Tensor, Tensor], targets: Tensor, images: Tensor) -> Tensor:
    return outputs[0]  # the MAE computes its own loss on the masked patches; labels are never looked at


class MAEPretrainer(Trainer):
    """Masked-autoencoder pre-training; ``cfg.model`` names an ``mae`` family model (e.g. ``mae_vit_mnist``)."""

    val_seed = 1234  # validation masks are the same at every evaluation, so the loss curve is comparable

    def __init__(self, cfg, **kwargs: Any) -> None:
        if cfg.teacher or cfg.init_from or cfg.mixup or cfg.cutmix:
            raise ValueError("MAE pre-training takes no teacher, init_from, mixup or cutmix")
        super().__init__(cfg, loss_fn=_reconstruction_loss, **kwargs)

    def build_model(self, in_chans: int) -> nn.Module:
        model = create_model(
            self.cfg.model, in_chans=in_chans, drop_path_rate=self.cfg.drop_path, **self.cfg.model_args
        )
        if getattr(model, "family", None) != "mae":
            raise ValueError(f"--method mae needs an MAE model (e.g. mae_vit_mnist), got {self.cfg.model!r}")
        return model

    def count_correct(self, outputs, targets: Tensor) -> Tensor:
        return torch.zeros((), device=self.device)  # no accuracy without labels

    @torch.inference_mode()
    def evaluate(self, model: nn.Module | None = None, return_outputs: bool = False) -> dict[str, Any]:
        """Mean reconstruction loss of the masked patches over the validation split (fixed masks)."""
        model = model or self.model
        was_training = model.training
        model.eval()
        g = torch.Generator(device=self.device).manual_seed(self.val_seed + self.dist.rank)
        loss_sum, count = 0.0, 0
        for x, _ in self.val_loader:
            x = self._prepare(x, train=False)
            with self._autocast():
                loss, _, _ = model(x, generator=g)
            loss_sum += float(loss) * len(x)
            count += len(x)
        model.train(was_training)
        loss_sum, count = all_reduce_sum(loss_sum, count, device=self.device)
        return {"val_loss": loss_sum / max(count, 1)}

    @torch.inference_mode()
    def reconstructions(self, n: int = 8) -> list[tuple[str, Tensor]]:
        """Rows (original, masked, reconstruction) for the first ``n`` validation images, in [0, 1]."""
        model = self.final_model().eval()
        images = torch.stack([self.val_data[i][0] for i in range(min(n, len(self.val_data)))]).to(self.device)
        x = self._prepare(images, train=False)
        g = torch.Generator(device=self.device).manual_seed(self.val_seed)
        _, pred, mask = model(x, generator=g)
        masked, recon = model.reconstruct(x, pred.float(), mask)
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        unnorm = lambda t: (t * std + mean).clamp(0, 1)  # noqa: E731
        hidden = (mask[..., None] * torch.ones_like(pred)).float()
        shade = 1 - self._unpatch(hidden, model)  # grey out the masked patches of the input row
        return [
            ("original", images.clamp(0, 1)),
            ("masked", unnorm(masked) * shade + 0.5 * (1 - shade)),
            ("reconstruction", unnorm(recon)),
        ]

    @staticmethod
    def _unpatch(patches: Tensor, model: nn.Module) -> Tensor:
        from ..models.mae import unpatchify

        return unpatchify(patches, model.patch_size, model.grid_size, model.in_chans)

    def finish(self, stopped_early: bool = False) -> dict[str, Any]:
        model = self.final_model()
        data_config = self.data_config()
        data_config.pop("classes", None)  # pre-training saw no labels
        result = self.evaluate(model)
        summary: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "method": "mae",
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
        from ..plots import plot_image_grid, plot_training_curves

        plot_image_grid(
            self.reconstructions(), self.run_dir / "reconstructions.png",
            title=f"MAE {self.cfg.model}: mask ratio {model.mask_ratio:g}, epoch {self.epoch}",
        )  # fmt: skip
        plot_training_curves(
            self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", loss_label="masked-patch MSE"
        )
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def pretrain(
    method: str = "mae",
    recipe: str | None = None,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Python API of ``vitkit pretrain``: resolve the config, pre-train, return the summary dict."""
    if method not in PRETRAIN_METHODS:
        raise ValueError(f"unknown pre-training method {method!r}; known: {list(PRETRAIN_METHODS)}")
    if resume is not None:
        run_dir = Path(resume)
        cfg = resolve_config(config_file=run_dir / "config.yaml", **overrides)
        trainer = MAEPretrainer(cfg, run_dir=run_dir)
        trainer.resume(run_dir)
    else:
        cfg = resolve_config(recipe, config_file, **overrides)
        trainer = MAEPretrainer(cfg)
    try:
        return trainer.fit()
    finally:
        shutdown_distributed(trainer.dist)
