"""Opt-in downloads with checksum verification (never used by the tests)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["file_digest", "download_file"]


def file_digest(path: str | Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    """Hex digest of a file (``md5``, ``sha256``, ...)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(
    urls: Sequence[str], dest: str | Path, *, md5: str | None = None, sha256: str | None = None
) -> Path:
    """Fetch the first working URL of ``urls`` to ``dest`` and verify its checksum.

    The file is written to ``dest.part`` and renamed only after it verifies. A checksum
    mismatch on every mirror raises an OSError naming the URLs tried.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "vitkit"})
            with urllib.request.urlopen(req, timeout=60) as r, open(tmp, "wb") as f:
                while block := r.read(1 << 20):
                    f.write(block)
        except OSError as e:
            errors.append(f"{url}: {e}")
            continue
        for algo, want in (("md5", md5), ("sha256", sha256)):
            if want and (got := file_digest(tmp, algo)) != want:
                errors.append(f"{url}: {algo} mismatch (expected {want}, got {got})")
                break
        else:
            os.replace(tmp, dest)
            return dest
    tmp.unlink(missing_ok=True)
    raise OSError(f"could not download {dest.name}:\n  " + "\n  ".join(errors))
