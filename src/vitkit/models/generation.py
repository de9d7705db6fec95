"""Text generation with a decoder-only model: KV-cached incremental decoding, left-padded batches, greedy or
sampled (temperature, top-k, top-p / nucleus), seeded, stopping at EOS or when the caller says so.

The loop follows HuggingFace ``generate`` so that the two agree token for token: prompts of different lengths are
left-padded, padding keys are masked and each token's position counts only real tokens
(``attention_mask.cumsum(-1) - 1``). Past the model's context the window slides (the last ``block_size`` tokens
are run again, without the cache), as nanoGPT does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["filter_logits", "check_sampling", "left_pad", "generate"]


def check_sampling(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise a ValueError naming the first sampling setting out of range."""
    if do_sample and not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 when sampling, got {temperature} (greedy decoding: do_sample=False, --greedy)"
        )
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """(B, V) logits with the tokens outside the sampling support set to ``-inf``.

    ``top_k``: keep the k most likely tokens (ties at the k-th value kept). ``top_p`` (nucleus sampling, Holtzman
    et al. 2019): keep the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one).
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # the mass of the more likely tokens
        drop = before >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Token lists -> (ids (B, L), attention_mask (B, L)), left-padded to the longest (1 = token, 0 = padding)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, longest - len(p) :] = 1
    return ids, mask


def _next_logits(model: nn.Module, ids: Tensor, mask: Tensor, cache, fed: int) -> tuple[Tensor, object, int]:
    """The last position's logits; ``fed``: how many of ``ids``' columns the cache already holds."""
    if (
        cache is None or ids.shape[1] > model.block_size
    ):  # no cache, or past the context: the window slides and
        ids, mask = ids[:, -model.block_size :], mask[:, -model.block_size :]  # is run whole, without a cache
        cache, fed = None, 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    padding = (mask == 0) if not bool(mask.all()) else None
    logits = model(ids[:, fed:], positions=positions[:, fed:], key_padding_mask=padding, cache=cache)
    return logits[:, -1], cache, ids.shape[1] if cache is not None else 0


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_tokens: Callable[[Tensor], Tensor | None] | None = None,
) -> Tensor:
    """Continue every prompt by up to ``max_new_tokens`` tokens.

    Args:
        model: a :class:`~vitkit.models.gpt.GPT` (anything with ``block_size``, ``new_cache`` and the same forward).
        idx: (B, L) prompt ids, left-padded where ``attention_mask`` (B, L) has zeros (see :func:`left_pad`).
        do_sample: sample from the filtered distribution; False is greedy (argmax).
        temperature, top_k, top_p: the sampling distribution (see :func:`filter_logits`).
        eos_id: a row that emits it stops (later positions hold ``pad_id``).
        generator: a seeded ``torch.Generator`` makes sampling reproducible.
        on_tokens: called with each step's (B,) new tokens (streaming); may return a (B,) bool tensor of rows to
            stop (e.g. a stop string was printed).

    Returns:
        (B, L + n) ids: the prompts followed by the new tokens (n <= ``max_new_tokens``).

    Raises:
        ValueError: a setting out of range (temperature <= 0 when sampling, top_k < 1, top_p outside (0, 1]).
    """
    check_sampling(do_sample, temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    mask = torch.ones_like(idx) if attention_mask is None else attention_mask.to(idx.device, torch.long)
    if mask.shape != idx.shape or not bool(mask[:, -1].all()):
        raise ValueError(
            "attention_mask must have the prompts' shape and be left-padded (every row ends with a token); "
            "see left_pad"
        )
    was_training = model.training
    model.eval()
    try:
        return _decode(model, idx, mask, max_new_tokens, do_sample, temperature, top_k, top_p, eos_id, pad_id,
                       generator, use_cache, on_tokens)  # fmt: skip
    finally:
        model.train(was_training)


def _decode(model, idx, mask, max_new_tokens, do_sample, temperature, top_k, top_p, eos_id, pad_id, generator,
            use_cache, on_tokens) -> Tensor:  # fmt: skip
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    cache, fed = (model.new_cache() if use_cache else None), 0
    for _ in range(max_new_tokens):
        logits, cache, fed = _next_logits(model, idx, mask, cache, fed)
        logits = logits.float()
        if do_sample:
            logits = filter_logits(logits / temperature, top_k, top_p)
            token = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            token = logits.argmax(-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        idx = torch.cat([idx, token[:, None]], dim=1)
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        if eos_id is not None:
            done |= token == eos_id
        if on_tokens is not None:
            stop = on_tokens(token)
            if stop is not None:
                done |= stop.to(done.device)
        if bool(done.all()):
            break
    return idx
