"""Explain an image file end to end: load the model, run the explanation, write a PNG figure and a ``.npy``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rollout import explain

__all__ = ["explain_image", "plot_explanation"]


def _upsample(grid: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(gh, gw) -> (H, W) bilinear, as a NumPy array."""
    return F.interpolate(grid[None, None].float(), size=size, mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def _display_image(x: Tensor, data_config: dict[str, Any]) -> np.ndarray:
    """A normalised (C, H, W) input -> (H, W) or (H, W, 3) floats in [0, 1] for display."""
    mean = torch.tensor(data_config["mean"]).view(-1, 1, 1)
    std = torch.tensor(data_config["std"]).view(-1, 1, 1)
    img = (x.cpu() * std + mean).clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img[:3].permute(1, 2, 0).numpy()


def plot_explanation(
    image: np.ndarray,
    relevance: np.ndarray,
    layers: np.ndarray,
    out_png: str | os.PathLike,
    title: str = "",
    method: str = "rollout",
) -> Path:
    """Figure: the image, the relevance heatmap over it, and each layer's mean attention of the read-out token.

    ``image``: (H, W) or (H, W, 3) in [0, 1]; ``relevance``: (H, W); ``layers``: (depth, gh, gw).
    """
    from ..plots import _new_figure, _save

    depth = layers.shape[0]
    cols = max(2, min(depth, 6))
    rows = 1 + -(-depth // cols)
    fig = _new_figure((2.3 * cols, 2.5 * rows + 0.4))
    grid = fig.add_gridspec(rows, cols)
    gray = {"cmap": "gray"} if image.ndim == 2 else {}
    ax = fig.add_subplot(grid[0, : cols // 2])
    ax.imshow(image, **gray)
    ax.set_title("input", fontsize=10)
    ax = fig.add_subplot(grid[0, cols // 2 :])
    ax.imshow(image, **gray)
    lo, hi = float(relevance.min()), float(relevance.max())
    ax.imshow(relevance, cmap="inferno", alpha=0.55, vmin=lo, vmax=max(hi, lo + 1e-12))
    ax.set_title(f"{method} relevance", fontsize=10)
    for i in range(depth):
        ax = fig.add_subplot(grid[1 + i // cols, i % cols])
        ax.imshow(layers[i], cmap="viridis")
        ax.set_title(f"layer {i + 1} attention", fontsize=8)
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, out_png, title=title or None)


def explain_image(
    model_or_path: nn.Module | str | os.PathLike,
    image: Any,
    out_png: str | os.PathLike,
    method: str = "rollout",
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    target: int | None = None,
    save_npy: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Explain one image (a path, PIL image, array or tensor) and write ``out_png`` (+ ``.npy`` beside it).

    The image goes through the same preprocessing as :func:`vitkit.predict` (the model's stored size,
    channels and normalisation). The ``.npy`` holds the (H, W) relevance at the input resolution, values in
    [0, 1]. The figure's title (also the PNG's ``Title`` text) names the image: ``name``, else the file's name,
    else "image". Returns ``{"png", "npy", "label", "index", "prob", "title", "relevance" (gh, gw) array}``.
    """
    from ..predict import load_for_inference, preprocess, resolve_data_config

    if isinstance(model_or_path, nn.Module):
        model, data_config = model_or_path, resolve_data_config(model_or_path)
    else:
        model, data_config = load_for_inference(model_or_path)
    device = next(model.parameters()).device
    x = preprocess([image], data_config).to(device)
    out = explain(
        model, x, method=method, head_fusion=head_fusion, discard_ratio=discard_ratio, target=target
    )
    probs = out["logits"].float().softmax(-1)[0]
    index = int(out["target"][0])
    classes = data_config.get("classes") or [str(i) for i in range(probs.numel())]
    label = classes[index]
    size = tuple(x.shape[-2:])
    relevance = _upsample(out["relevance"][0].cpu(), size)
    out_png = Path(out_png)
    if name is None:
        name = Path(image).name if isinstance(image, (str, os.PathLike)) else "image"
    title = f"{name}: class {label!r} (p={float(probs[index]):.3f})"
    plot_explanation(
        _display_image(x[0], data_config), relevance, out["layers"][0].cpu().numpy(), out_png, title, method
    )
    npy = None
    if save_npy:
        npy = out_png.with_suffix(".npy")
        np.save(npy, relevance.astype(np.float32))
    return {
        "png": str(out_png),
        "npy": str(npy) if npy else None,
        "label": label,
        "index": index,
        "prob": float(probs[index]),
        "title": title,
        "relevance": out["relevance"][0].cpu().numpy(),
    }
