"""Few-shot accuracy of frozen backbones (issue 22): 1/5/10/25 images per class, 5 seeds, big_vision's ridge probe.

Every backbone is probed on every dataset of ``--datasets`` with ``vitkit.fewshot.fewshot_eval`` (features once,
then a closed-form ridge regression per seed and shot count). Backbones are given as ``--source LABEL=PATH`` (a
run directory or a model file: a ViT, an MAE pre-training run, a CLIP/LiT model, ...); ``LABEL=PATH@DATASET``
probes it on that dataset only. ``--scratch-epochs N`` first trains (a), a ViT from scratch on each dataset with
its CPU recipe cut to N epochs on ``--scratch-subset`` images, and probes it on the *other* datasets.

Results accumulate in ``--json`` (default ``benchmarks/results/fewshot.json``): a (label, dataset) already there
is not run again unless ``--redo``, so backbones can be added one at a time; the markdown table (``--table``) and
one PNG per dataset (``--plot-dir``) are drawn from everything in the JSON.

    # (a) + (b) + (c) on the full splits (hours on a 2-core CPU: mostly the CIFAR-10 pool's features)
    .venv/bin/python benchmarks/bench_fewshot.py --data-dir ../shared/data --scratch-epochs 12 \\
        --source "MAE encoder (Fashion-MNIST, issue 4)=runs/bench-mae/pretrain" \\
        --source "LiT image tower=runs/lit"
    # a cheap check: short scratch runs, 5,000-image pools, 2,000 test images
    .venv/bin/python benchmarks/bench_fewshot.py --data-dir ../shared/data --scratch-epochs 1 \\
        --scratch-subset 10000 --pool-limit 5000 --test-limit 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SCRATCH_RECIPES = {"fashion-mnist": "fashion-mnist", "cifar10-jpeg": "cifar10-cpu", "digits": "digits"}
NAMES = {"fashion-mnist": "Fashion-MNIST", "cifar10-jpeg": "CIFAR-10 (JPEG)", "digits": "digits"}


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _parse_source(text: str, datasets: list[str]) -> tuple[str, str, list[str]]:
    """``LABEL=PATH[@DATASET,...]`` -> (label, path, datasets to probe on)."""
    if "=" not in text:
        raise SystemExit(f"--source wants LABEL=PATH[@DATASET,...], got {text!r}")
    label, path = text.split("=", 1)
    only = datasets
    if "@" in path:
        path, names = path.rsplit("@", 1)
        only = [n for n in names.split(",") if n]
    if not Path(path).exists():
        raise SystemExit(f"--source {label!r}: no run directory or model file at {path}")
    return label.strip(), path, only


def _train_scratch(args: argparse.Namespace, dataset: str) -> Path:
    """(a): a ViT trained from scratch on ``dataset`` (its CPU recipe, shortened); reused when already trained."""
    from vitkit.train import train

    subset = f"{args.scratch_subset:g}" if args.scratch_subset else "all"
    name = f"scratch-{dataset}-{args.scratch_epochs}ep-{subset}"
    run = args.out_dir / name
    if (run / "summary.json").exists():
        print(f"[{name}] already trained, reusing {run}", flush=True)
        return run
    print(f"[{name}] training ...", flush=True)
    extra = {"train_subset": args.scratch_subset} if args.scratch_subset else {}
    summary = train(SCRATCH_RECIPES[dataset], data_dir=args.data_dir, epochs=args.scratch_epochs,
                    out_dir=str(args.out_dir), name=name, progress=False, threads=args.threads, seed=0,
                    eval_every=args.scratch_epochs, **extra)  # fmt: skip
    print(
        f"[{name}] val_acc {summary.get('val_acc', float('nan')):.4f} in {summary['elapsed_s']:.0f} s",
        flush=True,
    )
    return run


def _jobs(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(label, source, dataset) to probe."""
    jobs = []
    if args.scratch_epochs:
        for trained_on in args.datasets:
            run = _train_scratch(args, trained_on)
            label = f"ViT from scratch on {NAMES.get(trained_on, trained_on)}"
            jobs += [(label, str(run), d) for d in args.datasets if d != trained_on]
    for text in args.source:
        label, path, only = _parse_source(text, args.datasets)
        jobs += [(label, path, d) for d in only]
    return jobs


def _source_note(source: str) -> str:
    """What the source run was trained on and how well (its summary.json), for the table; empty for a bare file."""
    path = Path(source)
    summary = (path if path.is_dir() else path.parent) / "summary.json"
    if not summary.is_file():
        return ""
    s = json.loads(summary.read_text())
    cfg = path if path.is_dir() else path.parent
    data = ""
    if (cfg / "config.yaml").is_file():
        import yaml

        data = f" {(yaml.safe_load((cfg / 'config.yaml').read_text()) or {}).get('dataset', '')}"
    note = f"{s.get('task', '?')}{data}, {s.get('epochs', '?')} ep on {s.get('train_samples', '?')} images"
    if isinstance(s.get("val_acc"), (int, float)):
        note += f", own test acc {100 * s['val_acc']:.2f}%"
    return note


