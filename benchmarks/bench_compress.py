"""Compress one trained run with every method and print one table against the compression issue's targets.

Each method runs as ``vitkit compress RUN --method ...`` would (same code: ``vitkit.compress.run.compress_run``),
one after another, into ``RUN-bench-METHOD``; each row's speed-up is measured against the uncompressed model in
the same process (interleaved rounds, median), accuracy on the run's evaluation split.

    .venv/bin/python benchmarks/bench_compress.py runs/fmnist --data-dir ../shared/data
    .venv/bin/python benchmarks/bench_compress.py runs/fmnist --methods int8 tome --tome-r 8
    .venv/bin/python benchmarks/bench_compress.py runs/fmnist-p2 --methods tome --tome-r 24 28 32

Targets (Fashion-MNIST model, 2-core CPU): int8 >= 1.5x throughput and >= 3.5x smaller with <= 0.5 point loss;
pruning a third of the heads + a short fine-tune loses <= 1 point; ToMe >= 1.3x throughput with <= 1 point loss.
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

# method -> (minimum speed-up, minimum size ratio, maximum top-1 loss in points)
TARGETS = {
    "int8": (1.5, 3.5, 0.5),
    "prune": (None, None, 1.0),
    "tome": (1.3, None, 1.0),
    "lowrank": (None, None, None),
}


def _target_text(method: str) -> str:
    speed, size, loss = TARGETS[method]
    parts = [f">= {speed}x faster" if speed else "", f">= {size}x smaller" if size else "",
             f"<= {loss} pt loss" if loss is not None else ""]  # fmt: skip
    return ", ".join(p for p in parts if p) or "report"


def _met(method: str, row: dict, base: dict) -> bool:
    speed, size, loss = TARGETS[method]
    drop = 100 * (base["top1"] - row["top1"])
    return (
        (speed is None or row["speedup"] >= speed)
        and (size is None or row["size_ratio"] >= size)
        and (loss is None or drop <= loss)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory made by vitkit train")
    p.add_argument(
        "--methods", nargs="+", default=["int8", "prune", "tome", "lowrank"], choices=list(TARGETS)
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--heads", type=float, default=1 / 3, help="prune: fraction of heads removed")
    p.add_argument("--finetune-epochs", type=int, default=1, help="prune: fine-tune epochs")
    p.add_argument(
        "--tome-r",
        type=int,
        nargs="+",
        default=[8],
        help="tome: token pairs merged per block (several values: one row each)",
    )
    p.add_argument("--energy", type=float, default=0.95, help="lowrank: kept energy")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()

    from vitkit.compress.run import compress_run

    run = Path(args.run)
    kwargs = {
        "int8": {},
        "prune": {"heads": args.heads, "finetune_epochs": args.finetune_epochs},
        "lowrank": {"energy": args.energy},
    }
    jobs = []  # (row label, method, output suffix, compress_run kwargs); one ToMe row per --tome-r value
    for method in args.methods:
        if method != "tome":
            jobs.append((method, method, method, kwargs[method]))
            continue
        for r in args.tome_r:
            jobs.append(
                (f"tome r={r}", method, f"tome-r{r}" if len(args.tome_r) > 1 else "tome", {"tome_r": r})
            )
    rows = []
    for label, method, suffix, method_kwargs in jobs:
        report = compress_run(run, method, run.with_name(f"{run.name}-bench-{suffix}"), data_dir=args.data_dir,
                              progress=False, **method_kwargs)  # fmt: skip
        base, row = report["rows"]
        rows.append({"method": method, "label": label, "base": base, "row": row})
        print(f"{label}: {row['speedup']:.2f}x, {row['size_ratio']:.2f}x smaller, top-1 {row['top1']:.4f}",
              flush=True)  # fmt: skip

    print(f"\n{run} on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")  # fmt: skip
    print(
        "| method | params | file MB | smaller | GFLOPs | img/s | speed-up | top-1 | loss (pt) | target | met |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base, row = r["base"], r["row"]
        drop = 100 * (base["top1"] - row["top1"])
        print(
            f"| {r['label']} | {row['params'] / 1e6:.3f}M (of {base['params'] / 1e6:.3f}M) | {row['file_mb']:.2f} | "
            f"{row['size_ratio']:.2f}x | {row['gflops']:.4f} | {row['images_per_s']:.0f} (vs {base['images_per_s']:.0f}) | "
            f"{row['speedup']:.2f}x | {row['top1']:.4f} | {drop:+.2f} | {_target_text(r['method'])} | "
            f"{'yes' if _met(r['method'], row, base) else 'NO'} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
