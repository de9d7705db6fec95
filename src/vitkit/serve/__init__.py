"""Serve a trained model over HTTP: ``vitkit serve CHECKPOINT`` (FastAPI + uvicorn)."""

from .app import create_app

__all__ = ["create_app"]
