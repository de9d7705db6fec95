"""Few-shot linear probes on frozen features: big_vision's few-shot evaluator for any vitkit image backbone.

Follows ``big_vision/evaluators/fewshot_lsr.py`` (config ``configs/common_fewshot.py``): the backbone's pre-logits
features are extracted once for the training split (the *pool*) and the test split; then for every seed and shot
count ``k``, ``k`` images per class are drawn from the pool, their features are standardised with that sample's
own mean and std (``+1e-5``), a constant feature ``100`` is appended for the bias (large, so it is almost
unregularised), and a closed-form ridge regression to ``{-1, +1}`` one-hot targets is fitted with a fixed l2
(``2**10``, big_vision's default). The test accuracy of the argmax is reported per ``(shots, seed)``, here also as
mean and spread over the seeds.

::

    from vitkit.fewshot import fewshot_eval
    r = fewshot_eval("runs/fmnist", "digits", shots=(1, 5, 10), seeds=5)
    print(r["accuracy"]["5"]["mean"], r["fewshot_json"])   # runs/fmnist/fewshot-digits/fewshot.json, .md, .png

Pieces: :func:`feature_extractor` (which features a model family gives), :func:`extract_features`,
:func:`sample_shots` (class-balanced, seeded), :func:`ridge_probe` / :func:`ridge_probes` (closed form),
:func:`fewshot_probe` (the cheap part: seeds x shots on precomputed features) and :func:`fewshot_eval` (the job).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._callable import make_module_callable

__all__ = [
    "BIAS_CONSTANT", "DEFAULT_L2", "DEFAULT_SHOTS", "FeatureFn", "feature_extractor", "register_feature_extractor",
    "extract_features", "sample_shots", "RidgeProbe", "ridge_probe", "ridge_probes", "fewshot_probe",
    "fewshot_eval", "format_fewshot_table",
]  # fmt: skip

log = logging.getLogger(__name__)

BIAS_CONSTANT = 100.0  # big_vision's constant bias feature
DEFAULT_L2 = 2.0**10  # big_vision's configs/common_fewshot.py l2_reg
DEFAULT_SHOTS = (1, 5, 10, 25)  # ibid.
STD_EPS = 1e-5  # added to the per-feature std, as big_vision

FeatureFn = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------- features
def _vit_pre_logits(vit: nn.Module) -> FeatureFn:
    return lambda x: vit.forward_head(vit.forward_features(x), pre_logits=True)


_EXTRACTORS: dict[str, Callable[[nn.Module], tuple[nn.Module, FeatureFn]]] = {
    "vit": lambda m: (m, _vit_pre_logits(m)),  # pooled, fc_norm'ed tokens: what the head sees
    "mae": lambda m: (m.encoder, _vit_pre_logits(m.encoder)),  # the encoder on every patch (no masking)
    "resnet": lambda m: (m, lambda x: m.forward_features(x).mean((2, 3))),  # global average pool
}


def register_feature_extractor(family: str, fn: Callable[[nn.Module], tuple[nn.Module, FeatureFn]]) -> None:
    """Teach :func:`feature_extractor` a model family: ``fn(model) -> (image backbone, images -> (B, D))``.

    The backbone is the module whose config gives the input size and channels (e.g. an MAE's encoder)."""
    _EXTRACTORS[family] = fn


def feature_extractor(model: nn.Module) -> tuple[nn.Module, FeatureFn]:
    """(image backbone, function: normalised images (B, C, H, W) -> features (B, D)) of ``model``.

    The features are big_vision's ``pre_logits``: a ViT's pooled and normalised tokens (``forward_head(...,
    pre_logits=True)``), an MAE's encoder's (all patches, no masking), a ResNet's globally pooled last stage; a
    family added with :func:`register_feature_extractor`; otherwise a model with ``encode_image`` (the CLIP /
    open_clip convention) gives its image embedding, and a timm-style model with ``forward_features`` and
    ``forward_head(pre_logits=True)`` its pre-logits. Raises ValueError for a model with no image features
    (text models, detectors, segmenters).
    """
    family = getattr(model, "family", None)
    if family in _EXTRACTORS:
        return _EXTRACTORS[family](model)
    if callable(getattr(model, "encode_image", None)):
        return model, model.encode_image
    if callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None)):
        return model, _vit_pre_logits(model)
    known = ", ".join(sorted(_EXTRACTORS))
    raise ValueError(
        f"{type(model).__name__} (family {family!r}) gives no pooled image features for a few-shot probe; it "
        f"takes an image backbone: {known}, a CLIP-style model with encode_image, or a timm-style classifier"
    )


