"""Read the attention weights of every self-attention layer of a model, without changing what it computes."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..layers.attention import Attention, scaled_dot_product

__all__ = ["AttentionRecorder", "attention_maps"]


def _call_args(args: tuple, kwargs: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """(x, {attn_mask, key_padding_mask, is_causal, cache}) of one ``Attention.forward`` call."""
    names = ("attn_mask", "key_padding_mask", "is_causal", "need_weights", "cache")
    values = dict(zip(names, args[1:], strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    values["is_causal"] = bool(values.get("is_causal", False))
    return args[0], values


class AttentionRecorder:
    """Context manager that records the (B, H, L, L) attention weights of each :class:`Attention` layer.

    ``mode="hook"`` (default): a forward hook recomputes each layer's weights from the layer's input (same
    projections, QK-norm, masks and cached keys, eager softmax) after the layer has run as usual, so the model's
    outputs are bit-identical to a run without the recorder. The recorded weights are detached; they are the
    weights the forward used, whichever path ran (the fused and eager paths agree for every mask, fully masked
    query rows included: their weights are zero). Attention dropout is not applied to them.

    ``mode="grad"``: each layer runs its eager path with ``need_weights=True`` and the weights that produced
    the output are kept in the autograd graph with ``retain_grad()``: after ``backward`` their ``.grad`` holds
    d(output)/d(attention), as gradient-weighted explanations need. Outputs equal the fused path's to float
    tolerance. Gradient checkpointing is switched off meanwhile so that each layer is recorded once.

    ``maps`` holds one tensor per layer call, in execution order; ``clear()`` empties it between batches.
    """

    def __init__(self, model: nn.Module, mode: Literal["hook", "grad"] = "hook") -> None:
        if mode not in ("hook", "grad"):
            raise ValueError(f"mode must be 'hook' or 'grad', got {mode!r}")
        self.layers = [m for m in model.modules() if isinstance(m, Attention)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no vitkit Attention layers to record")
        self.model, self.mode = model, mode
        self.maps: list[Tensor] = []
        self._handles: list[Any] = []
        self._checkpointing: bool | None = None

    def clear(self) -> None:
        self.maps.clear()

    def _hook(self, module: Attention, args: tuple, kwargs: dict[str, Any], _output: Any) -> None:
        x, call = _call_args(args, kwargs)
        B, L, _ = x.shape
        with torch.no_grad():
            qkv = module.qkv(x).reshape(B, L, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            cache = call.get("cache")
            if cache is not None and "k" in cache:  # incremental decoding: the keys the layer attended to
                k, v = cache["k"], cache["v"]
            q, k = module.q_norm(q), module.k_norm(k)
            _, weights = scaled_dot_product(
                q, k, v, call.get("attn_mask"), call.get("key_padding_mask"), call["is_causal"],
                need_weights=True, fused=False,
            )  # fmt: skip
        self.maps.append(weights)

    def _recording_forward(self, module: Attention):
        original = type(module).forward

        def forward(*args: Any, **kwargs: Any) -> Tensor:
            kwargs["need_weights"] = True
            out, weights = original(module, *args, **kwargs)
            if weights.requires_grad:
                weights.retain_grad()
            self.maps.append(weights)
            return out

        return forward

    def __enter__(self) -> AttentionRecorder:
        self.clear()
        if self.mode == "hook":
            self._handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in self.layers]
        else:
            for m in self.layers:
                m.forward = self._recording_forward(m)  # instance attribute shadows the class method
            if hasattr(self.model, "grad_checkpointing"):
                self._checkpointing = self.model.grad_checkpointing
                self.model.grad_checkpointing = False
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.mode == "grad":
            for m in self.layers:
                m.__dict__.pop("forward", None)
            if self._checkpointing is not None:
                self.model.grad_checkpointing = self._checkpointing


@torch.no_grad()
def attention_maps(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Run ``model`` on ``x`` once; return (its output, a list of (B, H, L, L) weights, one per layer)."""
    with AttentionRecorder(model) as rec:
        out = model(x)
    return out, list(rec.maps)
