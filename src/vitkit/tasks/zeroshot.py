"""Zero-shot classification and image-text retrieval with a dual encoder (CLIP, SigLIP, LiT).

A zero-shot classifier is built from text alone (Radford et al. 2021, section 3.1.4): every class name is written
into every prompt template ("a photo of a {label}."), the prompts are embedded and normalised, each class's
embeddings are averaged and the mean renormalised (prompt ensembling). An image is classified by the cosine of its
normalised embedding with each class's weight vector.

These functions need a model with ``encode_image`` / ``encode_text`` (:class:`vitkit.models.clip.CLIP` or anything
shaped like it) and a tokenizer that maps a list of strings to ``{"input_ids", "attention_mask"}`` tensors
(:class:`vitkit.data.text.TextTokenizer`). The command ``vitkit zeroshot`` and :func:`vitkit.zeroshot` load a run and
a dataset around them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.pairs import DEFAULT_TEMPLATES, CaptionTemplates

__all__ = [
    "encode_texts",
    "ensemble",
    "zeroshot_classifier",
    "zeroshot_eval",
    "topk_hits",
    "retrieval_recall",
    "predict_zeroshot",
]

Tokenizer = Callable[[list[str]], dict[str, Tensor]]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_texts(
    model: nn.Module, texts: Sequence[str], tokenizer: Tokenizer, batch_size: int = 256
) -> Tensor:
    """Unit-length text embeddings (N, D), float32, of ``texts`` encoded ``batch_size`` at a time (each chunk
    padded to its own longest text; the padding is masked, so the chunking does not change a text's embedding
    beyond float rounding)."""
    if not texts:
        raise ValueError("no texts to encode")
    device, out = _device(model), []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[i : i + batch_size]))
        ids, mask = batch["input_ids"].to(device), batch.get("attention_mask")
        out.append(model.encode_text(ids, None if mask is None else mask.to(device), normalize=True).float())
    return torch.cat(out)


def zeroshot_classifier(
    model: nn.Module, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
    tokenizer: Tokenizer | None = None, batch_size: int = 256,
) -> Tensor:  # fmt: skip
    """The zero-shot weights (D, C) of ``classnames``: per class the mean of its normalised prompt embeddings
    (one prompt per template), renormalised to unit length (CLIP's prompt ensembling).

    Args:
        model: a dual encoder with ``encode_text(input_ids, attention_mask, normalize=True)``.
        classnames: C class names, written into the templates' ``{label}``.
        templates: prompts with exactly one ``{label}`` each (default: a short CLIP ensemble,
            :data:`vitkit.data.pairs.DEFAULT_TEMPLATES`).
        tokenizer: strings -> ``{"input_ids": (B, L), "attention_mask": (B, L)}`` (the run's ``tokenizer.json``).

    Returns:
        float32 (D, C) on the model's device, columns of unit length; ``image_embeds @ weights`` are cosines.

    Raises:
        ValueError: an empty class list, a blank class name, no template, a template without ``{label}``, no
            tokenizer.
    """
    prompts = CaptionTemplates(
        classnames, templates
    ).all()  # checks the names and templates, naming the bad one
    if tokenizer is None:
        raise ValueError("zeroshot_classifier needs the tokenizer the text tower was trained with")
    flat = [p for per_class in prompts for p in per_class]
    return ensemble(encode_texts(model, flat, tokenizer, batch_size).view(len(prompts), len(prompts[0]), -1))


def ensemble(prompt_embeds: Tensor) -> Tensor:
    """Unit-length prompt embeddings (C, T, D) -> zero-shot weights (D, C): the mean over the T templates,
    renormalised (CLIP's prompt ensembling)."""
    return F.normalize(prompt_embeds.float().mean(dim=1), dim=-1).T.contiguous()


def topk_hits(logits: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """How many rows of ``logits`` (N, C) hold their label (N,) among their k largest, per k (k capped at C)."""
    labels = labels.to(logits.device)
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    return {k: int((top[:, : min(k, logits.shape[-1])] == labels[:, None]).any(dim=-1).sum()) for k in ks}


@torch.no_grad()
def zeroshot_eval(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], classifier: Tensor
) -> dict[str, Any]:
    """Zero-shot top-1 / top-5 accuracy of ``model`` over ``batches`` of (normalised images (B, C, H, W), labels
    (B,)) against ``classifier`` (D, C) from :func:`zeroshot_classifier` (labels index its columns).

    Returns ``{"top1", "top5", "top5_k" (= min(5, C)), "num_samples", "logits" (N, C) = exp(logit_scale) * cosine,
    "targets" (N,)}`` (the logits and targets on the CPU, for :func:`vitkit.metrics.classification_metrics`)."""
    device, scale = _device(model), float(getattr(model, "logit_scale", torch.tensor(0.0)).exp())
    logits, targets = [], []
    for images, labels in batches:
        embeds = model.encode_image(images.to(device), normalize=True).float()
        logits.append((scale * embeds @ classifier.to(device)).cpu())
        targets.append(torch.as_tensor(labels).long().cpu())
    if not logits:
        raise ValueError("zeroshot_eval: no images")
    all_logits, all_targets = torch.cat(logits), torch.cat(targets)
    hits, n = topk_hits(all_logits, all_targets, (1, 5)), len(all_targets)
    return {"top1": hits[1] / n, "top5": hits[5] / n, "top5_k": min(5, all_logits.shape[1]), "num_samples": n,
            "logits": all_logits, "targets": all_targets}  # fmt: skip


def retrieval_recall(
    image_embeds: Tensor, text_embeds: Tensor, caption_ids: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image->text and text->image recall@k of a pair set (the retrieval protocol of CLIP's Flickr30k / COCO
    tables, with one or more images per caption).

    Args:
        image_embeds: (N, D) unit-length image embeddings.
        text_embeds: (M, D) unit-length embeddings of the M distinct captions.
        caption_ids: (N,) the index in [0, M) of each image's caption.
        ks: the cut-offs (each capped at the number of candidates).

    Returns:
        ``{"i2t_recall@k": the share of images whose caption is among their k nearest texts, "t2i_recall@k": the
        share of captions (those with at least one image) with one of their images among their k nearest images}``.

    Raises:
        ValueError: shapes that do not agree, or an id outside [0, M).
    """
    n, m = image_embeds.shape[0], text_embeds.shape[0]
    ids = torch.as_tensor(caption_ids).long().to(image_embeds.device)
    if image_embeds.dim() != 2 or text_embeds.dim() != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"retrieval_recall: (N, D) images and (M, D) texts, got {tuple(image_embeds.shape)} and "
            f"{tuple(text_embeds.shape)}"
        )
    if ids.shape != (n,) or (n and (int(ids.min()) < 0 or int(ids.max()) >= m)):
        raise ValueError(
            f"retrieval_recall: caption_ids must be {n} indices in [0, {m}), got {ids.tolist()[:10]}"
        )
    sims = image_embeds.float() @ text_embeds.float().T  # (N, M)
    out: dict[str, float] = {}
    i2t = sims.topk(min(max(ks), m), dim=1).indices  # (N, k)
    t2i = sims.T.topk(min(max(ks), n), dim=1).indices  # (M, k): image indices
    has_image = torch.zeros(m, dtype=torch.bool, device=ids.device).index_fill_(0, ids, True)
    for k in ks:
        out[f"i2t_recall@{k}"] = float((i2t[:, :k] == ids[:, None]).any(dim=1).double().mean())
        found = (ids[t2i[:, :k]] == torch.arange(m, device=ids.device)[:, None]).any(dim=1)
        out[f"t2i_recall@{k}"] = float(found[has_image].double().mean())
    return out


@torch.no_grad()
def predict_zeroshot(model: nn.Module, inputs: list[Any], source: Any, topk: int = 5) -> list[dict[str, Any]]:
    """Top-``topk`` zero-shot classes of each image (a file, PIL image or array) over the classes and templates a
    contrastive run recorded in its data config, read with the ``tokenizer.json`` beside the model (in
    ``source``); probabilities: softmax of ``exp(logit_scale) * cosine``. Raises FileNotFoundError without the
    tokenizer, ValueError for a model that recorded no classes (a ``pairs:`` run)."""
    from ..data.text import TextTokenizer
    from .inputs import read_images

    data = getattr(model, "data_config", None) or {}
    if not data.get("classes"):
        raise ValueError(
            "this model recorded no classes to predict (trained on pairs): use vitkit zeroshot --classes"
        )
    found = Path(source) / "tokenizer.json" if source is not None else None
    if found is None or not found.is_file():
        raise FileNotFoundError(f"no tokenizer.json beside the model (in {source}): give the run directory")
    tokenizer = TextTokenizer.from_file(found, int(data.get("max_length", 64)))
    weights = zeroshot_classifier(
        model, data["classes"], data.get("templates") or DEFAULT_TEMPLATES, tokenizer
    )
    images, _, names = read_images(inputs, data)
    embeds = model.encode_image(images.to(_device(model)), normalize=True).float()
    probs = (model.logit_scale.exp().float() * embeds @ weights).softmax(dim=-1)
    top_p, top_i = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    return [{"path": name, "top": [{"label": data["classes"][j], "index": j, "prob": p}
                                   for p, j in zip(ps, idx, strict=True)]}
            for name, ps, idx in zip(names, top_p.tolist(), top_i.tolist(), strict=True)]  # fmt: skip