@torch.inference_mode()
def extract_features(
    fn: FeatureFn, dataset: Any, data_config: dict[str, Any], batch_size: int = 256,
    device: str | torch.device = "cpu", num_workers: int = 0, desc: str = "features",
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(features (N, D) float32 on the CPU, labels (N,) int64) of every image of ``dataset``, in order.

    Images are prepared as :func:`vitkit.evaluate.evaluate` prepares them (the same code): converted to
    ``data_config["in_chans"]`` channels, resized to ``img_size`` (bilinear, antialiased) when their size differs,
    normalised with the data config's ``mean``/``std``. A progress bar shows on a terminal.
    """
    from tqdm.auto import tqdm

    from .evaluate import _logits_and_targets

    device = torch.device(device)
    bar = tqdm(total=len(dataset), desc=desc, unit="img", disable=not sys.stderr.isatty(), leave=False)

    def counted(x: Tensor) -> Tensor:
        out = fn(x)
        bar.update(len(x))
        return out

    try:
        feats, labels = _logits_and_targets(counted, dataset, data_config, batch_size, num_workers, device)
    finally:
        bar.close()
    if feats.ndim != 2:
        raise ValueError(f"the feature extractor gave shape {tuple(feats.shape)}; a probe needs (N, D)")
    return feats.float(), labels


# ---------------------------------------------------------------------------------------------- sampling
def sample_shots(
    labels: Tensor, k: int, seed: int, num_classes: int | None = None, classes: Sequence[str] | None = None
) -> Tensor:
    """Indices of exactly ``k`` examples of every class of ``labels`` (N,), class 0 first, drawn with ``seed``.

    As big_vision: one seeded random permutation of each class's examples, of which the first ``k`` are taken, so
    for a seed the ``k``-shot sample holds every smaller one. ``num_classes`` defaults to ``labels.max() + 1``;
    ``classes`` (names) only make errors readable. Raises ValueError when ``k < 1`` or a class has fewer than
    ``k`` examples (naming the class).
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"shots must be a positive integer, got {k!r}")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    g = torch.Generator().manual_seed(int(seed))
    picked = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if len(members) < k:
            name = f" ({classes[c]!r})" if classes is not None and c < len(classes) else ""
            raise ValueError(f"class {c}{name} has {len(members)} examples in the pool, fewer than {k} shots")
        picked.append(members[torch.randperm(len(members), generator=g)[: int(k)]])
    return torch.cat(picked)


# ---------------------------------------------------------------------------------------------- ridge probe
@dataclass
class RidgeProbe:
    """A fitted few-shot probe: ``logits = [(x - mean) / std, 100] @ weight``."""

    mean: Tensor  # (D,)
    std: Tensor  # (D,), std + 1e-5
    weight: Tensor  # (D + 1, C), the last row for the constant bias feature
    l2: float

    def logits(self, feats: Tensor) -> Tensor:
        """Features (N, D) -> scores (N, C) (float64)."""
        return _design(feats, self.mean, self.std) @ self.weight

    def predict(self, feats: Tensor) -> Tensor:
        """Features (N, D) -> predicted classes (N,)."""
        return self.logits(feats).argmax(dim=1)


