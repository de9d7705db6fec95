"""The FastAPI app behind ``vitkit serve``: predict, explain, health, and a page for people.

``POST /predict`` (multipart field ``file``) -> top-k JSON; ``POST /explain`` -> PNG (image, relevance overlay,
per-layer attention); ``GET /health``; ``GET /`` an upload page showing the top-k bars and the overlay. Bad
uploads get a 4xx JSON ``{"error": ...}`` and the server keeps serving: a wrong content type (415), an empty,
truncated or non-image file (400), a file or image over the size limits (413). With ``batching`` on, concurrent
predictions share forward passes (:class:`DynamicBatcher`).
"""

import io
import os
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .batcher import DynamicBatcher

__all__ = ["create_app"]


class UploadError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _decode(data: bytes, content_type: str | None, max_bytes: int, max_pixels: int) -> Any:
    """Uploaded bytes -> a loaded PIL image, or an UploadError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if content_type and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise UploadError(415, f"expected an image upload, got content type {content_type!r}")
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    if len(data) > max_bytes:
        raise UploadError(413, f"file of {len(data):,} bytes is over the limit of {max_bytes:,}")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise UploadError(
                413, f"image of {img.width}x{img.height} pixels is over the limit of {max_pixels:,}"
            )
        img.load()
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UploadError(400, f"not a readable image ({type(e).__name__}: {e})") from None
    return img


def create_app(
    checkpoint: str | os.PathLike,
    *,
    topk: int = 5,
    batching: bool = True,
    max_batch: int = 32,
    batch_wait_ms: float = 5.0,
    max_bytes: int = 10 * 2**20,
    max_pixels: int = 40_000_000,
) -> Any:
    """A FastAPI app serving the model of ``checkpoint`` (run directory or ``.safetensors``) on the CPU."""
    from fastapi import FastAPI, Request, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from ..explain.figure import explain_image
    from ..predict import load_for_inference, preprocess

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

    @app.exception_handler(UploadError)
    async def _upload_error(_request: Request, e: UploadError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)

    async def _image(file: UploadFile) -> Any:
        data = await file.read(max_bytes + 1)
        return _decode(data, file.content_type, max_bytes, max_pixels)

    def _top(probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
        p, i = probs.topk(min(k, len(classes)))
        return [
            {"label": classes[j], "index": int(j), "prob": float(q)}
            for q, j in zip(p.tolist(), i.tolist(), strict=True)
        ]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": str(getattr(model, "model_name", "")), "classes": len(classes),
                "batching": batching}  # fmt: skip

    @app.post("/predict")
    async def predict(file: UploadFile, k: int = topk) -> dict[str, Any]:
        if k < 1:
            raise UploadError(422, f"k must be a positive integer, got {k}")
        x = preprocess([await _image(file)], data_config)[0]
        probs = await batcher.submit(x) if batcher else (await run_in_threadpool(forward, x[None]))[0]
        return {"filename": file.filename, "top": _top(probs, k)}

    @app.post("/explain")
    async def explain(file: UploadFile) -> Response:
        img = await _image(file)

        def run() -> bytes:
            with tempfile.TemporaryDirectory() as tmp, lock:
                out = Path(tmp) / "explain.png"
                explain_image(model, img, out, save_npy=False)
                return out.read_bytes()

        return Response(await run_in_threadpool(run), media_type="image/png")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("vitkit.serve").joinpath("page.html").read_text()

    return app
