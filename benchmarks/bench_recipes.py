"""Train the named recipes end to end and print what they reached: accuracy, time, model size, against targets.

Each recipe runs as ``vitkit train --recipe NAME`` would (same code path: ``vitkit.train.train``), one after
another so that each has the machine to itself, into ``--out-dir/NAME``; the run directories keep the curves,
confusion matrices, metrics.jsonl and checkpoints. ``--summarize DIR [DIR ...]`` only tabulates runs that
already exist (e.g. ones made with ``vitkit train``).

    .venv/bin/python benchmarks/bench_recipes.py --recipes digits                   # ~2.5 min on 2 cores
    .venv/bin/python benchmarks/bench_recipes.py --recipes fashion-mnist mnist --data-dir ../shared/data
    .venv/bin/python benchmarks/bench_recipes.py --summarize runs/fmnist runs/mnist

The targets are those of the training issue on a 2-core CPU: digits >= 97.5% in < 3 min, Fashion-MNIST >= 93.0%
in < 60 min, MNIST >= 99.3%; CIFAR-10 (the JPEG copy) reports the best reached in 60 min.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# recipe -> (minimum top-1, maximum minutes of training); None = report only
TARGETS = {
    "digits": (0.975, 3.0),
    "fashion-mnist": (0.930, 60.0),
    "mnist": (0.993, None),
    "cifar10-cpu": (None, 60.0),
}


def _row(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    recipe = cfg.get("recipe") or cfg["dataset"]
    top1, minutes = summary["val_acc"], summary["elapsed_s"] / 60
    lo, limit = TARGETS.get(recipe, (None, None))
    ok = (lo is None or top1 >= lo) and (limit is None or minutes <= limit)
    target = " and ".join(
        t for t in (f">= {lo:.1%}" if lo else "", f"<= {limit:.0f} min" if limit else "") if t
    )  # fmt: skip
    return {
        "recipe": recipe, "model": cfg["model"], "dataset": cfg["dataset"], "params_M": summary["params"] / 1e6,
        "epochs": summary["epochs"], "minutes": minutes, "top1": top1, "best_top1": summary["best_val_acc"],
        "target": target or "report", "met": ok if target else None, "run_dir": str(run_dir),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["digits"])
    p.add_argument("--summarize", nargs="+", type=Path, help="only tabulate these existing run directories")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "bench_recipes"))
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)

    if args.summarize:
        run_dirs = args.summarize
    else:
        from vitkit.train import train

        run_dirs = []
        for recipe in args.recipes:
            print(f"training recipe {recipe} ...", file=sys.stderr, flush=True)
            summary = train(recipe=recipe, data_dir=args.data_dir, out_dir=args.out_dir, name=recipe)
            run_dirs.append(Path(summary["run_dir"]))

    rows = [_row(Path(d)) for d in run_dirs]
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print()
    print("| recipe | model | params | epochs | train time | top-1 (final) | best epoch | target | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"| {r['recipe']} | {r['model']} | {r['params_M']:.3f}M | {r['epochs']} | {r['minutes']:.1f} min | "
              f"{r['top1']:.2%} | {r['best_top1']:.2%} | {r['target']} | {met} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
