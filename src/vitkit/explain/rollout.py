"""Relevance of each image patch for a ViT's prediction: attention rollout and its gradient-weighted variant.

- Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", 2020): fuse the heads of
  each layer, add the residual identity (``0.5 A + 0.5 I``), renormalise the rows and multiply the layers
  together, first layer rightmost. Class-agnostic.
- Gradient-weighted rollout (Chefer, Gur & Wolf, "Generic Attention-model Explainability", 2021):
  ``R = I; R <- R + mean_h[(dy_c/dA * A)^+] R`` over the layers, where ``y_c`` is the target class logit.
  Class-specific.

The relevance of the patches is read from the row of the token the model classifies from: the class token for
``global_pool='token'`` (with a distillation token, the mean of both rows), the mean of the patch rows for
``global_pool='avg'``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from . import HEAD_FUSIONS, METHODS
from .attention import AttentionRecorder

__all__ = ["HEAD_FUSIONS", "METHODS", "attention_rollout", "gradient_rollout", "explain"]

HeadFusion = Literal["mean", "max", "min"]


def _fuse_heads(weights: Tensor, head_fusion: str) -> Tensor:
    """(B, H, L, L) -> (B, L, L)."""
    if head_fusion == "mean":
        return weights.mean(dim=1)
    if head_fusion == "max":
        return weights.amax(dim=1)
    if head_fusion == "min":
        return weights.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def _check_maps(maps: list[Tensor]) -> None:
    if not maps:
        raise ValueError("no attention maps given")
    for i, m in enumerate(maps):
        if m.ndim != 4 or m.shape[-1] != m.shape[-2] or m.shape != maps[0].shape:
            raise ValueError(
                f"attention map {i} has shape {tuple(m.shape)}; expected (B, H, L, L) like map 0"
            )


def attention_rollout(
    maps: list[Tensor], head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0, residual: bool = True
) -> Tensor:
    """Per-layer (B, H, L, L) attention weights -> (B, L, L) rollout (rows sum to 1).

    ``discard_ratio`` zeroes, in each row of each fused layer, that fraction of the smallest weights (the
    diagonal is kept) before renormalising, which sharpens maps of deep models.
    """
    _check_maps(maps)
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    B, _, L, _ = maps[0].shape
    eye = torch.eye(L, device=maps[0].device, dtype=torch.float32)
    rollout = eye.expand(B, L, L)
    for weights in maps:
        a = _fuse_heads(weights.float(), head_fusion)  # B, L, L
        if discard_ratio > 0:
            n_drop = int(L * discard_ratio)
            if n_drop:
                drop = a.masked_fill(eye.bool(), float("inf")).topk(n_drop, dim=-1, largest=False).indices
                a = a.scatter(-1, drop, 0.0)
        if residual:
            a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        rollout = a @ rollout
    return rollout


def gradient_rollout(maps: list[Tensor], grads: list[Tensor]) -> Tensor:
    """Attention maps and d(target)/d(attention) per layer -> (B, L, L) class-specific relevance."""
    _check_maps(maps)
    if len(grads) != len(maps):
        raise ValueError(f"got {len(grads)} gradients for {len(maps)} attention maps")
    B, _, L, _ = maps[0].shape
    relevance = torch.eye(L, device=maps[0].device, dtype=torch.float32).expand(B, L, L)
    for a, g in zip(maps, grads, strict=True):
        cam = (g.float() * a.float()).clamp_min(0).mean(dim=1)  # B, L, L
        relevance = relevance + cam @ relevance
    return relevance


def _readout_rows(model: nn.Module, tokens: Tensor) -> Tensor:
    """(B, L, L) token-to-token matrix -> (B, N) weights of the N patch tokens for the pooled output."""
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    pool = getattr(model, "global_pool", "avg" if prefix == 0 else "token")
    if pool == "token" and prefix > 0:
        rows = 2 if getattr(model, "distilled", False) else 1
        return tokens[:, :rows, prefix:].mean(dim=1)
    return tokens[:, prefix:, prefix:].mean(dim=1)


def _grid(model: nn.Module, x: Tensor, n_tokens: int) -> tuple[int, int]:
    ph, pw = model.patch_embed.patch_size
    grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    if grid[0] * grid[1] != n_tokens:
        raise ValueError(f"{n_tokens} patch tokens do not form the {grid[0]}x{grid[1]} grid of the input")
    return grid


def explain(
    model: nn.Module,
    x: Tensor,
    method: str = "rollout",
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    target: int | Tensor | None = None,
) -> dict[str, Tensor]:
    """Explain a ViT's predictions for the images ``x`` (B, C, H, W), already preprocessed.

    Returns a dict of tensors: ``logits`` (B, classes); ``target`` (B,) the explained class (default: the
    predicted one; used by ``grad-rollout``); ``relevance`` (B, gh, gw) the patch relevance, scaled to a
    maximum of 1 per image; ``layers`` (B, depth, gh, gw) the per-layer head-mean attention of the read-out
    token(s) to the patches. The model's outputs are unchanged by the extraction (see
    :class:`AttentionRecorder`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not hasattr(model, "patch_embed"):
        raise ValueError(
            f"{type(model).__name__} is not a ViT (no patch_embed); cannot map tokens to patches"
        )
    was_training = model.training
    model.eval()
    try:
        if method == "rollout":
            with torch.no_grad(), AttentionRecorder(model) as rec:
                logits = model(x)
            maps = list(rec.maps)
            tokens = attention_rollout(maps, head_fusion, discard_ratio)
        else:
            x = x.detach().requires_grad_(True)  # a graph through the attention even for frozen weights
            with torch.enable_grad(), AttentionRecorder(model, mode="grad") as rec:
                logits = model(x)
                maps = list(rec.maps)
                tgt = _targets(logits, target)
                score = logits.gather(1, tgt[:, None]).sum()
                grads = list(torch.autograd.grad(score, maps))
            maps = [m.detach() for m in maps]
            logits = logits.detach()
            # drop the identity R starts from: with average pooling it would give every patch the same
            # baseline and drown the attention-borne relevance (a class-token row never holds it)
            tokens = gradient_rollout(maps, grads) - torch.eye(maps[0].shape[-1], device=x.device)
    finally:
        model.train(was_training)
    tgt = _targets(logits, target)
    relevance = _readout_rows(model, tokens)
    grid = _grid(model, x, relevance.shape[-1])
    relevance = relevance / relevance.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    layers = torch.stack([_readout_rows(model, m.float().mean(dim=1)) for m in maps], dim=1)
    return {
        "logits": logits,
        "target": tgt,
        "relevance": relevance.reshape(-1, *grid),
        "layers": layers.reshape(layers.shape[0], layers.shape[1], *grid),
    }


def _targets(logits: Tensor, target: int | Tensor | None) -> Tensor:
    B, C = logits.shape
    if target is None:
        return logits.argmax(dim=-1)
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1).expand(B)
    if (t < 0).any() or (t >= C).any():
        raise ValueError(f"target class {t.tolist()} outside the model's {C} classes")
    return t
