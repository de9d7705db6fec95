"""Classification metrics from logits, as plain JSON-able Python, and a readable text table.

The numbers come from scikit-learn (``confusion_matrix``, ``precision_recall_fscore_support`` with
``zero_division=0``, ``roc_auc_score``); this module only validates the input and arranges the output.
Conventions:

* per-class precision is 0 when the class is never predicted, recall 0 when it has no samples, F1 0 when
  precision + recall is 0;
* a class that neither occurs in the targets nor is ever predicted has ``None`` precision/recall/F1 and is
  left out of the macro averages (so evaluating on a subset of the classes does not drag them down);
* one-vs-rest ROC-AUC is defined for a class only when it has both positive and negative samples; the
  macro ROC-AUC averages the defined ones (``None`` if there are none);
* top-k accuracy caps ``k`` at the number of classes (``top5_k`` records the ``k`` used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score
from torch import Tensor

__all__ = ["classification_metrics", "format_metrics_table", "roc_auc_ovr"]


def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(x))
    raise TypeError(f"{name} must be a tensor, array or list, got {type(x).__name__}")


def roc_auc_ovr(probs: Tensor, targets: Tensor) -> list[float | None]:
    """One-vs-rest ROC-AUC per class (``sklearn.metrics.roc_auc_score``); ``None`` where a class has no
    positive or no negative sample."""
    scores = _as_tensor(probs, "probs").double().numpy()
    targets = _as_tensor(targets, "targets").long().numpy()
    out: list[float | None] = []
    for k in range(scores.shape[1]):
        is_k = targets == k
        out.append(float(roc_auc_score(is_k, scores[:, k])) if 0 < is_k.sum() < len(is_k) else None)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(sum(vals) / len(vals)) if vals else None


def _checked_inputs(
    logits: Any, targets: Any, class_names: Sequence[str] | None
) -> tuple[Tensor, Tensor, list[str]]:
    """Validate the inputs of :func:`classification_metrics`: (float64 logits (N, C), long targets (N,),
    C class names)."""
    logits = _as_tensor(logits, "logits")
    targets = _as_tensor(targets, "targets")
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    n, num_classes = logits.shape
    targets = targets.reshape(-1)
    if len(targets) != n:
        raise ValueError(f"{n} rows of logits but {len(targets)} targets")
    if n == 0:
        raise ValueError("no samples: cannot compute metrics of an empty set")
    if num_classes < 1:
        raise ValueError("logits have no classes (C = 0)")
    if targets.is_floating_point() and not torch.equal(targets, targets.round()):
        raise ValueError("targets must be integer class indices, not probabilities / soft labels")
    targets = targets.long()
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}), found values in [{lo}, {hi}]")
    if class_names is None:
        names = [str(i) for i in range(num_classes)]
    else:
        names = [str(c) for c in class_names]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} logit columns")

    logits = logits.double()
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")
    return logits, targets, names


def _per_class_rows(
    names: list[str],
    precision: Any,
    recall: Any,
    f1: Any,
    support: Any,
    present: Any,
    aucs: list[float | None],
) -> list[dict[str, Any]]:
    """One row per class; precision / recall / F1 are None for a class absent from targets and predictions."""
    return [
        {
            "class": name,
            "index": i,
            "precision": float(precision[i]) if present[i] else None,
            "recall": float(recall[i]) if present[i] else None,
            "f1": float(f1[i]) if present[i] else None,
            "support": int(support[i]),
            "roc_auc": aucs[i],
        }
        for i, name in enumerate(names)
    ]


def classification_metrics(
    logits: Tensor, targets: Tensor, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Metrics of a multi-class classifier from its ``(N, C)`` logits and ``(N,)`` integer targets.

    Returns a dict of plain Python values (JSON-able)::

        num_samples, num_classes, classes        # class names ("0".."C-1" when not given)
        top1, top5, top5_k                       # accuracies in [0, 1]; top5_k = min(5, C)
        loss                                     # mean cross-entropy of the logits
        macro_precision, macro_recall, macro_f1  # over classes that occur in targets or predictions
        weighted_f1                              # per-class F1 weighted by support
        roc_auc                                  # macro one-vs-rest ROC-AUC of the softmax probabilities
        per_class: [{"class", "index", "precision", "recall", "f1", "support", "roc_auc"}, ...]
        confusion_matrix                         # C x C list of lists, rows = true class, cols = predicted

    See the module docstring for how undefined values are handled. ``logits`` may be any float dtype
    (bf16 is fine) on any device; ``targets`` must lie in ``[0, C)``.
    """
    logits, targets, names = _checked_inputs(logits, targets, class_names)
    n, num_classes = logits.shape
    preds = logits.argmax(dim=1)
    k = min(5, num_classes)
    top5 = (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).double().mean().item()

    labels = list(range(num_classes))
    y_true, y_pred = targets.numpy(), preds.numpy()
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    present = (cm.sum(axis=1) + cm.sum(axis=0)) > 0  # occurs in the targets or the predictions
    aucs = roc_auc_ovr(logits.softmax(dim=1), targets)

    per_class = _per_class_rows(names, precision, recall, f1, support, present, aucs)
    return {
        "num_samples": int(n),
        "num_classes": int(num_classes),
        "top1": float((preds == targets).double().mean()),
        "top5": float(top5),
        "top5_k": int(k),
        "loss": float(F.cross_entropy(logits, targets)),
        "macro_precision": _mean([c["precision"] for c in per_class]),
        "macro_recall": _mean([c["recall"] for c in per_class]),
        "macro_f1": _mean([c["f1"] for c in per_class]),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "roc_auc": _mean(aucs),
        "classes": names,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def _fmt(v: Any, width: int = 9) -> str:
    if v is None:
        return f"{'-':>{width}}"
    if isinstance(v, float):
        return f"{v:>{width}.4f}"
    return f"{v!s:>{width}}"


def format_metrics_table(metrics: dict[str, Any], max_name: int = 24) -> str:
    """A fixed-width text table: the overall metrics, then precision/recall/F1/support/AUC per class.

    Accepts the dict of :func:`classification_metrics` (also as read back from ``eval.json``); keys it does
    not know are ignored and missing ones skipped. Class names longer than ``max_name`` are shortened.
    """
    overall = [
        ("top-1 accuracy", "top1"),
        (f"top-{metrics.get('top5_k', 5)} accuracy", "top5"),
        ("macro precision", "macro_precision"),
        ("macro recall", "macro_recall"),
        ("macro F1", "macro_f1"),
        ("weighted F1", "weighted_f1"),
        ("ROC-AUC (macro OvR)", "roc_auc"),
        ("cross-entropy loss", "loss"),
    ]
    head = "overall"
    if "num_samples" in metrics:
        head += f" ({metrics['num_samples']} samples, {metrics.get('num_classes', '?')} classes)"
    where = ", ".join(
        f"{k} {metrics[k]}" for k in ("dataset", "split", "checkpoint") if metrics.get(k) is not None
    )
    lines = [where] if where else []
    lines.append(head)
    label_w = max(len(label) for label, _ in overall)
    for label, key in overall:
        if key in metrics:
            lines.append(f"  {label:<{label_w}}  {_fmt(metrics[key]).strip()}")

    per_class = metrics.get("per_class") or []
    if per_class:
        names = [str(c.get("class", c.get("index", "?"))) for c in per_class]
        names = [n if len(n) <= max_name else n[: max_name - 1] + "~" for n in names]
        name_w = max(5, *(len(n) for n in names))
        cols = ("precision", "recall", "f1", "support", "roc_auc")
        header = f"  {'class':<{name_w}}" + "".join(f"  {c:>9}" for c in cols)
        lines += ["", "per class", header, "  " + "-" * (len(header) - 2)]
        for name, row in zip(names, per_class, strict=True):
            lines.append(f"  {name:<{name_w}}" + "".join(f"  {_fmt(row.get(c))}" for c in cols))
    return "\n".join(lines)
