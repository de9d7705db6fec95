"""Figures of the dense tasks' predictions (matplotlib, Agg canvas): DETR's boxes (``predictions.png`` at the end
of training, ``<image>-boxes.png`` from ``vitkit predict``) and Segmenter's masks (``overlays.png``).

Every panel has a title (the image's file name, else its index) and space around it; predicted boxes carry their
class name and score, and a detection panel whose boxes all scored under the threshold says so (with the best
score it saw) instead of showing a bare image; masks come with a legend of class colours. The ``*_figure``
functions return the :class:`matplotlib.figure.Figure`, so its texts can be read back; ``save`` writes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PALETTE", "class_colours", "overlay", "detection_figure", "segmentation_figure", "save",
           "no_box_text"]  # fmt: skip

# background black, then distinct colours (tab10); classes past these take tab20's
PALETTE = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
TRUTH, PREDICTED = "#12a012", "#e60000"
PANEL_INCHES = 2.8
DPI = 120  # vitkit.plots.DPI


def class_colours(n: int) -> Tensor:
    """(n, 3) float RGB in [0, 255]: :data:`PALETTE`, then the light halves of matplotlib's tab20, then hues a
    golden ratio apart (every class its own colour)."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    rows = []
    for i in range(n):
        j = i - len(PALETTE)
        if j < 0:
            rows.append(PALETTE[i])
        else:
            rgb = colormaps["tab20"](2 * j + 1)[:3] if j < 10 else hsv_to_rgb(((0.618034 * j) % 1, 0.65, 0.9))
            rows.append(tuple(255 * float(c) for c in rgb))
    return torch.tensor(rows, dtype=torch.float32).reshape(n, 3)


def overlay(image: Tensor, mask: Tensor, alpha: float = 0.55) -> Tensor:
    """(C, H, W) uint8 image and (H, W) class map -> (H, W, 3) uint8, classes > 0 tinted with their colour."""
    rgb = (image.expand(3, -1, -1) if image.shape[0] == 1 else image).permute(1, 2, 0).float()
    tinted = (1 - alpha) * rgb + alpha * class_colours(int(mask.max()) + 1)[mask.long()]
    return torch.where((mask > 0)[..., None], tinted, rgb).round().to(torch.uint8)


def no_box_text(threshold: float, best: float | None = None) -> str:
    """What a detection panel without boxes says: ``no box above score 0.5 (best 0.31)``."""
    return f"no box above score {threshold:g}" + (f" (best {best:.2f})" if best is not None else "")


def save(fig: Any, out_png: str | Path) -> Path:
    """Write ``fig`` as a PNG (atomically); returns the path."""
    from ..plots import _save

    return _save(fig, out_png)


def _grid(n: int, cols: int, aspect: float, extra_rows: float = 0.0, width: float = PANEL_INCHES):
    """A figure of ``n`` panels ``width`` inches wide in rows of ``cols`` (``aspect``: height / width of a panel's
    image), spaced apart."""
    from ..plots import _new_figure

    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    panel_h = width * min(max(aspect, 0.3), 3.0) + 0.5  # room for a two-line title
    fig = _new_figure((width * cols + 0.3, panel_h * rows + 0.15 + extra_rows))
    fig.set_layout_engine("constrained", w_pad=0.12, h_pad=0.12, wspace=0.06, hspace=0.08)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def _show(ax, image: np.ndarray, extent: tuple[int, int] | None = None) -> None:
    """An (H, W, C) or (H, W) uint8 image without ticks; ``extent`` (height, width): the pixel grid its boxes use."""
    arr = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    h, w = extent or arr.shape[:2]
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if arr.ndim == 2 else {}
    ax.imshow(arr, interpolation="nearest", extent=(0, w, h, 0), **grey)
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax, box: Sequence[float], colour: str, text: str | None = None, dashed: bool = False) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.6,
                           linestyle=(0, (3, 2)) if dashed else "-"))  # fmt: skip
    if text:
        ax.text(x0, y0, text, color="white", fontsize=7, va="top", ha="left", clip_on=True,
                bbox={"facecolor": colour, "edgecolor": "none", "alpha": 0.85, "pad": 1.2})  # fmt: skip


