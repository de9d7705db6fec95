"""The main job beside busy processes: wall time per thread setting (issue 24's oversubscription table).

Runs ``vitkit train`` (the digits recipe, shortened with ``--epochs``) as a user does, in a fresh process each
time, quiet and beside 1 and 2 busy background processes (each a single-threaded Python loop that never sleeps,
started 3 s before the run), with the default thread policy and with ``--threads 1`` and ``--threads 2``. Prints a
markdown table of wall seconds (start-up included), the ratio to the quiet default run, the threads the default
chose (from the run's start-up line) and the final val top-1; writes ``benchmarks/results/threads.md`` with
``--write``.

    .venv/bin/python benchmarks/threads.py                      # ~6 min on 2 cores with --epochs 8
    .venv/bin/python benchmarks/threads.py --epochs 150 --write # the whole main job (~30 min)

Run it on an otherwise quiet machine: the background load is the benchmark's own.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VITKIT = str(Path(sys.executable).with_name("vitkit"))
BUSY = "while True: pass"


def run_once(epochs: int, threads: str, busy: int, out_dir: str) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        time.sleep(3.0 if busy else 0.0)
        cmd = [VITKIT, "train", "--epochs", str(epochs), "--no-progress", "--out-dir", out_dir]
        if threads != "default":
            cmd += ["--threads", threads]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        wall = time.perf_counter() - start
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    text = out.stdout + out.stderr
    chosen = re.search(r" on cpu, (\d+) thread", text)
    top1 = re.search(r"val top-1: ([0-9.]+)", text)
    return {
        "wall": wall,
        "chosen": chosen.group(1) if chosen else "?",
        "top1": float(top1.group(1)) if top1 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--busy", default="0,1,2", help="background busy processes, comma-separated counts")
    parser.add_argument("--threads", default="default,1,2")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/threads.md")
    args = parser.parse_args()

    rows, quiet = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (int(b) for b in args.busy.split(",")):
            for threads in args.threads.split(","):
                r = run_once(args.epochs, threads, busy, tmp)
                if busy == 0 and threads == "default":
                    quiet = r["wall"]
                rows.append((busy, threads, r))
                print(f"busy {busy}  threads {threads:7s} {r['wall']:6.1f} s  (chose {r['chosen']})  top-1 {r['top1']}",
                      flush=True)  # fmt: skip
    lines = [
        f"`vitkit train --epochs {args.epochs} --no-progress` (digits recipe), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; wall seconds of the whole command.",
        "",
        "| busy processes | --threads | wall s | vs quiet default | threads used | val top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for busy, threads, r in rows:
        ratio = f"{r['wall'] / quiet:.2f}x" if quiet else "-"
        lines.append(f"| {busy} | {threads} | {r['wall']:.1f} | {ratio} | {r['chosen']} | {r['top1']} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.write:
        (ROOT / "benchmarks" / "results" / "threads.md").write_text(
            f"# Threads beside busy processes\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
