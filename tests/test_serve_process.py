"""One real ``vitkit serve`` process (uvicorn on loopback) against hostile input (issue 23): the 47 fault cases of
``benchmarks/serve_faults.py`` (shared with ``bench_serve.py``) each get their expected status and the
``{"error": ...}`` shape, ``/health`` answers while a client stalls a body, correct requests still get
``vitkit.predict``'s answer, the connection limit and the keep-alive timeout are uvicorn's, and the process
outlives it all."""

from __future__ import annotations

import io
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit

for module in ("fastapi", "uvicorn", "httpx"):
    pytest.importorskip(module, reason="needs the serve extras: pip install 'vitkit[serve]'")
import httpx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import serve_faults as sf  # noqa: E402
import serve_payloads as pay  # noqa: E402

LIMITS = sf.Limits(max_mb=2, body_timeout=2, header_timeout=2, keep_alive=2, max_connections=32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(process, port, model file) of a server on a tiny untrained ViT, stopped after the module's tests."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("serve") / "model.safetensors"
    vitkit.save(vitkit.create_model("vit_mnist", depth=1, embed_dim=32, num_heads=2), path,
                data_config={"dataset": "mnist", "classes": [str(i) for i in range(10)], "mean": [0.1307],
                             "std": [0.3081], "img_size": [28, 28], "in_chans": 1})  # fmt: skip
    port = sf.free_port()
    proc = sf.start_server(path, port, LIMITS)
    try:
        sf.wait_ready(f"http://127.0.0.1:{port}", proc, timeout=60)
        yield proc, port, path
    finally:
        log = sf.stop_server(proc)
        assert "Traceback" not in log, log[-3000:]


def _correct_requests(client: httpx.Client, port: int, path: Path) -> None:
    for seed in range(3):
        data = pay.noise_png(100 + seed, 40, "RGB")
        r = client.post(f"http://127.0.0.1:{port}/predict?k=3", files={"file": ("ok.png", data, "image/png")})
        assert r.status_code == 200, r.text
        want = vitkit.predict(path, [Image.open(io.BytesIO(data))], topk=3)[0]["top"]
        assert [t["label"] for t in r.json()["top"]] == [t["label"] for t in want]
        np.testing.assert_allclose([t["prob"] for t in r.json()["top"]], [t["prob"] for t in want], atol=1e-5)


def test_every_fault_case_gets_its_answer_and_health_stays_responsive(server):
    proc, port, path = server
    url = f"http://127.0.0.1:{port}"
    with httpx.Client() as client:
        _correct_requests(client, port, path)
        with sf.HealthProbe(url, every=0.1) as probe:
            results = sf.run_cases(sf.Target("127.0.0.1", port, LIMITS, client, timeout=8.0))
        _correct_requests(client, port, path)
    assert len(results) == 47
    failed = [f"{r.case.name}: {r.problem}" for r in results if r.problem]
    assert not failed, "\n".join(failed)
    stall = next(r for r in results if r.case.name == "stall_mid_body")
    during = [s for t, s in probe.polls if stall.started < t < stall.started + stall.outcome.seconds - 0.2]
    assert len(during) >= 5 and max(during) < 1.0, during  # /health answered while the body stalled
    assert not probe.failures and max(probe.latencies) < 2.0, (probe.failures, max(probe.latencies))
    assert proc.poll() is None


def test_connection_limit_and_keep_alive_timeout_reach_uvicorn(server):
    proc, port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # an idle keep-alive connection
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sf.read_response(s)[0] == 200
        start = time.perf_counter()
        assert s.recv(65536) == b""  # closed by the server...
        assert (
            LIMITS.keep_alive - 0.5 < time.perf_counter() - start < LIMITS.keep_alive + 2
        )  # ...after --keep-alive
    n = LIMITS.max_connections - 1  # with the request's own connection: the limit
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    try:
        time.sleep(0.3)  # accepted by the server
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert r.status_code == 503  # uvicorn's own, plain text, over --max-connections
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    assert proc.poll() is None
