"""Zero-shot classification and retrieval with a trained dual encoder: ``vitkit zeroshot`` / ``vitkit.zeroshot``.

::

    import vitkit
    r = vitkit.zeroshot("runs/clip-digits", dataset="digits")          # the run's classes and templates
    r = vitkit.zeroshot("runs/clip-digits", dataset="digits", classes=["zero", "one", ..., "nine"],
                        templates=["a photo of the number {label}."])   # other names for the same classes
    r = vitkit.zeroshot("runs/lit", dataset="cifar10-jpeg", classes=["cat", "ship", "truck"])  # 3 of 10 classes
    W = vitkit.zeroshot_classifier(model, ["cat", "dog"], ["a photo of a {label}."], tokenizer)  # (D, 2)

A labelled dataset is classified from text alone (:func:`~vitkit.tasks.zeroshot.zeroshot_classifier`: prompt
ensembling) and scored as ``vitkit eval`` scores a classifier (:func:`vitkit.metrics.classification_metrics`:
top-1/top-5, per class, confusion matrix); a ``pairs:<manifest>`` set is scored by image->text and text->image
recall@1/5/10 (:func:`~vitkit.tasks.zeroshot.retrieval_recall`). The result is written to
``zeroshot-<dataset>.json`` beside the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._callable import make_module_callable
from .tasks.zeroshot import encode_texts, retrieval_recall, zeroshot_classifier, zeroshot_eval

__all__ = [
    "zeroshot",
    "zeroshot_classifier",
    "zeroshot_eval",
    "retrieval_recall",
    "zeroshot_classes",
    "load_dual_encoder",
    "embed_images",
]


def zeroshot_classes(
    dataset_classes: Sequence[str], classes: Sequence[str] | str | None
) -> tuple[list[str], list[int]]:
    """(the names to classify into, the dataset class index of each) for ``classes`` given by the user.

    None: the dataset's own classes. Names that are all classes of the dataset: those classes only (their images
    alone are scored, e.g. held-out classes). As many names as the dataset has classes, not all its own: new names
    for its classes, in order. Items may hold several names separated by commas.

    Raises:
        ValueError: an empty class list, or names that are neither the dataset's nor as many as its classes.
    """
    from .tasks.contrastive import parse_names

    known = [str(c) for c in dataset_classes]
    if classes is None:
        return known, list(range(len(known)))
    names = parse_names(classes)
    if not names:
        raise ValueError("an empty class list: name at least one class (--classes a,b,c), or leave it out")
    if all(n in known for n in names):
        return names, [known.index(n) for n in names]
    if len(names) == len(known):
        return names, list(range(len(known)))
    unknown = [n for n in names if n not in known]
    raise ValueError(f"classes {unknown} are not classes of the dataset ({', '.join(known)}); new names must be one "
                     f"per class ({len(known)}), got {len(names)}")  # fmt: skip


def load_dual_encoder(path: str | os.PathLike, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A dual encoder (a run directory or model file) in eval mode and its data config (normalisation, input size,
    channels, and what the run recorded: classes, templates, ``max_length``).

    Raises:
        FileNotFoundError: no model there. ValueError: a model without ``encode_image`` / ``encode_text``.
    """
    from .predict import resolve_data_config
    from .tasks.inference import model_file
    from .weights import load

    file = model_file(path)
    model = load(file, device=device).eval()
    if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
        raise ValueError(f"{file} holds a {type(model).__name__}, not a dual encoder (CLIP / SigLIP / LiT)")
    recorded = dict(getattr(model, "data_config", None) or {})
    image = {k: v for k, v in recorded.items() if k in ("dataset", "mean", "std", "img_size", "in_chans")}
    return model, {**recorded, **resolve_data_config(model.visual, image or None, source=str(file))}


