"""Mixup / CutMix on batches with label-smoothed soft targets (timm's batch-mode semantics)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MixupCutmix", "smooth_one_hot", "cutmix_box"]


def smooth_one_hot(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """One-hot targets with label smoothing: ``1 - smoothing + smoothing/K`` on the class, ``smoothing/K`` elsewhere."""
    off = smoothing / num_classes
    return F.one_hot(y.long(), num_classes).float().mul_(1.0 - smoothing).add_(off)


def cutmix_box(lam: float, height: int, width: int) -> tuple[int, int, int, int]:
    """A random box of area about ``(1 - lam) * H * W`` (clipped at the borders): (y0, y1, x0, x1)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, ()).item())
    cx = int(torch.randint(0, width, ()).item())
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


class MixupCutmix:
    """``(x, y) -> (x_mixed, soft_targets)`` mixing each batch with its reverse (``x.flip(0)``).

    With probability ``prob`` a batch is mixed: CutMix with probability ``switch_prob`` when both
    alphas are > 0 (else whichever is > 0), with ``lam ~ Beta(alpha, alpha)``. For CutMix the box is
    clipped at the image border and ``lam`` is corrected to the actual pasted area. Targets are
    ``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))`` (rows sum to 1); unmixed batches still get
    label smoothing. ``y`` may also be soft targets (B, K), then no smoothing is added. Randomness comes
    from torch's global CPU generator, so seeding/saving torch's RNG state makes it reproducible.
    ``last_lam`` / ``last_mode`` record the latest choice.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        correct_lam: bool = True,
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1 or not 0 <= switch_prob <= 1:
            raise ValueError("alphas must be >= 0 and prob / switch_prob in [0, 1]")
        if num_classes < 1 or not 0 <= label_smoothing < 1:
            raise ValueError("num_classes must be >= 1 and label_smoothing in [0, 1)")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.label_smoothing, self.num_classes = float(label_smoothing), int(num_classes)
        self.correct_lam = correct_lam
        self.last_lam, self.last_mode = 1.0, "none"

    @staticmethod
    def _beta(alpha: float) -> float:
        a = torch.tensor(alpha, dtype=torch.float64)
        return float(torch.distributions.Beta(a, a).sample())

    def sample(self) -> tuple[float, str]:
        """Draw (lam, mode) for one batch; mode is 'none', 'mixup' or 'cutmix'."""
        if (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0) or float(torch.rand(())) >= self.prob:
            return 1.0, "none"
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cut = float(torch.rand(())) < self.switch_prob
        else:
            cut = self.cutmix_alpha > 0
        return (self._beta(self.cutmix_alpha), "cutmix") if cut else (self._beta(self.mixup_alpha), "mixup")

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"batch sizes differ: x {tuple(x.shape)}, y {tuple(y.shape)}")
        lam, mode = self.sample()
        if mode == "mixup":
            x = x * lam + x.flip(0) * (1.0 - lam)
        elif mode == "cutmix":
            h, w = x.shape[-2:]
            y0, y1, x0, x1 = cutmix_box(lam, h, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            if self.correct_lam or lam == 1.0:
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        if y.ndim == 2:
            t = y.float()
        else:
            t = smooth_one_hot(y, self.num_classes, self.label_smoothing).to(x.device)
        targets = t * lam + t.flip(0) * (1.0 - lam) if lam < 1.0 else t
        self.last_lam, self.last_mode = lam, mode
        return x, targets

    def __repr__(self) -> str:
        return (
            f"MixupCutmix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, "
            f"switch_prob={self.switch_prob}, label_smoothing={self.label_smoothing}, num_classes={self.num_classes})"
        )