def detection_figure(
    images: Sequence[np.ndarray], boxes: Sequence[Sequence[dict[str, Any]]], titles: Sequence[str],
    threshold: float, truth: Sequence[Sequence[dict[str, Any]]] | None = None,
    best: Sequence[float | None] | None = None, extents: Sequence[tuple[int, int]] | None = None, cols: int = 4,
) -> Any:  # fmt: skip
    """One panel per image: its predicted boxes (red, ``class score``) over it, its ground truth (green, dashed).

    ``images``: (H, W, C) or (H, W) uint8 arrays; ``boxes[i]``: the image's kept boxes ``{"label", "score",
    "box": [x0, y0, x1, y1]}`` in pixels of ``extents[i]`` (height, width; default the image's own size), all
    scored at least ``threshold``; ``truth[i]``: ``{"label", "box"}``; ``best[i]``: the image's best score (named
    when no box was kept). Each title is the image's name and how many boxes scored ``threshold`` or more.
    Returns the Figure.
    """
    extents = list(extents) if extents is not None else [tuple(im.shape[:2]) for im in images]
    aspect = max(h / max(w, 1) for h, w in extents)
    # a lone image (vitkit predict) near its own size, up to 8 inches; a sheet in small panels
    width = min(max(images[0].shape[1] / DPI, PANEL_INCHES), 8.0) if len(images) == 1 else PANEL_INCHES
    fig, axes = _grid(len(images), cols, aspect, extra_rows=0.3 if truth is not None else 0.0, width=width)
    for i, ax in enumerate(axes):
        _show(ax, images[i], extents[i])
        for t in truth[i] if truth is not None else []:
            _box(ax, t["box"], TRUTH, dashed=True)
        for b in boxes[i]:
            _box(ax, b["box"], PREDICTED, f"{b['label']} {b['score']:.2f}")
        k = len(boxes[i])
        counted = f"{k} box{'' if k == 1 else 'es'} with score ≥ {threshold:g}"
        ax.set_title(f"{titles[i]}\n{counted}", fontsize=9)
        if not k:
            ax.text(0.5, 0.5, no_box_text(threshold, best[i] if best is not None else None), ha="center",
                    va="center", transform=ax.transAxes, fontsize=8, wrap=True,
                    bbox={"facecolor": "white", "edgecolor": PREDICTED, "alpha": 0.9, "pad": 3})  # fmt: skip
    if truth is not None:
        _legend(fig, [("ground truth", TRUTH, True), ("predicted (class score)", PREDICTED, False)])
    return fig


def _legend(fig, entries: list[tuple[str, Any, bool]], patches: bool = False) -> None:
    """A legend under the panels: (label, colour, dashed) lines, or colour patches."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if patches:
        handles = [Patch(facecolor=c, edgecolor="#555555", label=label) for label, c, _ in entries]
    else:
        handles = [Line2D([], [], color=c, linestyle="--" if d else "-", linewidth=1.6, label=label)
                   for label, c, d in entries]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8,
               frameon=False)  # fmt: skip


def segmentation_figure(
    images: Sequence[Tensor], predictions: Sequence[Tensor], classes: Sequence[str], titles: Sequence[str],
    truth: Sequence[Tensor] | None = None,
) -> Any:  # fmt: skip
    """Rows of image / ground truth / prediction, the masks as coloured overlays, and a legend of class colours.

    ``images``: (C, H, W) uint8; ``predictions`` / ``truth``: (H, W) class maps (0: background, left untinted).
    The image panel is titled with ``titles[i]``; the prediction's with the share of pixels it got right when
    ``truth`` is given. The legend names every class that shows in a drawn mask. Returns the Figure.
    """
    cols = 3 if truth is not None else 2
    h, w = images[0].shape[-2:]
    fig, axes = _grid(len(images) * cols, cols, h / w, extra_rows=0.4)
    shown: set[int] = set()
    for i, image in enumerate(images):
        masks = [truth[i]] if truth is not None else []
        panels = [(image, torch.zeros_like(predictions[i]), titles[i])]
        if truth is not None:
            panels.append((image, truth[i], "ground truth"))
            right = float((predictions[i] == truth[i]).float().mean())
            panels.append((image, predictions[i], f"prediction: {right:.1%} of pixels right"))
        else:
            panels.append((image, predictions[i], "prediction"))
        for m in [*masks, predictions[i]]:
            shown.update(int(c) for c in torch.unique(m).tolist())
        for ax, (img, mask, title) in zip(axes[i * cols : (i + 1) * cols], panels, strict=True):
            _show(ax, overlay(img, mask).numpy())
            ax.set_title(title, fontsize=9)
    colours = class_colours(max(shown | {0}) + 1) / 255
    entries = [("background (untinted)" if c == 0 else str(classes[c]) if c < len(classes) else f"class {c}",
                tuple(colours[c].tolist()) if c else (1.0, 1.0, 1.0), False) for c in sorted(shown | {0})]  # fmt: skip
    _legend(fig, entries, patches=True)
    return fig
