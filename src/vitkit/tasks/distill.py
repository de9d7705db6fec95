"""Knowledge distillation as in DeiT (Touvron et al. 2021): a frozen teacher supervises the student's
distillation head.

``loss = (1 - alpha) * base(cls_logits, labels) + alpha * distill(dist_logits, teacher(images))`` where
``distill`` is either *soft* -- KL divergence between temperature-``tau`` softmaxes, times ``tau**2`` -- or
*hard* -- cross-entropy against the teacher's argmax. A distilled ViT (``distilled=True``, the ``deit_*_distilled``
names) returns ``(cls_logits, dist_logits)`` while training and their average at inference; any other student
uses its one output for both terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DistillationLoss", "soft_distillation", "hard_distillation", "load_teacher", "TeacherInput"]

KINDS = ("soft", "hard")


def soft_distillation(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """``tau**2 * KL(softmax(teacher / tau) || softmax(student / tau))``, averaged over the batch.

    (DeiT's reference code divides the summed KL by batch x classes, i.e. a soft term ``num_classes`` times
    weaker; here it is the per-sample KL of Hinton et al., so ``alpha`` means the same at any class count.)"""
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / tau, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * tau * tau


def hard_distillation(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Cross-entropy of the student against the teacher's predicted class (DeiT's 'hard' variant)."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))


class TeacherInput(nn.Module):
    """Turns the student's normalised batch into the teacher's: undo the student's mean/std, apply the
    teacher's, and resize when the teacher expects another image size."""

    def __init__(
        self,
        student_mean: Sequence[float],
        student_std: Sequence[float],
        teacher_mean: Sequence[float],
        teacher_std: Sequence[float],
        teacher_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()

        def col(v: Sequence[float]) -> Tensor:
            return torch.tensor([float(a) for a in v]).view(1, -1, 1, 1)

        scale = col(student_std) / col(teacher_std)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer(
            "shift", (col(student_mean) - col(teacher_mean)) / col(teacher_std), persistent=False
        )
        self.size = tuple(teacher_size) if teacher_size else None
        self.identity = bool(torch.allclose(scale, torch.ones_like(scale)) and not self.shift.abs().any())

    def forward(self, x: Tensor) -> Tensor:
        if not self.identity:
            x = x * self.scale + self.shift
        if self.size and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return x


class DistillationLoss(nn.Module):
    """DeiT's training loss; call as ``loss(outputs, targets, images)`` (the Trainer's ``loss_fn`` signature).

    ``teacher`` is frozen and run in eval mode under ``no_grad``; ``teacher_input`` maps the student's batch to
    the teacher's input (see :class:`TeacherInput`).
    """

    def __init__(
        self,
        teacher: nn.Module,
        base_loss: Callable[[Tensor, Tensor], Tensor],
        kind: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        teacher_input: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown distillation kind {kind!r}; choose one of {', '.join(KINDS)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"distillation temperature tau must be > 0, got {tau}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_input = teacher_input or nn.Identity()
        self.base_loss, self.kind, self.alpha, self.tau = base_loss, kind, alpha, tau

    def train(self, mode: bool = True) -> DistillationLoss:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics and dropout stay frozen
        return self

    def forward(self, outputs: Tensor | tuple[Tensor, Tensor], targets: Tensor, images: Tensor) -> Tensor:
        cls_logits, dist_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        base = self.base_loss(cls_logits, targets)
        if self.alpha == 0:
            return base
        with torch.no_grad():
            teacher_logits = self.teacher(self.teacher_input(images)).float()
        if self.kind == "soft":
            distill = soft_distillation(dist_logits, teacher_logits, self.tau)
        else:
            distill = hard_distillation(dist_logits, teacher_logits)
        return (1 - self.alpha) * base + self.alpha * distill


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """A teacher from a vitkit run directory or model file (``model.safetensors``), frozen, in eval mode."""
    from ..weights.rebuild import load

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"teacher not found: {path} (give a vitkit run directory or model.safetensors)"
        )
    return load(path, device=device).eval().requires_grad_(False)