def embed_images(
    model: Any, dataset: Any, data_config: dict[str, Any], batch_size: int = 256, device: str = "cpu",
    features: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Unit-length image embeddings (N, D) of ``dataset`` and its labels (N,), the images prepared as ``vitkit eval``
    prepares them (channels, size, mean/std of ``data_config``); ``features=True``: the image tower's pooled
    features (N, F) before the projection instead (what a linear probe reads). CPU float32 tensors."""
    from .evaluate import _logits_and_targets

    encode = model.visual if features else (lambda x: model.encode_image(x, normalize=True))
    out, labels = _logits_and_targets(encode, dataset, data_config, batch_size, 0, torch.device(device))
    return out.float(), labels


def zeroshot(
    run_or_model: str | os.PathLike, dataset: str | None = None, data_dir: str | os.PathLike | None = None,
    split: str = "test", classes: Sequence[str] | str | None = None, templates: Sequence[str] | None = None,
    tokenizer: str | os.PathLike | None = None, batch_size: int = 256, device: str = "cpu",
    out_json: str | os.PathLike | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Zero-shot classification (or, on ``pairs:``, retrieval) of ``dataset``/``split`` by a dual encoder.

    Args:
        run_or_model: a contrastive run directory or its ``model.safetensors``.
        dataset: a labelled image dataset or ``pairs:<manifest>`` (default: the one the run validated on).
        classes: see :func:`zeroshot_classes` (default: the dataset's).
        templates: prompts with ``{label}`` (default: the run's, else CLIP's short ensemble).
        tokenizer: the text tower's tokenizer (default: ``tokenizer.json`` beside the model).

    Returns:
        :func:`vitkit.metrics.classification_metrics` of the zero-shot logits (``top1``, ``top5``, ``per_class``,
        ``confusion_matrix`` ...) with ``classes``, ``templates``, ``dataset``, ``split``, ``checkpoint``,
        ``zeroshot_json``; for pairs ``i2t_recall@k`` / ``t2i_recall@k`` (k = 1, 5, 10).

    Raises:
        FileNotFoundError: no model, or no tokenizer. ValueError: a model that is not a dual encoder, an empty
            class list, a template without ``{label}``, no dataset named or recorded.
    """
    from .data import build_dataset
    from .data.text import TextTokenizer
    from .evaluate import _read_run_config
    from .tasks.base import dataset_label
    from .tasks.inference import model_file

    file = model_file(run_or_model)
    model, data_config = load_dual_encoder(file, device)
    run_cfg = _read_run_config(file.parent)
    name = dataset or run_cfg.get("dataset") or data_config.get("dataset")
    if not name:
        raise ValueError(
            f"no dataset given and none recorded for {file}: name one (vitkit zeroshot --data NAME)"
        )
    found = Path(tokenizer) if tokenizer else file.parent / "tokenizer.json"
    if not found.exists():
        raise FileNotFoundError(f"no tokenizer at {found}: give the run directory or --tokenizer PATH")
    tok = TextTokenizer.from_file(found, int(data_config.get("max_length", 64)))
    ds = build_dataset(name, split, data_dir=data_dir or run_cfg.get("data_dir"),
                       channels=int(data_config["in_chans"]))  # fmt: skip
    if str(name).lower().startswith("pairs:"):
        result = _retrieval(model, ds, tok, data_config, batch_size, device)
    else:
        result = _classify(model, ds, tok, data_config, classes, templates, batch_size, device)
    out = (
        Path(out_json)
        if out_json
        else file.parent / f"zeroshot-{dataset_label(str(name).replace('{split}', split))}.json"
    )
    result.update(checkpoint=str(file), dataset=str(name), split=split, zeroshot_json=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.inference_mode()
def _classify(model, ds, tok, data_config, classes, templates, batch_size, device) -> dict[str, Any]:
    from .data.pairs import DEFAULT_TEMPLATES
    from .metrics import classification_metrics

    names, index = zeroshot_classes(ds.classes, classes)
    templates = list(templates or data_config.get("templates") or DEFAULT_TEMPLATES)
    weights = zeroshot_classifier(model, names, templates, tok)
    if index != list(range(len(ds.classes))):  # a subset of the classes: their images only, labels renumbered
        from .tasks.contrastive import select_classes

        ds = select_classes(ds, names)
    embeds, labels = embed_images(model, ds, data_config, batch_size, device)
    relabel = torch.full((len(ds.classes),), -1, dtype=torch.long)
    relabel[torch.tensor(index)] = torch.arange(len(index))
    logits = model.logit_scale.exp().float().cpu() * embeds @ weights.cpu()
    metrics = classification_metrics(logits, relabel[labels], names)
    return {"zeroshot": True, **metrics, "templates": templates}


@torch.inference_mode()
def _retrieval(model, ds, tok, data_config, batch_size, device) -> dict[str, Any]:
    embeds, labels = embed_images(model, ds, data_config, batch_size, device)
    texts = encode_texts(model, list(ds.classes), tok).cpu()
    return {**retrieval_recall(embeds, texts, labels), "num_images": len(labels), "num_captions": len(texts)}


make_module_callable(__name__, "zeroshot")
