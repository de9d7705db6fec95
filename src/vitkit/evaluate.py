"""Evaluate a trained model (run directory or ``.safetensors`` file) on a dataset split.

Writes the metrics of :func:`vitkit.metrics.classification_metrics` (plus where they came from and how long
inference took) to a JSON file and a row-normalised confusion-matrix heatmap beside it::

    from vitkit.evaluate import evaluate
    m = evaluate("runs/digits")            # dataset, data_dir from runs/digits/config.yaml
    print(m["top1"], m["macro_f1"])        # also runs/digits/eval.json, runs/digits/confusion_matrix.png
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._callable import make_module_callable
from .metrics import classification_metrics
from .plots import plot_confusion_matrix
from .predict import _match_channels, load_for_inference

__all__ = ["evaluate", "default_output_paths"]

log = logging.getLogger(__name__)


def _read_run_config(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse {run_dir / 'config.yaml'}: {e}") from e
    return cfg if isinstance(cfg, dict) else {}


def _run_dir_of(path: Path) -> Path | None:
    """The run directory ``path`` is (a directory) or belongs to (a model file beside a config.yaml)."""
    if path.is_dir():
        return path
    return path.parent if (path.parent / "config.yaml").is_file() else None


def default_output_paths(
    run_or_checkpoint: str | os.PathLike, split: str = "test", other: str | None = None
) -> tuple[Path, Path]:
    """Where :func:`evaluate` writes by default: (metrics JSON, confusion-matrix PNG).

    A run directory, or a model file inside one (beside its ``config.yaml``) or named
    ``model.safetensors``: ``<dir>/eval.json`` and ``<dir>/confusion_matrix.png``. Any other model file
    ``x.safetensors``: ``x.eval.json`` and ``x.confusion_matrix.png`` beside it. A split other than ``test``
    adds ``_<split>`` (``eval_train.json``) so it does not overwrite the test results; ``other``, a dataset
    other than the model's own, adds ``-<dataset>`` (``eval-mnist.json``, as for the other tasks).
    """
    p = Path(run_or_checkpoint).expanduser()
    tag = ("" if other is None else "-" + Path(str(other)).name.replace(":", "-")) + (
        "" if split == "test" else f"_{split}"
    )
    run_dir = _run_dir_of(p)
    if run_dir is not None or p.name == "model.safetensors":
        folder = run_dir or p.parent
        return folder / f"eval{tag}.json", folder / f"confusion_matrix{tag}.png"
    stem = p.with_suffix("")
    return Path(f"{stem}.eval{tag}.json"), Path(f"{stem}.confusion_matrix{tag}.png")


def _png_beside(out_json: Path) -> Path:
    stem = out_json.stem
    if stem.startswith("eval"):
        return out_json.with_name("confusion_matrix" + stem[len("eval") :] + ".png")
    return out_json.with_name(f"{stem}.confusion_matrix.png")


def _batches(dataset: Any, batch_size: int, size: tuple[int, int], num_workers: int):
    """(images float [0, 1], labels) batches in dataset order; images of any size are resized to ``size``."""
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if isinstance(data, Tensor) and isinstance(targets, Tensor) and len(data) == len(targets):
        for i in range(0, len(data), batch_size):
            yield data[i : i + batch_size], targets[i : i + batch_size]
        return

    def collate(items):
        xs = []
        for x, _ in items:
            x = torch.as_tensor(x)
            if x.dtype == torch.uint8:
                x = x.float().div_(255)
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(
                    x[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
                )[0]
            xs.append(x)
        return torch.stack(xs), torch.tensor([int(y) for _, y in items], dtype=torch.long)

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    yield from loader


def evaluate(
    run_or_checkpoint: str | os.PathLike,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    batch_size: int = 256,
    out_json: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    plot: bool = True,
    resize: bool = False,
) -> dict[str, Any]:
    """Evaluate a run directory or model file on ``dataset``/``split``; write and return the metrics.

    ``dataset`` defaults to the run's ``config.yaml`` ``dataset`` (for a model file inside a run directory
    too), else the model's ``data_config["dataset"]``; ``data_dir`` likewise defaults to the run's
    ``data_dir`` (then ``$VITKIT_DATA`` / ``./data``, see :func:`vitkit.data.resolve_data_dir`). Images are
    prepared as in training: converted to the model's channels, resized to its input size (bilinear,
    antialiased) and normalised with the data config's mean/std. Inference runs in batches under
    ``torch.inference_mode``. A dataset other than the model's own whose images all have another size (28x28
    MNIST for an 8x8 digits model) raises :class:`~vitkit.data.ImageSizeError` unless ``resize``.

    The result is :func:`~vitkit.metrics.classification_metrics` (class names from the model's data
    config) plus ``checkpoint``, ``dataset``, ``split``, ``eval_seconds``, ``images_per_s``, ``eval_json``
    and ``confusion_matrix_png``. It is written to ``out_json`` (default: :func:`default_output_paths`)
    with the confusion matrix PNG beside it (``plot=False`` skips the PNG).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    path = Path(run_or_checkpoint).expanduser()
    device = torch.device(device)
    model, data_config = load_for_inference(path, device=device)
    run_cfg = _read_run_config(_run_dir_of(path) if path.exists() else None)
    name, ds, other = _eval_dataset(path, dataset, data_dir, split, run_cfg, data_config, resize)
    start = time.perf_counter()
    logits, targets = _logits_and_targets(model, ds, data_config, batch_size, num_workers, device)
    seconds = time.perf_counter() - start

    classes = list(data_config["classes"])
    metrics = classification_metrics(logits, targets, classes)
    default_json, default_png = default_output_paths(path, split, name if other else None)
    out = Path(out_json).expanduser() if out_json is not None else default_json
    png = default_png if out_json is None else _png_beside(out)
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "dataset": name,
        "split": split,
        **metrics,
        "eval_seconds": round(seconds, 3),
        "images_per_s": round(metrics["num_samples"] / seconds, 1) if seconds > 0 else None,
        "eval_json": str(out),
        "confusion_matrix_png": str(png) if plot else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    from .weights.files import atomic_write

    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    if plot:
        plot_confusion_matrix(
            metrics["confusion_matrix"], classes, png,
            title=f"Confusion matrix: {name} {split}",
        )  # fmt: skip
    log.info("evaluated %s on %s/%s: top-1 %.4f -> %s", path, name, split, metrics["top1"], out)
    return result


