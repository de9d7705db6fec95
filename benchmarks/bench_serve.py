"""Load test of `vitkit serve` on loopback: requests/s and latency with dynamic batching on vs off.

For each mode it starts the real server (uvicorn, in a subprocess), sends ``--requests`` image uploads from
``--concurrency`` client threads (bounded by ``--time-limit`` seconds), checks that every answer is the class
``vitkit.predict`` gives for that image, and prints a table: requests/s, p50/p99 latency, wrong and failed
answers.

    .venv/bin/python benchmarks/bench_serve.py runs/fmnist-final --requests 400 --concurrency 16
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _images(n: int, size: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _wait_ready(client, url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if client.get(url + "/health").status_code == 200:
                return
        except Exception:  # noqa: BLE001  (not listening yet)
            time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def run_mode(run: str, batching: bool, port: int, images: list[bytes], expected: list[int], args) -> dict:
    import httpx

    cmd = [sys.executable, "-m", "vitkit.cli", "serve", run, "--port", str(port),
           "--batching" if batching else "--no-batching", "--batch-wait-ms", str(args.batch_wait_ms)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    latencies, wrong, failed = [], 0, 0
    try:
        with httpx.Client(timeout=60) as client:
            _wait_ready(client, url, proc)
            client.post(url + "/predict", files={"file": ("w.png", images[0], "image/png")})  # warm-up
            deadline = time.time() + args.time_limit

            def one(i: int) -> tuple[float, int | None]:
                if time.time() > deadline:
                    return -1.0, None
                t = time.perf_counter()
                r = client.post(
                    url + "/predict", files={"file": (f"{i}.png", images[i % len(images)], "image/png")}
                )
                dt = time.perf_counter() - t
                return dt, (r.json()["top"][0]["index"] if r.status_code == 200 else -1)

            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(10)
    done = [(i, dt, top) for i, (dt, top) in enumerate(results) if top is not None]
    for i, dt, top in done:
        latencies.append(dt)
        if top == -1:
            failed += 1
        elif top != expected[i % len(images)]:
            wrong += 1
    q = statistics.quantiles(latencies, n=100)
    return {"batching": batching, "requests": len(done), "rps": len(done) / wall, "p50_ms": 1000 * q[49],
            "p99_ms": 1000 * q[98], "wrong": wrong, "failed": failed}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory or model .safetensors")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per mode")
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--port", type=int, default=8791)
    args = p.parse_args()

    from PIL import Image

    import vitkit

    images = _images(64, 28)
    expected = [
        r["top"][0]["index"] for r in vitkit.predict(args.run, [Image.open(io.BytesIO(b)) for b in images])
    ]
    rows = [run_mode(args.run, b, args.port + i, images, expected, args) for i, b in enumerate((False, True))]
    print(f"\n{args.run}, {args.concurrency} concurrent clients, loopback\n")
    print("| batching | requests | req/s | p50 ms | p99 ms | wrong | failed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['batching'] else 'off'} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['wrong']} | {r['failed']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