def _design(feats: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    x = (feats.double() - mean) / std
    return torch.cat([x, x.new_full((len(x), 1), BIAS_CONSTANT)], dim=1)


def ridge_probes(
    feats: Tensor, labels: Tensor, l2s: Sequence[float], num_classes: int | None = None
) -> list[RidgeProbe]:
    """Closed-form ridge regressions of ``feats`` (N, D) to ``labels`` (N,), one per l2 in ``l2s``.

    big_vision's ``_precompute_cache``: features standardised with their own mean and std (+1e-5), a constant
    feature 100 appended, targets ``2 * one_hot - 1``; ``W = (X^T X + l2 I)^-1 X^T Y`` (primal, when N >= D + 1)
    or ``X^T (X X^T + l2 I)^-1 Y`` (dual, when N < D + 1: the smaller matrix), through one eigendecomposition
    that serves every l2. Computed in float64. Raises ValueError for an l2 <= 0 or mismatched shapes.
    """
    feats, labels = torch.as_tensor(feats), torch.as_tensor(labels, dtype=torch.long)
    if feats.ndim != 2 or labels.shape != (len(feats),):
        raise ValueError(
            f"features (N, D) and labels (N,) expected, got {tuple(feats.shape)}, {tuple(labels.shape)}"
        )
    bad = [v for v in l2s if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]
    if bad or not l2s:
        raise ValueError(f"l2 must be positive and finite, got {list(l2s)}")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    mean = feats.double().mean(0)
    std = feats.double().std(0, correction=0) + STD_EPS
    x = _design(feats, mean, std)
    y = 2.0 * nn.functional.one_hot(labels, num_classes).double() - 1.0
    if len(x) >= x.shape[1]:
        eigs, q = torch.linalg.eigh(x.T @ x)
        lhs, rhs = q, q.T @ (x.T @ y)
    else:
        eigs, q = torch.linalg.eigh(x @ x.T)
        lhs, rhs = x.T @ q, q.T @ y
    return [RidgeProbe(mean, std, (lhs / (eigs + float(l2))) @ rhs, float(l2)) for l2 in l2s]


def ridge_probe(
    feats: Tensor, labels: Tensor, l2: float = DEFAULT_L2, num_classes: int | None = None
) -> RidgeProbe:
    """One closed-form ridge probe (see :func:`ridge_probes`)."""
    return ridge_probes(feats, labels, [l2], num_classes)[0]


# ---------------------------------------------------------------------------------------------- evaluation
def _spread(values: list[float]) -> dict[str, Any]:
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std(correction=1)) if len(t) > 1 else 0.0
    return {
        "mean": float(t.mean()),
        "std": std,
        "min": float(t.min()),
        "max": float(t.max()),
        "per_seed": values,
    }


