"""Parallel text for translation: Multi30k task 1 (en, de, fr, cs captions) as tokenised in-memory pairs."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetNotFoundError
from .text import TextTokenizer

__all__ = ["read_multi30k", "TranslationDataset", "MULTI30K_SPLITS", "parse_pair"]

MULTI30K_SPLITS = (
    "train",
    "val",
    "test_2016_flickr",
    "test_2017_flickr",
    "test_2017_mscoco",
    "test_2018_flickr",
)


def parse_pair(name: str) -> tuple[str, str, str]:
    """``multi30k-de-en`` -> ('multi30k', 'de', 'en'): the dataset and the source -> target languages."""
    parts = name.strip().lower().split("-")
    if len(parts) != 3 or parts[0] != "multi30k" or parts[1] == parts[2]:
        raise ValueError(
            f"translation datasets are named multi30k-SRC-TGT (e.g. multi30k-de-en), got {name!r}"
        )
    return parts[0], parts[1], parts[2]


def read_multi30k(
    data_dir: str | os.PathLike | None, split: str, src_lang: str, tgt_lang: str
) -> tuple[list[str], list[str]]:
    """Aligned (source, target) sentences of a Multi30k task-1 split; ``test`` means ``test_2016_flickr``."""
    from .factory import resolve_data_dir

    split = {"test": "test_2016_flickr", "dev": "val"}.get(split, split)
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"unknown Multi30k split {split!r}; expected one of {list(MULTI30K_SPLITS)}")
    root = Path(resolve_data_dir(data_dir)) / "multi30k" / "task1" / "raw"
    sides = []
    for lang in (src_lang, tgt_lang):
        path = root / f"{split}.{lang}.gz"
        if not path.exists():
            raise DatasetNotFoundError(
                "multi30k", [root], f"{path.name} (Multi30k task 1, one sentence per line)"
            )
        with gzip.open(path, "rt", encoding="utf-8") as f:
            sides.append([line.rstrip("\n").strip() for line in f])
    if len(sides[0]) != len(sides[1]):
        raise ValueError(
            f"Multi30k {split}: {len(sides[0])} {src_lang} lines but {len(sides[1])} {tgt_lang} lines"
        )
    return sides[0], sides[1]


class TranslationDataset(Dataset):
    """Tokenised sentence pairs in memory: ``raw`` (N, S) source ids and ``targets`` (N, T) target ids, both
    ``[CLS] ... [SEP]`` (BOS ... EOS) and padded with ``pad_id``; the texts are kept for BLEU."""

    modality = "translation"

    def __init__(
        self, sources: Sequence[str], targets: Sequence[str], tokenizer: TextTokenizer, max_length: int = 128
    ) -> None:
        if len(sources) != len(targets) or not sources:
            raise ValueError(
                f"need as many sources as targets (and some), got {len(sources)} and {len(targets)}"
            )
        self.sources, self.references = list(sources), list(targets)
        self.raw: Tensor = tokenizer(self.sources, max_length)["input_ids"]
        self.targets: Tensor = tokenizer(self.references, max_length)["input_ids"]
        self.pad_id = tokenizer.pad_id
        self.lengths = (self.raw != self.pad_id).sum(1)
        self.classes: list[str] = []  # not a classification dataset

    def select(self, indices: Tensor) -> TranslationDataset:
        out = object.__new__(TranslationDataset)
        out.sources = [self.sources[i] for i in indices.tolist()]
        out.references = [self.references[i] for i in indices.tolist()]
        out.raw, out.targets, out.pad_id = self.raw[indices], self.targets[indices], self.pad_id
        out.lengths, out.classes = self.lengths[indices], []
        return out

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.raw[index], self.targets[index]
