"""Serving a model of any task other than image classification: ``POST /predict`` returns what the task's
:meth:`~vitkit.tasks.Task.predict` gives (boxes, a mask's class shares, a translation, filled ``[MASK]`` tokens,
text classes), for an uploaded image (multipart field ``file``) or a JSON body ``{"text": "..."}``. Errors have
the same ``{"error": ...}`` shape as the classifier's server; ``/explain`` says by name that it applies to image
classifiers only. (No ``from __future__ import annotations``: FastAPI reads the handlers' annotations.)
"""

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from .uploads import (
    MULTIPART_SLACK,
    BodyLimit,
    PixelBudget,
    UploadError,
    Workers,
    add_error_handler,
    uploaded_image,
)

__all__ = ["create_task_app"]

_FILE_KEYS = ("drawing", "mask", "overlay", "reconstruction")  # files written in a temporary folder


def create_task_app(checkpoint: str | os.PathLike, *, max_bytes: int = 10 * 2**20, max_pixels: int = 40_000_000,
                    body_timeout_s: float = 30.0, **options: Any) -> Any:  # fmt: skip
    """A FastAPI app serving the task model of ``checkpoint`` (run directory or ``.safetensors``) on the CPU."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from ..tasks.inference import load_task_model, model_file

    model, task = load_task_model(checkpoint)
    source = model_file(checkpoint).parent
    lock = threading.Lock()
    app = FastAPI(title="vitkit", description=f"serving the {task.name} model {checkpoint}")

    add_error_handler(app)
    app.add_middleware(BodyLimit, max_body=max_bytes + MULTIPART_SLACK, read_timeout_s=body_timeout_s)
    workers = Workers()
    app.state.pixel_budget = budget = PixelBudget(2 * max_pixels)  # two images at the limit at once

    def run(item: Any) -> dict[str, Any]:
        with lock, tempfile.TemporaryDirectory() as tmp:
            try:
                # draw=False: a detector's drawing (a matplotlib figure, ~0.2 s) would be thrown away
                result = task.predict(model, [item], source=source, out_dir=Path(tmp), draw=False, **options)[
                    0
                ]
            except (ValueError, FileNotFoundError, OSError) as e:
                raise UploadError(400, str(e)) from None
        return {k: v for k, v in result.items() if k not in _FILE_KEYS and k != "path"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "task": task.name, "model": str(getattr(model, "model_name", ""))}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        if task.input_kind == "texts":
            try:
                body = await request.json()
            except ValueError:
                body = None
            text = body.get("text") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise UploadError(400, 'a text model takes a JSON body {"text": "..."} with a non-empty text')
            return await workers.run(run, text)
        form = await request.form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise UploadError(400, "an image model takes a multipart upload in the field 'file'")
        async with uploaded_image(upload, workers, budget, max_bytes, max_pixels) as image:
            return {"filename": upload.filename, **(await workers.run(run, image))}

    @app.post("/explain")
    async def explain() -> JSONResponse:
        return JSONResponse({"error": f"explain applies to image classifiers; this is a {task.name} model"},
                            status_code=404)  # fmt: skip

    return app
