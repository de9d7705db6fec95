"""Training curves, confusion matrices and few-shot curves as PNG files (matplotlib, Agg canvas, no display needed).

Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas rather than through ``pyplot``,
so plotting never touches the global backend, never opens a window and leaks no figures.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "read_metrics_jsonl",
    "plot_training_curves",
    "plot_confusion_matrix",
    "plot_image_grid",
    "plot_metric_comparison",
    "plot_fewshot",
]

DPI = 120
_TRAIN, _VAL, _LR = "#1f77b4", "#d62728", "#2ca02c"


def _new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``fig`` as a PNG (atomically); ``title`` goes into the file's ``Title`` text chunk."""
    from .weights.files import atomic_write

    out = Path(out_png)
    meta = {"Title": title} if title else None
    return atomic_write(
        out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, facecolor="white", metadata=meta)
    )


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file; blank or unparsable lines (a run killed mid-write) are skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(r.get("epoch", i + 1)))
            ys.append(float(v))
    return xs, ys


def plot_training_curves(
    metrics: str | os.PathLike | Iterable[Mapping[str, Any]],
    out_png: str | os.PathLike,
    title: str | None = None,
    loss_label: str = "cross-entropy",
    quality: tuple[str, str, str, str] | None = ("Accuracy", "top-1 accuracy", "acc", "max"),
) -> Path:
    """Loss (train/val), a quality figure (train/val; accuracy by default) and learning rate against epoch.

    ``metrics`` is a ``metrics.jsonl`` path or the records themselves (dicts with ``epoch`` and any of
    ``train_loss``, ``val_loss``, ``train_<key>``, ``val_<key>``, ``lr``; missing values are skipped). When an
    epoch appears more than once (a resumed run) the last record wins. ``quality``: the middle panel's (title,
    y label, key, ``"max"``/``"min"`` is best); its best validation value is marked. Returns the path of the PNG.
    """
    if isinstance(metrics, (str, os.PathLike)):
        if title is None:
            title = f"training curves: {Path(metrics).parent.name}"
        records = read_metrics_jsonl(metrics)
    else:
        records = [dict(r) for r in metrics]
    by_epoch: dict[Any, dict[str, Any]] = {}
    for i, r in enumerate(records):
        by_epoch[r.get("epoch", i + 1)] = r
    records = sorted(by_epoch.values(), key=lambda r: float(r.get("epoch", 0)))

    fig = _new_figure((15, 4.4) if quality else (10, 4.4))
    axes = list(fig.subplots(1, 3 if quality else 2))
    if not quality:  # a task with no figure beside its loss (MAE): loss and learning rate only
        axes.insert(1, None)
    n = len(records)
    style = {"marker": "o", "markersize": 3.5} if n <= 40 else {}
    panels = [(axes[0], "Loss", loss_label, [("train_loss", "train", _TRAIN), ("val_loss", "val", _VAL)])]
    if quality:
        keys = [(f"train_{quality[2]}", "train", _TRAIN), (f"val_{quality[2]}", "val", _VAL)]
        panels.append((axes[1], quality[0], quality[1], keys))
    panels.append((axes[2], "Learning rate", "lr", [("lr", "lr", _LR)]))
    for ax, name, ylabel, keys in panels:
        plotted = False
        for key, label, color in keys:
            xs, ys = _series(records, key)
            if xs:
                ax.plot(xs, ys, label=label, color=color, linewidth=1.8, **style)
                plotted = True
        if quality and ax is axes[1]:
            xs, ys = _series(records, f"val_{quality[2]}")
            if xs:
                best = int(np.argmax(ys) if quality[3] == "max" else np.argmin(ys))
                ax.scatter([xs[best]], [ys[best]], s=90, marker="*", color="gold", edgecolor="black",
                           linewidth=0.6, zorder=5, label=f"best val {ys[best]:.4f} (epoch {xs[best]:g})")  # fmt: skip
        ax.set_title(name, fontsize=12, fontweight="bold")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3, linestyle="--")
        if plotted:
            ax.legend(loc="best", fontsize=9, framealpha=0.85)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes:
        if ax is not None:
            ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return _save(fig, out_png)


def _confusion_values(
    cm: Sequence[Sequence[float]] | np.ndarray, class_names: Sequence[str] | None, normalize: bool
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Checked (counts, class names, the values to colour: row-normalised counts or the counts)."""
    counts = np.asarray(cm, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square and non-empty, got shape {counts.shape}")
    c = counts.shape[0]
    names = [str(i) for i in range(c)] if class_names is None else [str(n) for n in class_names]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}x{c} confusion matrix")
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        values = counts
    return counts, names, values


def _label_confusion_axes(ax, names: list[str]) -> None:
    """Class tick labels (thinned out past 30 classes), axis labels and thin white lines between cells."""
    c = len(names)
    step = 1 if c <= 30 else math.ceil(c / 30)
    ticks = np.arange(0, c, step)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([names[i] for i in ticks], fontsize=9 if c <= 15 else 7)
    ax.set_yticklabels([names[i] for i in ticks], fontsize=9 if c <= 15 else 7)
    if max(len(names[i]) for i in ticks) > 3:
        for lab in ax.get_xticklabels():
            lab.set_rotation(45)
            lab.set_horizontalalignment("right")
            lab.set_rotation_mode("anchor")
    ax.set_xlabel("predicted class", fontsize=11)
    ax.set_ylabel("true class", fontsize=11)
    # thin white lines between cells
    ax.set_xticks(np.arange(-0.5, c, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, c, 1), minor=True)
    if c <= 60:
        ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)


def _cell_text(count: float, v: float, normalize: bool, c: int) -> str:
    """The annotation of one cell: a percentage of its row (normalised) or the count."""
    if not normalize:
        return f"{int(v)}" if float(v).is_integer() else f"{v:.2g}"
    if count == 0:
        return "0" if c <= 12 else ""
    return f"{100 * v:.0f}%" if v >= 0.1 or v == 0 else f"{100 * v:.1f}%"


def _annotate_cells(ax, counts: np.ndarray, values: np.ndarray, normalize: bool, vmax: float) -> None:
    """Write each cell's value on the heatmap, white on dark cells, grey on empty ones."""
    c = counts.shape[0]
    fontsize = 10 if c <= 10 else (8 if c <= 20 else 6)
    for i in range(c):
        for j in range(c):
            v = values[i, j]
            text = _cell_text(counts[i, j], v, normalize, c)
            if text:
                color = "white" if v > 0.55 * vmax else ("#222222" if counts[i, j] else "#9a9a9a")
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)


