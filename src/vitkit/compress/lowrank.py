"""Low-rank factorisation of linear layers by truncated SVD: ``W (out x in) ~ U_r S_r V_r^T``.

A factorised layer is two linears, ``down`` (in -> r, no bias) and ``up`` (r -> out, with the original bias),
which costs ``r (in + out)`` weights instead of ``in * out``: it only pays when ``r < in*out / (in+out)``. The
singular values are split evenly (``sqrt(S)`` on each side) so that both factors have similar scales, which
keeps a later fine-tune well conditioned.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import Tensor, nn

from .edits import record_edit, register_edit

__all__ = ["LowRankLinear", "factorize_linear", "low_rank", "rank_for_energy"]


class LowRankLinear(nn.Module):
    """``up(down(x))``: a rank-``rank`` linear map from ``in_features`` to ``out_features``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _max_rank(linear: nn.Linear) -> int:
    return min(linear.in_features, linear.out_features)


def rank_for_energy(singular_values: Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep ``energy`` of the squared Frobenius norm."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    power = singular_values.double().square()
    kept = power.cumsum(0) / power.sum().clamp_min(1e-300)
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12).item()) + 1


def factorize_linear(linear: nn.Linear, rank: int) -> LowRankLinear:
    """The best rank-``rank`` approximation of ``linear`` (Eckart-Young), as a :class:`LowRankLinear`."""
    if not 1 <= rank <= _max_rank(linear):
        raise ValueError(
            f"rank {rank} is not possible for a {linear.in_features}->{linear.out_features} linear layer "
            f"(1 <= rank <= {_max_rank(linear)})"
        )
    w = linear.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    out = LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
    out = out.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.down.weight.copy_(root[:, None] * vh[:rank])
        out.up.weight.copy_(u[:, :rank] * root[None, :])
        if linear.bias is not None:
            out.up.bias.copy_(linear.bias)
    return out


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def low_rank(
    model: nn.Module,
    energy: float | None = None,
    rank: int | None = None,
    include: tuple[str, ...] = ("blocks.*",),
    exclude: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Factorise the linear layers of ``model`` in place; return one report row per layer considered.

    Choose the rank per layer by kept ``energy`` (e.g. 0.9) or give one ``rank`` for all. Layers are picked by
    glob patterns on module names (``include``; default: every linear of the encoder blocks, so the patch
    embedding and the classifier stay exact); a layer is left dense where the factorisation would not make it
    smaller. The model's structure change is recorded so that :func:`vitkit.save` / :func:`vitkit.load`
    round-trip it.
    """
    if (energy is None) == (rank is None):
        raise ValueError("give exactly one of energy= or rank=")
    linears = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and any(fnmatch.fnmatchcase(name, p) for p in include)
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    ]
    if not linears:
        raise ValueError(f"no linear layer matches include={include} exclude={exclude}")
    if rank is not None:
        too_big = [f"{n} (max {_max_rank(m)})" for n, m in linears if rank > _max_rank(m)]
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if too_big:
            more = f" and {len(too_big) - 3} more" if len(too_big) > 3 else ""
            raise ValueError(f"rank {rank} is larger than the layers allow: {', '.join(too_big[:3])}{more}")
    report, ranks = [], {}
    for name, linear in linears:
        dense = linear.in_features * linear.out_features
        if energy is not None:
            s = torch.linalg.svdvals(linear.weight.detach().double())
            r = rank_for_energy(s, energy)
        else:
            r = rank
        factored = r * (linear.in_features + linear.out_features)
        row = {"layer": name, "shape": [linear.out_features, linear.in_features], "rank": r,
               "weights_before": dense, "weights_after": min(dense, factored), "factorized": factored < dense}  # fmt: skip
        if factored < dense:
            _set_module(model, name, factorize_linear(linear, r))
            ranks[name] = r
        report.append(row)
    if ranks:
        record_edit(model, "low_rank", ranks)
    return report


@register_edit("low_rank")
def _rebuild_low_rank(model: nn.Module, ranks: dict[str, int]) -> None:
    """Give a freshly built model the factorised layers named in ``ranks`` (weights come after)."""
    for name, r in ranks.items():
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(
                f"cannot rebuild low-rank layer {name}: the model has {type(linear).__name__} there"
            )
        _set_module(
            model,
            name,
            LowRankLinear(linear.in_features, linear.out_features, int(r), linear.bias is not None),
        )
