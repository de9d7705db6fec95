"""The inference server: predictions equal vitkit.predict, bad uploads get 4xx JSON, concurrency loses nothing."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit

pytest.importorskip("fastapi", reason="fastapi not installed (pip install 'vitkit[serve]')")
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) not installed")
from fastapi.testclient import TestClient  # noqa: E402

from vitkit.serve import create_app  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = vitkit.create_model("vit_mnist", depth=1, embed_dim=32, num_heads=2)
    path = tmp_path_factory.mktemp("serve") / "model.safetensors"
    vitkit.save(model, path, data_config={"dataset": "mnist", "classes": CLASSES, "mean": [0.1307],
                                          "std": [0.3081], "img_size": [28, 28], "in_chans": 1})  # fmt: skip
    return path


def _png(seed: int, size: int = 28, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, "PNG")
    return buf.getvalue()


def _blank_png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size)).save(buf, "PNG")
    return buf.getvalue()


def _expected(model_file, data: bytes) -> list[dict]:
    return vitkit.predict(model_file, [Image.open(io.BytesIO(data))], topk=3)[0]["top"]


@pytest.mark.parametrize("batching", [True, False])
def test_predict_health_page_and_explain(model_file, batching):
    with TestClient(create_app(model_file, topk=3, batching=batching)) as client:
        assert client.get("/health").json()["status"] == "ok"
        page = client.get("/")
        assert page.status_code == 200 and 'id="file"' in page.text and "/predict" in page.text
        data = _png(1, size=50, mode="RGB")  # any size and mode: converted as in training
        r = client.post("/predict", files={"file": ("x.png", data, "image/png")})
        assert r.status_code == 200
        got, want = r.json()["top"], _expected(model_file, data)
        assert [t["label"] for t in got] == [t["label"] for t in want]
        np.testing.assert_allclose([t["prob"] for t in got], [t["prob"] for t in want], atol=1e-5)
        png = client.post("/explain", files={"file": ("holiday photo.png", data, "image/png")})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        figure = Image.open(io.BytesIO(png.content))
        assert figure.size[0] > 100
        # the figure is titled with the uploaded file's name (its PNG Title text holds the title drawn)
        assert (
            figure.info["Title"] == f"holiday photo.png: class {want[0]['label']!r} (p={want[0]['prob']:.3f})"
        )


def test_bad_uploads_get_4xx_json_and_the_server_keeps_serving(model_file):
    with TestClient(create_app(model_file, max_bytes=20_000, max_pixels=100_000)) as client:
        cases = [
            (("a.txt", b"hello", "text/plain"), 415, "expected an image upload"),
            (("a.png", b"not an image at all", "image/png"), 400, "not a readable image"),
            (("a.png", _png(2)[:40], "image/png"), 400, "not a readable image"),  # truncated
            (("a.png", b"", "image/png"), 400, "empty"),
            (("a.png", b"x" * 30_000, "image/png"), 413, "over the limit of 20,000"),
            (
                ("big.png", _blank_png(400), "image/png"),
                413,
                "400x400 pixels is over the limit",
            ),  # small file
        ]
        for file, status, message in cases:
            r = client.post("/predict", files={"file": file})
            assert r.status_code == status, (file[0], r.text)
            assert message in r.json()["error"]
        assert client.post("/predict", files={"file": ("x.png", _png(4), "image/png")}).status_code == 200
        assert client.post("/predict").status_code == 422  # no file field


def test_concurrent_requests_are_batched_and_answered_correctly(model_file):
    app = create_app(model_file, topk=3, max_batch=16, batch_wait_ms=50)
    images = [_png(100 + i) for i in range(24)]
    with TestClient(app) as client:

        def ask(i: int) -> tuple[int, list[dict]]:
            r = client.post("/predict", files={"file": (f"{i}.png", images[i], "image/png")})
            assert r.status_code == 200
            return i, r.json()["top"]

        with ThreadPoolExecutor(12) as pool:
            answers = dict(pool.map(ask, range(len(images))))
    assert len(answers) == len(images)
    want = vitkit.predict(model_file, [Image.open(io.BytesIO(b)) for b in images], topk=3)
    for i, w in enumerate(want):
        assert [t["index"] for t in answers[i]] == [t["index"] for t in w["top"]]
        np.testing.assert_allclose([t["prob"] for t in answers[i]], [t["prob"] for t in w["top"]], atol=1e-5)
    sizes = app.state.batcher.batch_sizes
    assert sum(sizes) == len(images) and max(sizes) > 1  # requests shared forward passes


def _browser_ready() -> str | None:
    import importlib.util
    import shutil

    if importlib.util.find_spec("selenium") is None:
        return "selenium not installed"
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    return None


def _slowed_app(model_file, delays: list[float], answered: list[int]):
    """The classifier's app whose /explain answers late: the next of ``delays`` seconds for each request while
    there are any (a slow heatmap); ``answered`` counts the heatmaps sent."""
    import asyncio

    app = create_app(model_file, topk=3)

    @app.middleware("http")
    async def slow_explain(request, call_next):
        if request.url.path != "/explain":
            return await call_next(request)
        await asyncio.sleep(delays.pop(0) if delays else 0.0)
        response = await call_next(request)
        answered.append(1)
        return response

    return app


@pytest.mark.skipif(_browser_ready() is not None, reason=str(_browser_ready()))
def test_page_in_a_real_headless_browser(model_file, tmp_path):
    """The page shows an upload's bars, file name and heatmap; choosing another image clears them at once, a
    slow heatmap never shows under the next image's bars, and an error leaves no heatmap behind."""
    import shutil
    import socket
    import threading
    import time

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays, answered = [], []
    server = uvicorn.Server(
        uvicorn.Config(_slowed_app(model_file, delays, answered), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    images = {}
    for i, name in enumerate(("first.png", "second.png", "third.png")):
        images[name] = tmp_path / name
        images[name].write_bytes(_png(7 + i, size=40, mode="RGB"))
    (tmp_path / "notes.png").write_text("not an image\n")
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        overlay, caption = driver.find_element(By.ID, "overlay"), driver.find_element(By.ID, "caption")

        def bars() -> list[str]:
            return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".prediction .label")]

        def send(name: str) -> None:
            driver.find_element(By.ID, "file").send_keys(str(tmp_path / name))
            driver.find_element(By.ID, "submit").click()

        def heatmap_of(name: str) -> bool:
            return overlay.is_displayed() and overlay.get_attribute("alt").endswith(name)

        send("first.png")
        wait.until(lambda d: heatmap_of("first.png"))
        assert bars() == [t["label"] for t in _expected(model_file, images["first.png"].read_bytes())]
        assert caption.text.startswith("first.png: ") and (overlay.get_attribute("src") or "").startswith(
            "blob:"
        )
        assert driver.execute_script("return document.getElementById('overlay').naturalWidth") > 100
        assert driver.find_element(By.ID, "error").text == ""

        delays += [1.0, 3.0]  # the second image's heatmap comes 1 s after its bars, the third's 3 s after
        driver.find_element(By.ID, "file").send_keys(str(images["second.png"]))  # chosen, not yet sent
        assert not overlay.is_displayed() and not overlay.get_attribute("src") and bars() == []
        assert not caption.is_displayed()
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: bars() and caption.text.startswith("second.png: "))
        assert bars() == [t["label"] for t in _expected(model_file, images["second.png"].read_bytes())]
        assert not overlay.is_displayed()  # the first image's heatmap is not under the second's bars
        send("third.png")  # before the second's heatmap arrives: it is dropped when it does
        wait.until(lambda d: caption.text.startswith("third.png: "))
        wait.until(lambda d: len(answered) == 2)  # the second's heatmap has been sent, the third's not yet
        time.sleep(0.5)
        assert not overlay.is_displayed() and not overlay.get_attribute("src")
        wait.until(lambda d: heatmap_of("third.png"))
        assert len(answered) == 3

        send("notes.png")
        wait.until(lambda d: "notes.png" in d.find_element(By.ID, "error").text)
        assert not overlay.is_displayed() and not overlay.get_attribute("src") and bars() == []
        assert not caption.is_displayed()
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)