def plot_confusion_matrix(
    cm: Sequence[Sequence[float]] | np.ndarray,
    class_names: Sequence[str] | None,
    out_png: str | os.PathLike,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """An annotated heatmap of a confusion matrix (rows: true class, columns: predicted class).

    ``normalize=True`` divides each row by its total (recall per class on the diagonal; rows without
    samples stay 0) and annotates percentages; otherwise raw counts. Cells are annotated and every class
    labelled up to 30 classes; larger matrices keep the colours and thin out the tick labels. Returns the
    path of the PNG written.
    """
    counts, names, values = _confusion_values(cm, class_names, normalize)
    c = counts.shape[0]
    side = float(np.clip(0.55 * c + 2.5, 5.5, 19)) if c <= 30 else 12.0
    fig = _new_figure((side + 1.2, side))
    ax = fig.add_subplot(1, 1, 1)
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.ax.set_ylabel("fraction of true class" if normalize else "count", rotation=-90, va="bottom")

    _label_confusion_axes(ax, names)
    if c <= 30:
        _annotate_cells(ax, counts, values, normalize, vmax)

    n = int(counts.sum())
    acc = float(np.trace(counts) / n) if n else 0.0
    if title is None:
        title = "Confusion matrix" + (" (row-normalised)" if normalize else "")
    ax.set_title(f"{title}\n{n} samples, accuracy {acc:.2%}", fontsize=12)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_image_grid(
    rows: Sequence[tuple[str, Any]], out_png: str | os.PathLike, title: str | None = None
) -> Path:
    """One row per (label, images (N, C, H, W) in [0, 1]) pair, images side by side (grey or RGB)."""
    n = max(len(images) for _, images in rows)
    fig = _new_figure((1.3 * n + 1.2, 1.4 * len(rows) + (0.5 if title else 0.1)))
    axes = np.atleast_2d(fig.subplots(len(rows), n, squeeze=False))
    for r, (label, images) in enumerate(rows):
        arr = np.asarray(images.detach().float().clamp(0, 1).cpu()) if hasattr(images, "detach") else images
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(arr):
                img = arr[c].transpose(1, 2, 0)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_metric_comparison(
    runs: Mapping[str, str | os.PathLike | Iterable[Mapping[str, Any]]],
    out_png: str | os.PathLike,
    key: str = "val_acc",
    title: str | None = None,
    ylabel: str = "top-1 accuracy",
) -> Path:
    """``key`` against epoch for several runs in one panel (``runs``: label -> metrics.jsonl or records)."""
    fig = _new_figure((7.5, 4.6))
    ax = fig.subplots()
    for label, metrics in runs.items():
        records = read_metrics_jsonl(metrics) if isinstance(metrics, (str, os.PathLike)) else list(metrics)
        xs, ys = _series(records, key)
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.8, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linestyle="--")
    ax.legend(loc="best", fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        ax.set_title(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_fewshot(
    results: Mapping[str, Mapping[str, Any]], out_png: str | os.PathLike, title: str | None = None
) -> Path:
    """Few-shot accuracy against shots per image class (log scale), mean with error bars of one std over the
    seeds, one line per entry of ``results`` (label -> a :func:`vitkit.fewshot.fewshot_probe` result), and the
    chance level of the first."""
    fig = _new_figure((6.4, 4.4))
    ax = fig.subplots()
    shots: set[int] = set()
    for label, r in results.items():
        ks = [int(k) for k in r["shots"]]
        mean = [100 * r["accuracy"][str(k)]["mean"] for k in ks]
        std = [100 * r["accuracy"][str(k)]["std"] for k in ks]
        ax.errorbar(ks, mean, yerr=std, marker="o", markersize=4, linewidth=1.8, capsize=3, label=label)
        shots.update(ks)
    first = next(iter(results.values()), None)
    if first is not None:
        ax.axhline(100 * first["chance"], color="gray", linestyle=":", linewidth=1.2, label="chance")
    ax.set_xscale("log")
    ax.set_xticks(sorted(shots), [str(k) for k in sorted(shots)])
    ax.minorticks_off()
    ax.set_xlabel("shots (training images per class)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3, linestyle="--")
    ax.legend(loc="best", fontsize=9)
    if title:
        ax.set_title(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, out_png)