def _eval_dataset(
    path: Path, dataset, data_dir, split: str, run_cfg: dict, data_config: dict, resize: bool = False
) -> tuple[str, Any, bool]:
    """(dataset name, dataset, whether it is another than the model's own) to evaluate on: the one named, else
    the run's, else the model's; its classes must be as many as the model's, and another dataset's images of
    the model's size unless ``resize``."""
    from .data import build_dataset, canonical_name, check_image_size

    own = run_cfg.get("dataset") or data_config.get("dataset")
    name = dataset or own
    if not name:
        raise ValueError(
            f"no dataset given and none recorded for {path} (no config.yaml, no data_config['dataset']); "
            "pass dataset=... (vitkit eval --data NAME)"
        )
    if data_dir is None:
        data_dir = run_cfg.get("data_dir")
    kw: dict[str, Any] = {"channels": int(data_config["in_chans"])}
    if run_cfg.get("on_bad_image"):
        kw["on_error"] = run_cfg["on_bad_image"]
    ds = build_dataset(name, split, data_dir=data_dir, **kw)
    if len(ds) == 0:
        raise ValueError(f"dataset {name!r} split {split!r} is empty")
    other = not own or canonical_name(str(name)) != canonical_name(str(own))
    if other:  # its own dataset is resized as in training
        check_image_size(ds, data_config.get("img_size"), name, resize)
    classes = list(data_config["classes"])
    ds_classes = [str(c) for c in getattr(ds, "classes", classes)]
    if len(ds_classes) != len(classes):
        raise ValueError(
            f"dataset {name!r} has {len(ds_classes)} classes but the model predicts {len(classes)} "
            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
        )
    if ds_classes != classes:
        warnings.warn(
            f"class names of dataset {name!r} differ from the model's; class indices are compared as they are "
            f"(dataset: {ds_classes[:5]}..., model: {classes[:5]}...)",
            stacklevel=3,
        )
    return name, ds, other


@torch.inference_mode()
def _logits_and_targets(model, ds, data_config: dict, batch_size: int, num_workers: int, device) -> tuple:
    """The model's logits and the labels over ``ds``, inputs prepared as in training (channels, size, mean/std)."""
    in_chans = int(data_config["in_chans"])
    size = tuple(int(s) for s in data_config["img_size"])
    mean = torch.tensor(data_config["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    all_logits, all_targets = [], []
    for x, y in _batches(ds, batch_size, size, num_workers):
        x = x.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        x = _match_channels(x.float(), in_chans)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        out = model((x - mean) / std)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        all_logits.append(logits.float().cpu())
        all_targets.append(torch.as_tensor(y).long().cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return torch.cat(all_logits), torch.cat(all_targets)


make_module_callable(__name__, "evaluate")
