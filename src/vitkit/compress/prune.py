"""Structured pruning: remove whole attention heads and MLP hidden units, physically (smaller tensors).

Importance is the first-order Taylor estimate of Michel et al. ("Are Sixteen Heads Really Better than One?",
2019): put a gate ``g = 1`` on each head's output (or each MLP hidden unit) and accumulate ``|dL/dg|`` over a few
batches; the least important units are dropped. Pruned layers keep the parameter names of dense ones, with
fewer rows/columns, and the change is recorded so that :func:`vitkit.save` / :func:`vitkit.load` round-trip it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.attention import Attention
from ..layers.mlp import Mlp
from .edits import record_edit, register_edit

__all__ = ["unit_importance", "prune_heads", "prune_mlp", "prune_by_importance"]


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks to prune")
    return list(blocks)


def unit_importance(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> dict[str, list[Tensor]]:
    """Taylor importance ``sum |dL/dgate|`` of every head and MLP hidden unit, per block.

    Returns ``{"heads": [(H,) per block], "mlp": [(hidden,) per block]}``. ``batches`` yields (input, target).
    The model's weights and their ``.grad`` are left untouched.
    """
    blocks = _blocks(model)
    gates, handles = {"heads": [], "mlp": []}, []
    for block in blocks:
        attn, mlp = block.attn, block.mlp
        g_head = torch.ones(attn.num_heads, requires_grad=True, device=attn.proj.weight.device)
        g_mlp = torch.ones(mlp.fc1.out_features, requires_grad=True, device=mlp.fc1.weight.device)
        gates["heads"].append(g_head)
        gates["mlp"].append(g_mlp)
        handles.append(attn.proj.register_forward_pre_hook(
            lambda m, args, g=g_head, hd=attn.head_dim: (args[0] * g.repeat_interleave(hd),)))  # fmt: skip
        handles.append(mlp.fc2.register_forward_pre_hook(lambda m, args, g=g_mlp: (args[0] * g,)))
    scores = {k: [torch.zeros_like(g) for g in v] for k, v in gates.items()}
    was_training = model.training
    model.eval()
    flat = [g for v in gates.values() for g in v]
    try:
        seen = 0
        for x, y in batches:
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, flat)
            i = 0
            for k in ("heads", "mlp"):
                for j in range(len(blocks)):
                    scores[k][j] += grads[i].detach().abs()
                    i += 1
            seen += 1
        if not seen:
            raise ValueError("no batches given to score the units")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return scores


def _sliced_linear(linear: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new linear holding the given output ``rows`` and/or input ``cols`` of ``linear``'s weight."""
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    bias = linear.bias
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).to(linear.weight)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias[rows] if rows is not None else bias)
    return out


def _keep_heads(attn: Attention, keep: Tensor) -> None:
    """Keep heads ``keep`` (sorted indices) of a self-attention layer, in place."""
    if not isinstance(attn.qkv, nn.Linear) or not isinstance(attn.proj, nn.Linear):
        raise ValueError("prune heads before factorising the attention layers (low_rank), not after")
    H, hd = attn.num_heads, attn.head_dim
    rows = (torch.arange(3)[:, None, None] * H * hd + keep[None, :, None] * hd + torch.arange(hd)).reshape(-1)
    cols = (keep[:, None] * hd + torch.arange(hd)).reshape(-1)
    qkv, proj = _sliced_linear(attn.qkv, rows=rows), _sliced_linear(attn.proj, cols=cols)
    attn.qkv, attn.proj, attn.num_heads = qkv, proj, int(keep.numel())


def _keep_hidden(mlp: Mlp, keep: Tensor) -> None:
    """Keep hidden units ``keep`` of an MLP, in place."""
    if not isinstance(mlp.fc1, nn.Linear) or not isinstance(mlp.fc2, nn.Linear):
        raise ValueError("prune MLP units before factorising the MLP layers (low_rank), not after")
    fc1, fc2 = _sliced_linear(mlp.fc1, rows=keep), _sliced_linear(mlp.fc2, cols=keep)
    mlp.fc1, mlp.fc2 = fc1, fc2


