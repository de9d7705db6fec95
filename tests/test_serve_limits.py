"""A client cannot stall or crash the server (issue 23, items 5-8): limits answered 413 before or while a body is
read, a stalled body 408, over capacity a fast 503 with Retry-After, LAB images converted, one error shape."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit

pytest.importorskip("fastapi", reason="fastapi not installed (pip install 'vitkit[serve]')")
from fastapi import UploadFile  # noqa: E402  (module level: the route's annotation is resolved from here)
from fastapi.testclient import TestClient  # noqa: E402

from vitkit.serve import create_app  # noqa: E402
from vitkit.serve.uploads import BodyLimit, UploadError, Workers  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("serve") / "model.safetensors"
    vitkit.save(vitkit.create_model("vit_mnist", depth=1, embed_dim=32, num_heads=2), path,
                data_config={"dataset": "mnist", "classes": [str(i) for i in range(10)], "mean": [0.1307],
                             "std": [0.3081], "img_size": [28, 28], "in_chans": 1})  # fmt: skip
    with TestClient(create_app(path, max_bytes=2**20, max_pixels=4_000_000)) as client:  # one event loop
        yield client


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's signature) with a token of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_png_bomb_gets_413_naming_its_size(client):
    r = client.post("/predict", files={"file": ("bomb.png", _png_header_only(30000, 30000), "image/png")})
    assert (
        r.status_code == 413 and "900000000 pixels" in r.json()["error"] and "4,000,000" in r.json()["error"]
    )


def test_a_body_over_the_limit_gets_413_by_its_length(client):
    r = client.post("/predict", files={"file": ("big.png", b"\0" * (3 * 2**20), "image/png")})
    assert r.status_code == 413 and "over the limit of" in r.json()["error"]


def test_fastapis_validation_errors_have_the_same_shape(client):
    for r in (
        client.post("/predict"),
        client.post("/predict?k=abc", files={"file": ("x.png", b"x", "image/png")}),
    ):
        assert r.status_code == 422 and set(r.json()) == {"error"}


def test_a_lab_tiff_is_converted_not_a_500(client):
    buf = io.BytesIO()
    Image.new("LAB", (28, 28), (255, 128, 128)).save(buf, "TIFF")  # white in CIE L*a*b*
    r = client.post("/predict", files={"file": ("lab.tif", buf.getvalue(), "image/tiff")})
    white = io.BytesIO()
    Image.new("L", (28, 28), 254).save(white, "PNG")
    assert r.status_code == 200
    assert r.json()["top"][0]["label"] == client.post("/predict", files={"file": ("w.png", white.getvalue(),
                                                                                    "image/png")}).json()["top"][0]["label"]  # fmt: skip


def test_over_capacity_a_request_gets_503_with_retry_after():
    async def scenario():
        workers = Workers(capacity=1)
        slow = asyncio.ensure_future(workers.run(lambda: __import__("time").sleep(0.3)))
        await asyncio.sleep(0.05)
        with pytest.raises(UploadError) as refused:
            await workers.run(lambda: None)
        await slow
        assert await workers.run(lambda: 7) == 7  # free again
        return refused.value

    e = asyncio.run(scenario())
    assert e.status == 503 and e.headers == {"Retry-After": "1"}


def test_a_stalled_body_gets_408():
    sent = []

    async def app(scope, receive, send):
        await receive()  # the stalled body is awaited here
        raise AssertionError("not reached")

    async def receive():
        await asyncio.sleep(10)

    async def send(message):
        sent.append(message)

    asyncio.run(
        BodyLimit(app, max_body=100, read_timeout_s=0.1)({"type": "http", "headers": []}, receive, send)
    )
    assert sent[0]["status"] == 408 and b"stalled" in sent[1]["body"]


def test_a_streamed_body_over_the_limit_gets_413_without_a_length():
    sent, chunks = [], [b"x" * 60, b"x" * 60]

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    async def receive():
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    asyncio.run(BodyLimit(app, max_body=100)({"type": "http", "headers": []}, receive, send))
    assert sent[0]["status"] == 413


def test_health_answers_while_the_model_is_busy(client):
    """Decoding and the model run in the worker pool: /health is served from the event loop at once."""
    from concurrent.futures import ThreadPoolExecutor

    img = io.BytesIO()  # three of these fit in the pixel budget (twice the 4-Mpixel limit)
    Image.fromarray(np.zeros((1600, 1600), np.uint8)).save(img, "PNG")
    with ThreadPoolExecutor(4) as pool:
        posts = [pool.submit(client.post, "/predict", files={"file": ("b.png", img.getvalue(), "image/png")})
                 for _ in range(3)]  # fmt: skip
        assert client.get("/health").json()["status"] == "ok"
        assert all(p.result().status_code == 200 for p in posts)


def _form_app(read_timeout_s: float = 30.0):
    """A FastAPI app with one multipart route behind BodyLimit (FastAPI parses the form before the route runs)."""
    from fastapi import FastAPI

    from vitkit.serve.uploads import MULTIPART_SLACK, add_error_handler

    app = FastAPI()
    add_error_handler(app)
    app.add_middleware(BodyLimit, max_body=1000 + MULTIPART_SLACK, read_timeout_s=read_timeout_s)

    @app.post("/upload")
    async def upload(file: UploadFile) -> dict:
        return {"size": len(await file.read())}

    return app


def _call(app, chunks: list[bytes], stall: bool = False) -> list[dict]:
    """Send ``chunks`` as a multipart body to ``app`` (ASGI), then stall if asked; the messages sent back."""
    sent, queue = [], list(chunks)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/upload", "raw_path": b"/upload", "root_path": "", "query_string": b"", "server": None,
             "client": None, "headers": [(b"content-type", b"multipart/form-data; boundary=B")]}  # fmt: skip

    async def receive():
        if not queue and stall:
            await asyncio.sleep(10)
        return {
            "type": "http.request",
            "body": queue.pop(0) if queue else b"",
            "more_body": bool(queue) or stall,
        }

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


_PART = (
    b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
)


def test_a_refusal_inside_fastapis_form_parser_is_not_turned_into_its_400():
    """FastAPI answers any error raised while it reads a form with 400 "There was an error parsing the body"; the
    408 of a stalled body and the 413 of a body streaming past the limit must reach the client instead."""
    stalled = _call(_form_app(read_timeout_s=0.1), [_PART + b"x" * 100], stall=True)
    assert [m.get("status") for m in stalled if m["type"] == "http.response.start"] == [408]
    assert json.loads(stalled[-1]["body"]) == {"error": "the request body stalled for 0.1 s"}
    streamed = _call(_form_app(), [_PART] + [b"\0" * 8192] * 20)
    assert [m.get("status") for m in streamed if m["type"] == "http.response.start"] == [413]
    assert set(json.loads(streamed[-1]["body"])) == {"error"}
    ok = _call(_form_app(), [_PART + b"x" * 100 + b"\r\n--B--\r\n"])
    assert ok[0]["status"] == 200 and json.loads(ok[-1]["body"]) == {"size": 100}


def test_starlettes_own_errors_have_the_one_shape_too(client):
    for r, status in ((client.get("/predict"), 405), (client.get("/nowhere"), 404),
                      (client.post("/predict", content=b"--x", headers={"content-type": "multipart/form-data"}), 400)):  # fmt: skip
        assert r.status_code == status and set(r.json()) == {"error"}, r.text


def test_the_pixel_budget_lets_one_image_in_and_refuses_more_with_503():
    from vitkit.serve.uploads import PixelBudget, decode_upload

    budget = PixelBudget(1000)
    budget.take(5000)  # one image is always let in, whatever its size
    with pytest.raises(UploadError) as refused:
        budget.take(1)
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    budget.give(5000)
    png = io.BytesIO()
    Image.new("L", (30, 20)).save(png, "PNG")
    img = decode_upload(png.getvalue(), "image/png", 10**6, 10**6, budget)
    assert budget.used == 600
    budget.give(img.width * img.height)
    with pytest.raises(UploadError):  # a header that reads but pixels that do not: the pixels come back
        decode_upload(png.getvalue()[:-30], "image/png", 10**6, 10**6, budget)
    assert budget.used == 0


def test_requests_give_their_pixels_back_and_wait_for_them(client):
    """While other decodes hold the budget, an upload gets a fast 503; every request, answered or refused, gives
    its pixels back."""
    budget, png = client.app.state.pixel_budget, io.BytesIO()
    Image.new("L", (28, 28)).save(png, "PNG")
    file = {"file": ("x.png", png.getvalue(), "image/png")}
    assert client.post("/predict", files=file).status_code == 200
    assert client.post("/explain", files=file).status_code == 200
    assert (
        client.post("/predict", files={"file": ("t.png", png.getvalue()[:-30], "image/png")}).status_code
        == 400
    )
    assert budget.used == 0
    budget.take(budget.total)  # another request's image
    try:
        r = client.post("/predict", files=file)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
    finally:
        budget.give(budget.total)
    assert client.post("/predict", files=file).status_code == 200 and budget.used == 0
