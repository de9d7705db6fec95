"""Token merging (ToMe; Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023), at inference.

In every block, after attention, the ``r`` most similar pairs of patch tokens are merged (bipartite soft
matching on the attention keys, averaged over heads), so later blocks see fewer tokens. Each token carries its
size (how many patches it stands for): merges are size-weighted averages, attention adds ``log(size)`` to the
keys' logits (proportional attention) and average pooling weights tokens by size. Prefix tokens (class,
distillation, registers) are never merged. No weights change: ``apply_tome(model, r)`` patches a model in
place, ``remove_tome`` undoes it, and ``vitkit.save``/``vitkit.load`` keep the setting.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .edits import record_edit, register_edit

__all__ = ["apply_tome", "remove_tome", "bipartite_soft_matching", "merge_tokens"]


def bipartite_soft_matching(metric: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pick ``r`` merges among (B, N, C) tokens: alternate tokens form sets A and B; each A token's most
    similar B token (cosine) is its match, and the ``r`` A tokens with the best matches merge into them.

    Returns (unmerged A indices (B, Na - r), merged A indices (B, r), their B destinations (B, r)).
    """
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b = metric[:, ::2], metric[:, 1::2]
    best, match = (a @ b.transpose(-1, -2)).max(dim=-1)  # B, Na
    order = best.argsort(dim=-1, descending=True)
    src = order[:, :r]
    return order[:, r:], src, match.gather(-1, src)


def merge_tokens(
    x: Tensor, size: Tensor, unmerged: Tensor, src: Tensor, dst: Tensor
) -> tuple[Tensor, Tensor]:
    """Size-weighted merge of (B, N, C) tokens with sizes (B, N, 1) -> (B, N - r, C), (B, N - r, 1)."""
    t = torch.cat([x * size, size], dim=-1)  # one gather/scatter moves the weighted tokens and their sizes
    a, b = t[:, ::2], t[:, 1::2]
    c = t.shape[-1]
    keep = a.gather(1, unmerged[..., None].expand(-1, -1, c))
    moved = a.gather(1, src[..., None].expand(-1, -1, c))
    b = b.scatter_reduce(1, dst[..., None].expand(-1, -1, c), moved, reduce="sum")
    t = torch.cat([keep, b], dim=1)
    size = t[..., -1:]
    return t[..., :-1] / size, size


def _tome_block_forward(model: nn.Module, block: nn.Module):
    """A pre-norm EncoderBlock forward that merges tokens after attention."""
    attn = block.attn
    keys: dict[str, Tensor] = {}

    def grab_keys(_m: nn.Module, _args: Any, out: Tensor) -> None:
        B, L, three_c = out.shape
        c = three_c // 3
        keys["k"] = out[..., c : 2 * c].reshape(B, L, attn.num_heads, -1).mean(dim=2)

    def forward(x: Tensor, attn_mask: Tensor | None = None, key_padding_mask: Tensor | None = None) -> Tensor:
        state = model._tome_state
        size = state["size"]  # None until the first merge: every token stands for one patch
        if size is not None:
            bias = size.log()[:, None, None, :, 0]  # proportional attention: B, 1, 1, L
            attn_mask = bias if attn_mask is None else attn_mask + bias
        p = model.num_prefix_tokens
        r = min(model.tome_r, (x.shape[1] - p) // 2)  # attention keeps the token count: decide before it
        handle = attn.qkv.register_forward_hook(grab_keys) if r > 0 else None  # keys only when merging
        try:
            x = x + block.drop_path1(block.ls1(attn(block.norm1(x), attn_mask, key_padding_mask)))
        finally:
            if handle is not None:
                handle.remove()
        if r > 0:
            picked = bipartite_soft_matching(keys.pop("k")[:, p:], r)
            if size is None:
                size = torch.ones(x.shape[0], x.shape[1], 1, device=x.device, dtype=x.dtype)
            patches, patch_size = merge_tokens(x[:, p:], size[:, p:], *picked)
            x = torch.cat([x[:, :p], patches], dim=1)
            state["size"] = torch.cat([size[:, :p], patch_size], dim=1)
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    return forward


def _tome_pool(model: nn.Module):
    original = type(model).pool

    def pool(x: Tensor) -> Tensor:
        size = model._tome_state["size"]
        if model.global_pool != "avg" or size is None:
            return original(model, x)
        w = size[:, model.num_prefix_tokens :]
        return (x[:, model.num_prefix_tokens :] * w).sum(dim=1) / w.sum(dim=1)

    return pool


def _reset_state(model: nn.Module, _args: Any) -> None:
    model._tome_state = {"size": None}


def apply_tome(model: nn.Module, r: int) -> nn.Module:
    """Merge ``r`` token pairs in every block of a (pre-norm) ViT from now on; returns the model."""
    if not hasattr(model, "blocks") or not hasattr(model, "num_prefix_tokens"):
        raise ValueError(
            f"{type(model).__name__} is not a ViT: token merging needs .blocks and prefix tokens"
        )
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"r (token pairs merged per block) must be a non-negative integer, got {r!r}")
    if any(not getattr(b, "norm_first", False) for b in model.blocks):
        raise ValueError("token merging supports pre-norm blocks only")
    remove_tome(model)
    model.tome_r = r
    for block in model.blocks:
        block.forward = _tome_block_forward(model, block)
    model.pool = _tome_pool(model)
    model._tome_state = {"size": None}
    model._tome_hook = model.register_forward_pre_hook(_reset_state)
    edits = [e for e in getattr(model, "structure_edits", []) if e["kind"] != "tome"]
    model.structure_edits = edits
    record_edit(model, "tome", {"r": r})
    return model


def remove_tome(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_tome`."""
    if getattr(model, "_tome_hook", None) is None:
        return model
    model._tome_hook.remove()
    for block in model.blocks:
        block.__dict__.pop("forward", None)
    for name in ("pool", "_tome_hook", "_tome_state", "tome_r"):
        model.__dict__.pop(name, None)
    model.structure_edits = [e for e in getattr(model, "structure_edits", []) if e["kind"] != "tome"]
    return model


@register_edit("tome")
def _rebuild_tome(model: nn.Module, args: dict[str, int]) -> None:
    apply_tome(model, int(args["r"]))