def _checked_keep(kind: str, block: int, drop: Iterable[int], total: int) -> Tensor:
    drop = sorted(set(int(i) for i in drop))
    bad = [i for i in drop if not 0 <= i < total]
    if bad:
        raise ValueError(f"block {block} has {total} {kind} (0..{total - 1}); cannot prune {bad}")
    if len(drop) >= total:
        raise ValueError(f"pruning all {total} {kind} of block {block} would cut the network")
    return torch.tensor([i for i in range(total) if i not in drop], dtype=torch.long)


def prune_heads(model: nn.Module, heads: dict[int, Iterable[int]]) -> None:
    """Remove the listed heads, ``{block index: [head indices]}``, in place."""
    blocks = _blocks(model)
    for b, drop in heads.items():
        if not 0 <= int(b) < len(blocks):
            raise ValueError(f"the model has {len(blocks)} blocks; no block {b}")
        attn = blocks[int(b)].attn
        _keep_heads(attn, _checked_keep("heads", int(b), drop, attn.num_heads))
    record_edit(model, "heads", {str(i): blk.attn.num_heads for i, blk in enumerate(blocks)})


def prune_mlp(model: nn.Module, units: dict[int, Iterable[int]]) -> None:
    """Remove the listed MLP hidden units, ``{block index: [unit indices]}``, in place."""
    blocks = _blocks(model)
    for b, drop in units.items():
        if not 0 <= int(b) < len(blocks):
            raise ValueError(f"the model has {len(blocks)} blocks; no block {b}")
        mlp = blocks[int(b)].mlp
        _keep_hidden(mlp, _checked_keep("MLP units", int(b), drop, mlp.fc1.out_features))
    record_edit(model, "mlp_hidden", {str(i): blk.mlp.fc1.out_features for i, blk in enumerate(blocks)})


def prune_by_importance(
    model: nn.Module, scores: dict[str, list[Tensor]], head_fraction: float = 0.0, mlp_fraction: float = 0.0
) -> dict[str, Any]:
    """Drop the least important ``head_fraction`` of all heads and ``mlp_fraction`` of all MLP units.

    Ranking is global across blocks (scores normalised per block by their L2 norm, as Michel et al. do),
    but every block keeps at least one head and one unit. Returns what was removed.
    """
    removed: dict[str, Any] = {"heads": {}, "mlp": {}}
    for kind, fraction, fn in (("heads", head_fraction, prune_heads), ("mlp", mlp_fraction, prune_mlp)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{kind} fraction must be in [0, 1), got {fraction}")
        per_block = [s / s.norm().clamp_min(1e-12) for s in scores[kind]]
        total = sum(s.numel() for s in per_block)
        n_drop = int(round(fraction * total))
        if n_drop == 0:
            continue
        ranked = sorted((float(v), b, i) for b, s in enumerate(per_block) for i, v in enumerate(s.tolist()))
        left = [s.numel() for s in per_block]
        plan: dict[int, list[int]] = {}
        for _v, b, i in ranked:
            if n_drop == 0:
                break
            if left[b] > 1:
                plan.setdefault(b, []).append(i)
                left[b] -= 1
                n_drop -= 1
        fn(model, plan)
        removed[kind] = plan
    return removed


@register_edit("heads")
def _rebuild_heads(model: nn.Module, counts: dict[str, int]) -> None:
    for b, n in counts.items():
        attn = _blocks(model)[int(b)].attn
        if int(n) != attn.num_heads:
            _keep_heads(attn, torch.arange(int(n)))


@register_edit("mlp_hidden")
def _rebuild_mlp(model: nn.Module, counts: dict[str, int]) -> None:
    for b, n in counts.items():
        mlp = _blocks(model)[int(b)].mlp
        if int(n) != mlp.fc1.out_features:
            _keep_hidden(mlp, torch.arange(int(n)))
