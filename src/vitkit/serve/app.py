"""The FastAPI app behind ``vitkit serve``: predict, explain, health, and a page for people.

``POST /predict`` (multipart field ``file``) -> top-k JSON; ``POST /explain`` -> PNG (image, relevance overlay,
per-layer attention); ``GET /health``; ``GET /`` an upload page showing the top-k bars and the overlay. Bad
uploads get a 4xx JSON ``{"error": ...}`` and the server keeps serving: a wrong content type (415), an empty,
truncated or non-image file (400), a file or image over the size limits (413). With ``batching`` on, concurrent
predictions share forward passes (:class:`DynamicBatcher`).
"""

import os
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .batcher import DynamicBatcher
from .uploads import (
    MULTIPART_SLACK,
    BodyLimit,
    PixelBudget,
    UploadError,
    Workers,
    add_error_handler,
    uploaded_image,
)

__all__ = ["create_app"]


def create_app(
    checkpoint: str | os.PathLike,
    *,
    topk: int = 5,
    batching: bool = True,
    max_batch: int = 32,
    batch_wait_ms: float = 5.0,
    max_bytes: int = 10 * 2**20,
    max_pixels: int = 40_000_000,
    body_timeout_s: float = 30.0,
) -> Any:
    """A FastAPI app serving the model of ``checkpoint`` (run directory or ``.safetensors``) on the CPU; a model of
    another task than image classification gets :func:`~vitkit.serve.tasks.create_task_app`. A request body that
    stalls for ``body_timeout_s`` gets 408."""
    from ..tasks.inference import task_of_file

    task = task_of_file(checkpoint)
    if task not in (None, "classification"):
        from .tasks import create_task_app

        return create_task_app(checkpoint, max_bytes=max_bytes, max_pixels=max_pixels, body_timeout_s=body_timeout_s,
                               topk=topk)  # fmt: skip
    return _classifier_app(
        checkpoint, topk, batching, max_batch, batch_wait_ms, max_bytes, max_pixels, body_timeout_s
    )


def _classifier_app(checkpoint, topk: int, batching: bool, max_batch: int, batch_wait_ms: float, max_bytes: int,
                    max_pixels: int, body_timeout_s: float) -> Any:  # fmt: skip
    """The image classifier's app: /predict (top-k, batched), /explain (PNG), /health and the upload page."""
    from fastapi import FastAPI, UploadFile
    from fastapi.responses import Response

    from ..predict import load_for_inference

    model, data_config = load_for_inference(checkpoint)
    model.eval()
    classes = list(data_config["classes"])
    lock = threading.Lock()  # one model, used by the batcher's thread and the explain threads

    def forward(x: torch.Tensor) -> torch.Tensor:
        with lock, torch.inference_mode():
            out = model(x)
            return (out[0] if isinstance(out, (tuple, list)) else out).float().softmax(-1)

    batcher = DynamicBatcher(forward, max_batch=max_batch, wait_ms=batch_wait_ms) if batching else None
    app = FastAPI(title="vitkit", description=f"serving {checkpoint}")
    app.state.batcher = batcher  # its batch_sizes show how requests were grouped

    add_error_handler(app)

    workers = Workers(capacity=max(4, max_batch))
    app.state.pixel_budget = budget = PixelBudget(2 * max_pixels)  # two images at the limit at once
    app.add_middleware(BodyLimit, max_body=max_bytes + MULTIPART_SLACK, read_timeout_s=body_timeout_s)

    def _image(file: UploadFile) -> Any:
        return uploaded_image(file, workers, budget, max_bytes, max_pixels)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": str(getattr(model, "model_name", "")), "classes": len(classes),
                "batching": batching}  # fmt: skip

    @app.post("/predict")
    async def predict(file: UploadFile, k: int = topk) -> dict[str, Any]:
        if k < 1:
            raise UploadError(422, f"k must be a positive integer, got {k}")
        async with _image(file) as img:
            x = await workers.run(_prepare, img, data_config)
        probs = await batcher.submit(x) if batcher else (await workers.run(forward, x[None]))[0]
        return {"filename": file.filename, "top": _top(probs, k, classes)}

    @app.post("/explain")
    async def explain(file: UploadFile) -> Response:
        async with _image(file) as img:
            png = await workers.run(_explain_png, model, img, lock, file.filename)
            return Response(png, media_type="image/png")

    _add_page(app)
    return app


def _prepare(img: Any, data_config: dict[str, Any]) -> torch.Tensor:
    from ..predict import preprocess

    try:
        return preprocess([img], data_config)[0]
    except (ValueError, OSError) as e:  # a mode or layout the model's pipeline cannot take
        raise UploadError(415, f"cannot prepare this image for the model: {e}") from None


def _explain_png(model: Any, img: Any, lock: threading.Lock, filename: str | None = None) -> bytes:
    from ..explain.figure import explain_image

    with tempfile.TemporaryDirectory() as tmp, lock:
        out = Path(tmp) / "explain.png"
        try:  # the figure is titled with the uploaded file's name
            explain_image(model, img, out, save_npy=False, name=Path(filename).name if filename else None)
        except (ValueError, OSError) as e:
            raise UploadError(415, f"cannot prepare this image for the model: {e}") from None
        return out.read_bytes()


def _top(probs: torch.Tensor, k: int, classes: list[str]) -> list[dict[str, Any]]:
    p, i = probs.topk(min(k, len(classes)))
    return [
        {"label": classes[j], "index": int(j), "prob": float(q)}
        for q, j in zip(p.tolist(), i.tolist(), strict=True)
    ]


def _add_page(app: Any) -> None:
    from fastapi.responses import HTMLResponse

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("vitkit.serve").joinpath("page.html").read_text()
