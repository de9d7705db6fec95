"""Load + fault run of `vitkit serve` on loopback, with dynamic batching on and off.

For each mode it starts the real server (``python -m vitkit serve``, uvicorn, in a subprocess, with the limits of
:class:`serve_faults.Limits`), sends ``--requests`` correct image uploads from ``--concurrency`` client threads
and, beside them, the 47 fault cases of ``serve_faults.py`` (hostile and odd input: bombs, broken files,
stalled and cut bodies, lying lengths, wrong routes...), ``--fault-threads`` at a time, while a thread polls
``/health``. The load goes on past ``--requests`` until the fault suite has run once (the suite runs again while
the load lasts), so the good requests' latencies are those of a server under faults; ``--time-limit`` bounds
each mode. Every good answer is checked against ``vitkit.predict``, every fault answer against its expected
status and the ``{"error": ...}`` shape. It prints a table (good requests, req/s, their p50/p99 latency,
errors, wrong answers, fault requests sent and failed, /health's worst latency, the server's RSS at start, end
and peak) and a FAIL line for every fault case answered otherwise than expected (a 5xx included), every good
request refused or answered wrongly, and a server that died; it exits 1 if there is any.

    .venv/bin/python benchmarks/bench_serve.py runs/fmnist-final --requests 400 --concurrency 16
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

import serve_faults as sf  # noqa: E402


def _images(n: int, size: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _load(
    client, url: str, images: list[bytes], expected: list[int], faults_done: threading.Event, args
) -> dict:
    """Good uploads from ``args.concurrency`` threads, at least ``args.requests`` and on until the fault suite has
    run once (within ``args.time_limit``): latencies, refusals, wrong classes."""
    deadline, numbers, lock = time.time() + args.time_limit, itertools.count(), threading.Lock()

    def one(i: int) -> tuple[float, int | str]:
        start = time.perf_counter()
        try:
            r = client.post(
                url + "/predict", files={"file": (f"{i}.png", images[i % len(images)], "image/png")}
            )
        except Exception as e:  # noqa: BLE001  (a refused connection is an error of the run, not of the bench)
            return time.perf_counter() - start, type(e).__name__
        seconds = time.perf_counter() - start
        if r.status_code != 200:
            return seconds, r.status_code
        return seconds, "ok" if r.json()["top"][0]["index"] == expected[i % len(images)] else "wrong"

    def client_thread() -> list[tuple[float, int | str]]:
        out = []
        while time.time() < deadline:
            with lock:
                i = next(numbers)
            if i >= args.requests and faults_done.is_set():
                return out
            out.append(one(i))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        done = [r for rs in pool.map(lambda _: client_thread(), range(args.concurrency)) for r in rs]
    wall = time.perf_counter() - start
    q = statistics.quantiles([dt for dt, _ in done], n=100) if len(done) > 1 else [float("nan")] * 99
    errors = [what for _, what in done if what not in ("ok", "wrong")]
    return {"requests": len(done), "rps": len(done) / wall, "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98],
            "wrong": sum(what == "wrong" for _, what in done), "errors": len(errors),
            "error_kinds": sorted({str(e) for e in errors})}  # fmt: skip


def _faults(
    target: sf.Target, once: threading.Event, load_done: threading.Event, threads: int
) -> list[sf.Result]:
    """The fault suite, once (then ``once`` is set) and again as long as the load runs."""
    results: list[sf.Result] = []
    while True:
        results += sf.run_cases(target, threads=threads)
        once.set()
        if load_done.is_set():
            return results


def run_mode(run: str, batching: bool, images: list[bytes], expected: list[int], args) -> dict:
    import httpx

    limits = sf.Limits()
    port = args.port or sf.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = sf.start_server(run, port, limits, "--batching" if batching else "--no-batching",
                           "--batch-wait-ms", str(args.batch_wait_ms))  # fmt: skip
    try:
        sf.wait_ready(url, proc, timeout=120)
        with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=args.concurrency)) as client:
            client.post(url + "/predict", files={"file": ("w.png", images[0], "image/png")})  # warm-up
            rss_start = sf.rss_mb(proc.pid)
            faults_once, load_done = threading.Event(), threading.Event()
            with httpx.Client() as fault_client, sf.HealthProbe(url) as probe, ThreadPoolExecutor(1) as bg:
                target = sf.Target("127.0.0.1", port, limits, fault_client)
                faults = bg.submit(_faults, target, faults_once, load_done, args.fault_threads)
                load = _load(client, url, images, expected, faults_once, args)
                load_done.set()
                fault_results = faults.result()
            alive = proc.poll() is None
            rss_end, rss_peak = (sf.rss_mb(proc.pid), sf.rss_mb(proc.pid, "VmHWM")) if alive else (0.0, 0.0)
    finally:
        log = sf.stop_server(proc)
    return {"batching": batching, **load, "faults": fault_results, "alive": alive, "rss_start": rss_start,
            "rss_end": rss_end, "rss_peak": rss_peak, "health_max_ms": 1000 * max(probe.latencies, default=0),
            "health_polls": len(probe.latencies), "health_failures": probe.failures, "log": log}  # fmt: skip


def report(run: str, rows: list[dict], args) -> int:
    """Print the table and the FAIL lines; the number of failures."""
    print(f"\n{run}, {args.concurrency} concurrent clients + the fault suite ({len(sf.cases())} cases, "
          f"{args.fault_threads} at a time, repeated while the load runs), loopback\n")  # fmt: skip
    print("| batching | good requests | req/s | p50 ms | p99 ms | errors | wrong | fault requests | fault FAILs "
          "| /health max ms (polls) | RSS start / end / peak MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    fails = []
    for r in rows:
        mode = "on" if r["batching"] else "off"
        bad = [f for f in r["faults"] if f.problem]
        fails += [f"FAIL batching {mode}: {f.case.name}: {f.problem}" for f in bad]
        if r["errors"] or r["wrong"]:
            fails.append(f"FAIL batching {mode}: {r['errors']} good requests refused ({r['error_kinds']}), "
                         f"{r['wrong']} answered wrongly")  # fmt: skip
        if not r["alive"]:
            fails.append(f"FAIL batching {mode}: the server died:\n{r['log'][-3000:]}")
        if r["health_failures"]:
            fails.append(f"FAIL batching {mode}: /health failed {r['health_failures'][:5]}")
        print(f"| {mode} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} "
              f"| {r['wrong']} | {len(r['faults'])} | {len(bad)} | {r['health_max_ms']:.0f} ({r['health_polls']}) "
              f"| {r['rss_start']:.0f} / {r['rss_end']:.0f} / {r['rss_peak']:.0f} |")  # fmt: skip
    print()
    for line in fails:
        print(line)
    print(f"{len(fails)} failures" if fails else "no failures: every fault case got its expected answer")
    return len(fails)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory or model .safetensors")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--fault-threads", type=int, default=2, help="fault cases sent at a time")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds of load per mode")
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    args = p.parse_args()

    from PIL import Image

    import vitkit

    images = _images(64, 28)
    expected = [
        r["top"][0]["index"] for r in vitkit.predict(args.run, [Image.open(io.BytesIO(b)) for b in images])
    ]
    rows = [run_mode(args.run, b, images, expected, args) for b in (False, True)]
    return 1 if report(args.run, rows, args) else 0


if __name__ == "__main__":
    raise SystemExit(main())
