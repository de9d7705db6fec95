"""Uploaded files: the limits and the decoding every server route shares, and the error they raise."""

import io
from typing import Any

__all__ = ["UploadError", "decode_upload", "add_error_handler"]


class UploadError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def decode_upload(data: bytes, content_type: str | None, max_bytes: int, max_pixels: int) -> Any:
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


def add_error_handler(app: Any) -> None:
    """Every refusal of ``app`` answers ``{"error": message}`` with its status."""
    from fastapi.responses import JSONResponse

    @app.exception_handler(UploadError)
    async def _upload_error(_request: Any, e: UploadError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)
