"""What a run shows while it trains.

On a terminal: tqdm bars (the epochs, and the steps of the current epoch with the loss, learning rate and samples or
tokens per second). Anywhere else (output redirected to a file or a pipe) bars would write thousands of lines, so
the run prints one line per epoch, and a heartbeat line every ``heartbeat_s`` seconds inside a long epoch. With
``progress`` off (``--no-progress``) only the epoch lines remain.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["RunProgress", "epoch_line"]

log = logging.getLogger("vitkit.engine.trainer")


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line for an epoch's record: ``epoch 3/14  train_loss 1.6534  val_loss 1.6724 ... lr 1.84e-03  786 s``."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for key, value in record.items():
        if (key == "train_loss" or key.startswith(("val_", "ema_val_"))) and isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4f}")
    for key, unit in (("tokens_per_s", "tokens/s"), ("images_per_s", "samples/s")):
        if isinstance(record.get(key), (int, float)):
            parts.append(f"{record[key]:.0f} {unit}")
            break
    if "lr" in record:
        parts.append(f"lr {record['lr']:.2e}")
    if "elapsed" in record:
        parts.append(f"{record['elapsed']:.0f} s")
    return "  ".join(parts)


class RunProgress:
    """Bars on a terminal, lines elsewhere (see the module docstring). Only the main rank shows anything."""

    def __init__(self, enabled: bool, main: bool, first_epoch: int, epochs: int, steps: int,
                 heartbeat_s: float = 60.0, stream=None) -> None:  # fmt: skip
        stream = stream or sys.stderr
        self.bars = enabled and main and stream.isatty()
        self.lines, self.heartbeat = main and not self.bars, enabled and main and not self.bars
        self.epochs, self.steps, self.heartbeat_s = epochs, steps, heartbeat_s
        self.epoch_bar = tqdm(range(first_epoch, epochs), desc="epochs", initial=first_epoch, total=epochs,
                              disable=not self.bars, dynamic_ncols=True)  # fmt: skip
        self.step_bar = None
        self.last = time.perf_counter()

    def __iter__(self):
        return iter(self.epoch_bar)

    def start_epoch(self, epoch: int) -> None:
        self.step_bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}", leave=False, disable=not self.bars,
                             dynamic_ncols=True)  # fmt: skip
        self.epoch, self.started, self.last = epoch, time.perf_counter(), time.perf_counter()

    def step(self, i: int, loss: Tensor, lr: float, done: int, unit: str) -> None:
        """After step ``i`` (0-based) of the epoch; ``done``: samples or tokens so far (``unit``)."""
        now = time.perf_counter()
        if self.bars and self.step_bar is not None:
            self.step_bar.update(1)
            if i % 10 == 0:
                self.step_bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}",
                                          **{f"{unit}_s": f"{done / max(now - self.started, 1e-9):.0f}"})  # fmt: skip
        elif self.heartbeat and now - self.last >= self.heartbeat_s:
            self.last = now
            log.info("epoch %d: step %d/%d  loss %.4f  lr %.2e  %.0f %s/s", self.epoch + 1, i + 1, self.steps,
                     loss.item(), lr, done / max(now - self.started, 1e-9), unit)  # fmt: skip

    def end_epoch(self, record: dict[str, Any], key: str) -> None:
        if self.step_bar is not None:
            self.step_bar.close()
        if self.bars:
            postfix = {"loss": f"{record['train_loss']:.3f}"}
            if key in record:
                postfix[key] = f"{record[key]:.4f}"
            self.epoch_bar.set_postfix(**postfix)
        elif self.lines:
            log.info(epoch_line(record, self.epochs))

    def close(self) -> None:
        self.epoch_bar.close()
