"""What every server route shares: upload limits, decoding off the event loop, one error shape.

- :class:`BodyLimit` (ASGI middleware) refuses a body over the limit by its ``Content-Length`` before reading it,
  and while it streams (a lying or absent length), with 413; a client that stops sending for ``read_timeout_s``
  gets 408. Nothing over the limit is spooled to disk.
- :class:`Workers` runs decoding, preprocessing and the model in a thread pool with a bounded number of requests
  in flight: over capacity a request gets a fast 503 with ``Retry-After`` instead of queueing; ``/health`` never
  waits behind a decode.
- :func:`decode_upload` checks the pixel limit from the image header before any pixel is decoded (413), and
  takes the image's pixels from a :class:`PixelBudget` shared by the requests in flight (over it: 503 with
  ``Retry-After``): an image costs bytes by the dozen a pixel on its way to a tensor (a 1 x 39,000,000 PNG of
  40 kB raised a grayscale model's server from 377 to 860 MiB), so 32 requests of 40 Mpixels would otherwise take
  tens of GB. :func:`uploaded_image` gives the pixels back when the request is done with the image.
- Every refusal answers ``{"error": message}``: FastAPI's validation errors (422) and Starlette's own (404, 405,
  a form it cannot parse) included.
"""

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["UploadError", "decode_upload", "uploaded_image", "add_error_handler", "BodyLimit", "Workers",
           "PixelBudget", "MULTIPART_SLACK"]  # fmt: skip

MULTIPART_SLACK = 64 * 1024  # multipart boundaries and headers around the file itself


class UploadError(Exception):
    """A request the server refuses, with its HTTP status (and headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class PixelBudget:
    """Pixels of the images being decoded and prepared, across requests; over ``total`` a request gets a fast 503
    with ``Retry-After`` (one image is always let in, whatever its size)."""

    def __init__(self, total: int, retry_after_s: int = 1) -> None:
        self.total, self.used, self.retry_after_s = total, 0, retry_after_s
        self._lock = threading.Lock()

    def take(self, pixels: int) -> None:
        with self._lock:
            if self.used and self.used + pixels > self.total:
                raise UploadError(503, f"the server is busy decoding {self.used:,} pixels of images; retry shortly",
                                  {"Retry-After": str(self.retry_after_s)})  # fmt: skip
            self.used += pixels

    def give(self, pixels: int) -> None:
        with self._lock:
            self.used -= pixels


def decode_upload(data: bytes, content_type: str | None, max_bytes: int, max_pixels: int,
                  budget: PixelBudget | None = None) -> Any:  # fmt: skip
    """Uploaded bytes -> a loaded PIL image, or an UploadError naming the problem (run it in :class:`Workers`).
    With a ``budget``, the image's pixels are taken from it before they are decoded; give them back when done
    (:func:`uploaded_image` does)."""
    from PIL import Image, UnidentifiedImageError

    if content_type and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise UploadError(415, f"expected an image upload, got content type {content_type!r}")
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    if len(data) > max_bytes:
        raise UploadError(413, f"file of {len(data):,} bytes is over the limit of {max_bytes:,} bytes")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        if img.width * img.height > max_pixels:
            raise UploadError(
                413, f"image of {img.width}x{img.height} pixels is over the limit of {max_pixels:,} pixels"
            )
        if budget is not None:
            budget.take(img.width * img.height)
        try:
            img.load()
        except BaseException:
            if budget is not None:
                budget.give(img.width * img.height)
            raise
    except UploadError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own ceiling, hit before ours could read the size
        raise UploadError(413, f"image over the limit of {max_pixels:,} pixels ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UploadError(400, f"not a readable image ({type(e).__name__}: {e})") from None
    return img


@contextlib.asynccontextmanager
async def uploaded_image(upload: Any, workers: "Workers", budget: PixelBudget, max_bytes: int,
                         max_pixels: int) -> AsyncIterator[Any]:  # fmt: skip
    """The decoded image of an upload (``.read()`` and ``.content_type``; decoded in ``workers``), its pixels held in
    ``budget`` until the ``async with`` block ends."""
    data = await upload.read(max_bytes + 1)
    img = await workers.run(decode_upload, data, upload.content_type, max_bytes, max_pixels, budget)
    try:
        yield img
    finally:
        budget.give(img.width * img.height)


def add_error_handler(app: Any) -> None:
    """Every refusal of ``app`` answers ``{"error": message}`` with its status, FastAPI's 422s included."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(UploadError)
    async def _upload_error(_request: Any, e: UploadError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)  # 404, 405, a body FastAPI could not parse (400)...
    async def _http_error(_request: Any, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Any, e: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors()]
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)


class Workers:
    """A bounded thread pool for the blocking work of a request (decode, preprocess, forward)."""

    def __init__(self, capacity: int = 8, retry_after_s: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.retry_after_s, self.in_flight = capacity, retry_after_s, 0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        from starlette.concurrency import run_in_threadpool

        if self.in_flight >= self.capacity:
            raise UploadError(503, f"the server is busy ({self.in_flight} requests in flight); retry shortly",
                              {"Retry-After": str(self.retry_after_s)})  # fmt: skip
        self.in_flight += 1
        try:
            return await run_in_threadpool(fn, *args)
        finally:
            self.in_flight -= 1


class BodyLimit:
    """ASGI middleware: bodies over ``max_body`` bytes get 413 (by Content-Length, or as they stream); a body that
    stalls for ``read_timeout_s`` gets 408. The refusal is raised inside the app's read of the body and replaces
    whatever the app answers to it (FastAPI turns any error raised while it parses a form into its own 400)."""

    def __init__(self, app: Any, max_body: int, read_timeout_s: float = 30.0) -> None:
        self.app, self.max_body, self.read_timeout_s = app, max_body, read_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _refuse(send, 413, f"request body of {int(length):,} bytes is over the limit of "
                                            f"{self.max_body:,} bytes")  # fmt: skip
        seen, refusal, started = 0, None, False

        async def limited_receive() -> dict:
            nonlocal seen, refusal
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except asyncio.TimeoutError:
                refusal = UploadError(408, f"the request body stalled for {self.read_timeout_s:g} s")
                raise refusal from None
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                refusal = UploadError(413, f"request body over the limit of {self.max_body:,} bytes")
                raise refusal
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if refusal is None:  # once refused, the app's own answer (e.g. FastAPI's 400 "error parsing the
                started = True  # body", which the refusal raised inside its form parser) is not sent
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if refusal is None:
                raise
        if refusal is not None and not started:
            await _refuse(send, refusal.status, refusal.message)


async def _refuse(send: Callable, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