def _table(entries: dict[str, dict]) -> str:
    """One markdown table per dataset: a row per backbone, mean ± std over the seeds per shot count."""
    out = []
    for dataset in sorted({e["dataset"] for e in entries.values()}):
        rows = [e for e in entries.values() if e["dataset"] == dataset]
        shots = sorted({k for e in rows for k in e["shots"]})
        out += [f"### {NAMES.get(dataset, dataset)} (chance {100 * rows[0]['chance']:.1f}%)", "",
                "| backbone | trained | features | pool / test | " + " | ".join(f"{k}-shot" for k in shots)
                + " | features s |", "|---|---|---|---|" + "---|" * len(shots) + "---|"]  # fmt: skip
        for e in rows:
            cells = []
            for k in shots:
                a = e["accuracy"].get(str(k))
                cells.append(f"{100 * a['mean']:.2f} ± {100 * a['std']:.2f}" if a else "")
            feats = f"{e['feature_dim']}-d, {e['input']['img_size'][0]}px {e['input']['in_chans']}ch"
            out.append(f"| {e['label']} | {e.get('source_note', '')} | {feats} | {e['pool_size']} / {e['test_size']} | " + " | ".join(cells)
                       + f" | {e['feature_seconds']:.0f} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def _write(entries: dict[str, dict], args: argparse.Namespace) -> str:
    """Write the JSON, the PNGs and the markdown; returns the markdown."""
    from vitkit.plots import plot_fewshot

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(entries, indent=2) + "\n")
    seeds = sorted({len(e["seeds"]) for e in entries.values()})
    lines = [
        "# Few-shot linear probes (issue 22)", "",
        f"torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s). big_vision's few-shot "
        f"evaluator: pre-logits features, k images per class drawn per seed, standardised, closed-form ridge "
        f"regression to ±1 one-hot targets (l2 {entries[next(iter(entries))]['l2']:g}), test accuracy as mean ± "
        f"std (%) over {'/'.join(map(str, seeds))} seeds. Images get each model's own preprocessing (channels "
        f"converted, resized to its input size). \"trained\": the backbone's own run (its summary.json).", "",
        "Produced by `benchmarks/bench_fewshot.py` with:", "",
        *sorted({f"    python benchmarks/bench_fewshot.py {e.get('command', '?')}" for e in entries.values()}), "",
        _table(entries),
    ]  # fmt: skip
    args.plot_dir.mkdir(parents=True, exist_ok=True)
    for dataset in sorted({e["dataset"] for e in entries.values()}):
        curves = {e["label"]: e for e in entries.values() if e["dataset"] == dataset}
        png = args.plot_dir / f"fewshot_{dataset}.png"
        plot_fewshot(curves, png, title=f"{NAMES.get(dataset, dataset)}: few-shot ridge probes")
        lines.append(f"![{dataset}]({os.path.relpath(png, args.table.parent)})")
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder with the datasets (default: VITKIT_DATA)")
    p.add_argument("--datasets", type=lambda s: [d for d in s.split(",") if d],
                   default=["fashion-mnist", "cifar10-jpeg"])  # fmt: skip
    p.add_argument("--source", action="append", default=[], help="LABEL=PATH[@DATASET,...] (repeatable)")
    p.add_argument("--scratch-epochs", type=int, default=0, help="(a): train a ViT per dataset for N epochs")
    p.add_argument(
        "--scratch-subset", type=float, default=None, help="(a): training images (count or fraction)"
    )
    p.add_argument("--shots", type=_int_list, default=[1, 5, 10, 25])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--l2", type=float, default=2.0**10)
    p.add_argument("--pool-limit", type=int, default=None, help="class-balanced subset of each train split")
    p.add_argument("--test-limit", type=int, default=None, help="class-balanced subset of each test split")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--out-dir", type=Path, default=Path("runs/bench-fewshot"), help="scratch runs, probe outputs"
    )
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/fewshot.json")
    p.add_argument("--table", type=Path, default=ROOT / "benchmarks/results/fewshot.md")
    p.add_argument("--plot-dir", type=Path, default=ROOT / "benchmarks/results")
    p.add_argument("--redo", action="store_true", help="probe again what the JSON already holds")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()

    from vitkit.fewshot import fewshot_eval

    entries = json.loads(args.json.read_text()) if args.json.exists() else {}
    for label, source, dataset in _jobs(args):
        key = f"{label} | {dataset}"
        if key in entries and not args.redo:
            print(f"[{key}] already measured", flush=True)
            continue
        start = time.perf_counter()
        r = fewshot_eval(source, dataset, data_dir=args.data_dir, shots=args.shots, seeds=args.seeds, l2=args.l2,
                         out_dir=args.out_dir / "probes" / f"{Path(source).name}-{dataset}",
                         pool_limit=args.pool_limit, test_limit=args.test_limit)  # fmt: skip
        entries[key] = {"label": label, "source": source, "source_note": _source_note(source), **r,
                        "wall_s": round(time.perf_counter() - start, 1), "command": shlex.join(sys.argv[1:])}  # fmt: skip
        print(f"[{key}] " + ", ".join(f"{k}-shot {100 * v['mean']:.2f}%" for k, v in r["accuracy"].items()),
              flush=True)  # fmt: skip
        _write(entries, args)  # after every probe: a stopped benchmark keeps what it measured
    if entries:
        print(_write(entries, args))


if __name__ == "__main__":
    main()
