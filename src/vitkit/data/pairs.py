"""Image-text pairs for contrastive training (CLIP, SigLIP, LiT): a manifest of (image, caption) rows, or a
labelled image dataset whose labels become captions through templates ("a photo of a {label}.").

Both are image datasets whose *classes* are texts, so the image pipeline, loaders and preloading of classification
serve them unchanged:

- :func:`pairs_dataset` reads a CSV (header ``path,caption``; also ``image``/``file`` and ``text``/``title``) or
  JSONL manifest into a :class:`~vitkit.data.folder.FileImageDataset` whose item label indexes
  ``dataset.classes`` = the distinct captions (so two images with one caption share a caption id, and a contrastive
  loss can count both as positives);
- a labelled dataset keeps its class indices; :class:`CaptionTemplates` turns class indices into captions.

Bad input is refused naming the row: a missing image file, an empty caption, a row without both columns; a
template without ``{label}``, an empty template or class list.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import DatasetNotFoundError
from .folder import FileImageDataset

__all__ = ["CaptionTemplates", "check_templates", "read_pairs", "pairs_dataset", "DEFAULT_TEMPLATES"]

PATH_KEYS = ("path", "image", "file", "filename")
CAPTION_KEYS = ("caption", "text", "title")
#: CLIP's short prompt ensemble for small natural images (Radford et al. 2021, a subset of its CIFAR-10 prompts)
DEFAULT_TEMPLATES = (
    "a photo of a {label}.",
    "a blurry photo of a {label}.",
    "a low contrast photo of a {label}.",
    "a photo of the small {label}.",
    "a pixelated photo of a {label}.",
)


def check_templates(templates: Sequence[str]) -> list[str]:
    """The templates as a list; ValueError for none, or one without exactly one ``{label}`` field."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("no caption templates: give at least one, e.g. 'a photo of a {label}.'")
    for t in templates:
        if not isinstance(t, str) or t.count("{label}") != 1:
            raise ValueError(f"caption template {t!r} must contain '{{label}}' exactly once")
        try:
            t.format(label="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"caption template {t!r} has a field other than {{label}}: {e}") from None
    return templates


class CaptionTemplates:
    """Captions of class indices: ``templates[t].format(label=classes[y])``.

    :meth:`sample` draws one template per label (training: a different wording each time, from ``generator``);
    :meth:`all` gives every template of every class (zero-shot classifiers average them, CLIP's prompt
    ensembling). Raises ValueError for an empty class list or a bad template (:func:`check_templates`)."""

    def __init__(self, classes: Sequence[str], templates: Sequence[str] = ("{label}",)) -> None:
        self.classes = [str(c) for c in classes]
        if not self.classes:
            raise ValueError(
                "an empty class list: zero-shot classes and captions need at least one class name"
            )
        blank = [i for i, c in enumerate(self.classes) if not c.strip()]
        if blank:
            raise ValueError(f"class {blank[0]} has an empty name: captions need a name for every class")
        self.templates = check_templates(templates)

    def sample(self, labels: Tensor, generator: torch.Generator | None = None) -> list[str]:
        picks = torch.randint(len(self.templates), (len(labels),), generator=generator).tolist()
        return [
            self.templates[t].format(label=self.classes[int(y)])
            for y, t in zip(labels.tolist(), picks, strict=True)
        ]

    def all(self) -> list[list[str]]:
        """``[class][template]`` captions."""
        return [[t.format(label=c) for t in self.templates] for c in self.classes]


def _table_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON ({e})") from None
        return rows
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        return [(n, row) for n, row in enumerate(reader, 2) if any((v or "").strip() for v in row.values())]


def read_pairs(path: str | Path, root: str | Path | None = None) -> list[tuple[str, str]]:
    """``(image path, caption)`` rows of a CSV/TSV (with a header) or JSONL manifest; relative paths are resolved
    against ``root`` (default: the manifest's folder).

    Raises DatasetNotFoundError for a missing manifest, ValueError naming the line for a row without an image or
    caption column, an empty caption, or an image file that does not exist."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError("pairs manifest", [path], "a CSV/JSONL manifest of (path, caption) rows")
    base = Path(root).expanduser() if root is not None else path.parent
    pairs = []
    for n, rec in _table_rows(path):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: expected an object with 'path' and 'caption' keys, got {rec!r}")
        low = {str(k).strip().lower(): k for k in rec}
        pk = next((low[k] for k in PATH_KEYS if k in low), None)
        ck = next((low[k] for k in CAPTION_KEYS if k in low), None)
        if pk is None or ck is None:
            raise ValueError(
                f"{path}:{n}: a pairs row needs an image column ({'|'.join(PATH_KEYS)}) and a caption column "
                f"({'|'.join(CAPTION_KEYS)}); got {sorted(map(str, rec))}"
            )
        image, caption = str(rec[pk] or "").strip(), str(rec[ck] or "").strip()
        if not caption:
            raise ValueError(f"{path}:{n}: empty caption for image {image!r}")
        file = Path(image).expanduser()
        file = file if file.is_absolute() else base / file
        if not image or not file.is_file():
            raise ValueError(f"{path}:{n}: image {image!r} not found (looked for {file})")
        pairs.append((str(file), caption))
    if not pairs:
        raise ValueError(f"{path}: no (image, caption) rows")
    return pairs


def pairs_dataset(path: str | Path, root: str | Path | None = None, **kw: Any) -> FileImageDataset:
    """The manifest's images, each labelled with the index of its caption in ``dataset.classes`` (the distinct
    captions in first-seen order). ``kw`` go to :class:`~vitkit.data.folder.FileImageDataset` (``image_size``,
    ``channels``, ``on_error``, ...)."""
    pairs = read_pairs(path, root)
    captions: dict[str, int] = {}
    samples = [(p, captions.setdefault(c, len(captions))) for p, c in pairs]
    return FileImageDataset(samples, list(captions), **kw)