def fewshot_probe(
    train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
    shots: Sequence[int] = DEFAULT_SHOTS, seeds: int | Sequence[int] = 5, l2: float | Sequence[float] = DEFAULT_L2,
    num_classes: int | None = None, classes: Sequence[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Few-shot test accuracies from precomputed features: for every seed and shot count, :func:`sample_shots`
    from the pool then :func:`ridge_probes` (one eigendecomposition for all l2 values).

    ``seeds``: a count (seeds ``0..n-1``, as big_vision) or the seeds. ``l2``: one value or several, the first
    being the one reported. Returns ``{"shots", "seeds", "l2", "num_classes", "chance", "accuracy": {str(k):
    {"mean", "std" (over seeds, n-1), "min", "max", "per_seed"}}, "l2_sweep": {str(l2): {str(k): mean}}}``.
    """
    shots = [int(k) for k in shots]
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    l2s = [float(v) for v in (l2 if isinstance(l2, Sequence) else [l2])]
    if not shots or not seeds:
        raise ValueError(f"at least one shot count and one seed are needed, got shots {shots}, seeds {seeds}")
    num_classes = int(train_labels.max()) + 1 if num_classes is None else int(num_classes)
    test_labels = torch.as_tensor(test_labels, dtype=torch.long)
    acc: dict[float, dict[int, list[float]]] = {v: {k: [] for k in shots} for v in l2s}
    for seed in seeds:
        for k in shots:
            idx = sample_shots(train_labels, k, seed, num_classes, classes)
            for probe in ridge_probes(train_feats[idx], train_labels[idx], l2s, num_classes):
                hits = probe.predict(test_feats) == test_labels
                acc[probe.l2][k].append(float(hits.double().mean()))
    main = acc[l2s[0]]
    return {
        "shots": shots, "seeds": seeds, "l2": l2s[0], "num_classes": num_classes, "chance": 1.0 / num_classes,
        "accuracy": {str(k): _spread(main[k]) for k in shots},
        "l2_sweep": {f"{v:g}": {str(k): _spread(acc[v][k])["mean"] for k in shots} for v in l2s},
    }  # fmt: skip


def format_fewshot_table(result: dict[str, Any]) -> str:
    """The few-shot result as a markdown table: one row per shot count, mean ± std over the seeds, min, max."""
    n = len(result["seeds"])
    lines = [
        f"| shots | accuracy (mean ± std, {n} seed{'s' if n > 1 else ''}) | min | max |",
        "|---|---|---|---|",
    ]
    for k in result["shots"]:
        a = result["accuracy"][str(k)]
        lines.append(f"| {k} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f}% | {100 * a['min']:.2f}% | "
                     f"{100 * a['max']:.2f}% |")  # fmt: skip
    lines.append(f"| chance | {100 * result['chance']:.2f}% (1/{result['num_classes']}) | | |")
    if len(result["l2_sweep"]) > 1:
        lines += ["", "| l2 | " + " | ".join(f"{k}-shot" for k in result["shots"]) + " |",
                  "|---|" + "---|" * len(result["shots"])]  # fmt: skip
        for l2, row in result["l2_sweep"].items():
            lines.append(
                f"| {l2} | " + " | ".join(f"{100 * row[str(k)]:.2f}%" for k in result["shots"]) + " |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the job
def _load_model(source: str | os.PathLike, pretrained: str | os.PathLike | None, device: torch.device):
    """(model in eval mode, folder its outputs go beside by default) of a run directory, a model file, or a
    registry name (``pretrained``: the weights file, else random weights, seeded)."""
    from .registry import create_model, list_models
    from .tasks.inference import model_file
    from .weights import load

    path = Path(source).expanduser()
    if pretrained is not None or (not path.exists() and str(source) in list_models()):
        if str(source) not in list_models():
            raise ValueError(f"{str(source)!r} is not a registry model (vitkit models lists them)")
        if pretrained is None:
            log.warning(
                "%s: no --pretrained weights, the features are those of random weights (seed 0)", source
            )
            torch.manual_seed(0)
        model = create_model(str(source), pretrained=None if pretrained is None else str(pretrained))
        folder = Path(pretrained).expanduser().parent if pretrained is not None else Path(".")
        return model.to(device).eval(), folder
    file = model_file(path)
    return load(file, device=device).eval(), file.parent


def _input_config(model: nn.Module, backbone: nn.Module, source: str) -> dict[str, Any]:
    """The model's preprocessing (input size, channels, mean/std) from its data config and the backbone's config
    (:func:`vitkit.predict.resolve_data_config`); its class names play no part in a probe."""
    from .predict import resolve_data_config

    recorded = {k: v for k, v in (getattr(model, "data_config", None) or {}).items() if k != "classes"}
    return resolve_data_config(backbone, recorded or None, source=source, need_classes=False)


def _splits(name: str, data_dir, in_chans: int, pool_limit: int | None, test_limit: int | None,
            splits: tuple[str, str]) -> tuple[Any, Any]:  # fmt: skip
    """The pool (train split) and test datasets, class-balanced subsets of them (seed 0) when limited."""
    from .data import build_dataset, stratified_subset

    out = []
    for split, limit in zip(splits, (pool_limit, test_limit), strict=True):
        ds = build_dataset(name, split, data_dir=data_dir, channels=in_chans)
        if len(ds) == 0:
            raise ValueError(f"dataset {name!r} split {split!r} is empty")
        if not getattr(ds, "classes", None):
            raise ValueError(f"dataset {name!r} has no classes: a few-shot probe needs labelled images")
        if limit is not None and limit < len(ds):
            ds = stratified_subset(ds, int(limit), seed=0)
        out.append(ds)
    if len(out[0].classes) != len(out[1].classes):
        raise ValueError(
            f"{name!r}: {len(out[0].classes)} classes in {splits[0]}, {len(out[1].classes)} in {splits[1]}"
        )
    return out[0], out[1]


def _default_out_dir(folder: Path, dataset: str) -> Path:
    return folder / f"fewshot-{Path(str(dataset)).name.replace(':', '-')}"


def _write_outputs(result: dict[str, Any], out: Path, plot: bool) -> None:
    from .plots import plot_fewshot
    from .weights.files import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    files = {"fewshot_json": out / "fewshot.json", "fewshot_md": out / "fewshot.md"}
    if plot:
        files["fewshot_png"] = out / "fewshot.png"
    result.update({k: str(v) for k, v in files.items()})
    head = (f"# Few-shot linear probe: {result['model']} on {result['dataset']}\n\n"
            f"{result['feature_dim']}-d features ({result['features']}), pool {result['pool_size']} "
            f"{result['train_split']} images, {result['test_size']} {result['test_split']} images, "
            f"ridge l2 {result['l2']:g}, seeds {result['seeds']}\n\n")  # fmt: skip
    atomic_write(
        files["fewshot_md"], lambda t: Path(t).write_text(head + format_fewshot_table(result) + "\n")
    )
    atomic_write(files["fewshot_json"], lambda t: Path(t).write_text(json.dumps(result, indent=2) + "\n"))
    if plot:
        curve = {result["model"]: result}
        plot_fewshot(curve, files["fewshot_png"], title=f"{result['dataset']}: {len(result['seeds'])} seeds")


def fewshot_eval(
    source: str | os.PathLike, dataset: str, data_dir: str | os.PathLike | None = None,
    shots: Sequence[int] = DEFAULT_SHOTS, seeds: int | Sequence[int] = 5, l2: float | Sequence[float] = DEFAULT_L2,
    pretrained: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
    pool_limit: int | None = None, test_limit: int | None = None, splits: tuple[str, str] = ("train", "test"),
    batch_size: int = 256, device: str | torch.device = "cpu", num_workers: int = 0, plot: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Few-shot accuracy of a frozen backbone on ``dataset``: features once, then :func:`fewshot_probe`.

    ``source``: a run directory, a model file, or a registry name (with ``pretrained``, a weights file any
    :func:`vitkit.load_pretrained` reads). Images are prepared with the model's own preprocessing (its data
    config: channels, input size, mean/std; see :func:`extract_features`). ``pool_limit`` / ``test_limit``: a
    class-balanced subset (seed 0) of the train / test split. Writes ``fewshot.json``, ``fewshot.md`` (the table)
    and ``fewshot.png`` (accuracy against shots, log scale, error bars of one std) to ``out_dir`` (default:
    ``fewshot-<dataset>/`` beside the model) and returns the :func:`fewshot_probe` result with where it came from
    (``model``, ``dataset``, sizes, ``feature_dim``, ``feature_seconds``, ``probe_seconds``) and the file paths.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    model, folder = _load_model(source, pretrained, device)
    backbone, fn = feature_extractor(model)
    data_config = _input_config(model, backbone, str(source))
    pool, test = _splits(dataset, data_dir, int(data_config["in_chans"]), pool_limit, test_limit, splits)
    start = time.perf_counter()
    pool_x, pool_y = extract_features(
        fn, pool, data_config, batch_size, device, num_workers, f"{splits[0]} features"
    )
    test_x, test_y = extract_features(
        fn, test, data_config, batch_size, device, num_workers, f"{splits[1]} features"
    )
    feature_seconds = time.perf_counter() - start
    start = time.perf_counter()
    probe = fewshot_probe(pool_x, pool_y, test_x, test_y, shots, seeds, l2, len(pool.classes), pool.classes)
    result: dict[str, Any] = {
        "model": str(source), "pretrained": None if pretrained is None else str(pretrained),
        "family": getattr(model, "family", type(model).__name__), "dataset": dataset,
        "train_split": splits[0], "test_split": splits[1], "pool_size": len(pool), "test_size": len(test),
        "classes": list(pool.classes), "feature_dim": int(pool_x.shape[1]), "features": _feature_name(model),
        "input": {k: data_config[k] for k in ("img_size", "in_chans", "mean", "std")},
        "dataset_image_size": list(getattr(pool, "image_size", None) or []) or None,
        **probe,
        "feature_seconds": round(feature_seconds, 2), "probe_seconds": round(time.perf_counter() - start, 3),
    }  # fmt: skip
    out = Path(out_dir).expanduser() if out_dir is not None else _default_out_dir(folder, dataset)
    _write_outputs(result, out, plot)
    log.debug(
        "few-shot %s on %s: %s",
        source,
        dataset,
        {k: round(v["mean"], 4) for k, v in result["accuracy"].items()},
    )
    return result


def _feature_name(model: nn.Module) -> str:
    family = getattr(model, "family", None)
    return {"vit": "ViT pre-logits", "mae": "MAE encoder pre-logits", "resnet": "ResNet pooled features"}.get(
        family or "", f"{type(model).__name__} image features"
    )


make_module_callable(__name__, "fewshot_eval")
