"""Text: HuggingFace ``tokenizers`` behind a small batching API, and the SST-2 sentiment data.

:class:`TextTokenizer` loads an existing vocabulary (``tokenizer.json`` or a BERT ``vocab.txt``) or trains a
WordPiece one on a corpus, and turns a batch of strings into ``input_ids`` / ``attention_mask`` tensors, padded to
the longest sequence and truncated to ``max_length`` (with the special tokens kept).
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetNotFoundError, check_split

__all__ = [
    "TextTokenizer",
    "TextClassificationDataset",
    "read_sst2",
    "SST2_CLASSES",
    "TEXT_DATASETS",
    "is_text_dataset",
    "read_text_split",
    "build_text_dataset",
]

SST2_CLASSES = ["negative", "positive"]
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


_UNSEEN_PROBE = "\u0378 \u20ac \U0001f600 ?"  # an unassigned code point, the euro sign, an emoji


def _use_unk_token(tokenizer) -> None:
    """Make characters the vocabulary lacks encode as ``[UNK]`` (byte-level models never meet one).

    The model's own unknown token may be missing from the vocabulary (``tokenizers``' SentencePiece BPE
    defaults to ``<unk>``, a vocabulary trained with BERT's specials holds ``[UNK]``) or unset (a BPE then
    drops unseen characters silently): both are pointed at ``[UNK]``. A model whose unknown token cannot be
    set (Unigram) is checked on a few unseen characters and refused at construction if it cannot encode them.
    """
    model = tokenizer.model
    if hasattr(model, "unk_token"):
        unk = model.unk_token
        if unk is None or tokenizer.token_to_id(unk) is None:
            model.unk_token = "[UNK]"
    try:
        tokenizer.encode(_UNSEEN_PROBE)
    except Exception as e:  # tokenizers raises a plain Exception for a missing unk
        raise ValueError(
            f"this {type(model).__name__} tokenizer cannot encode characters outside its vocabulary ({e}); "
            "give it an unknown token in its vocabulary"
        ) from e


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with BERT's special tokens, batching to padded tensors."""

    def __init__(self, tokenizer, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        missing = [t for t in _SPECIAL if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            tokenizer.token_to_id(t) for t in _SPECIAL
        )
        _use_unk_token(tokenizer)
        tokenizer.no_padding()
        tokenizer.no_truncation()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, max_length: int = 128, lowercase: bool = True
    ) -> TextTokenizer:
        """Load ``tokenizer.json``, a BERT ``vocab.txt``, or a folder holding either."""
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        path = Path(path)
        if path.is_dir():
            found = [path / n for n in ("tokenizer.json", "vocab.txt") if (path / n).exists()]
            if not found:
                raise FileNotFoundError(f"{path} holds no tokenizer.json or vocab.txt")
            path = found[0]
        if not path.exists():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if path.suffix == ".json":
            return cls(Tokenizer.from_file(str(path)), max_length)
        inner = BertWordPieceTokenizer(str(path), unk_token="[UNK]", lowercase=lowercase)._tokenizer
        return cls(inner, max_length)

    @classmethod
    def train_wordpiece(
        cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2, lowercase: bool = True,
        max_length: int = 128,
    ) -> TextTokenizer:  # fmt: skip
        """Train a BERT-style WordPiece vocabulary on ``texts``."""
        from tokenizers.implementations import BertWordPieceTokenizer
        from tokenizers.processors import BertProcessing

        tok = BertWordPieceTokenizer(unk_token="[UNK]", lowercase=lowercase)
        tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(_SPECIAL))  # fmt: skip
        inner = tok._tokenizer
        inner.post_processor = BertProcessing(
            ("[SEP]", inner.token_to_id("[SEP]")), ("[CLS]", inner.token_to_id("[CLS]"))
        )  # [CLS] text [SEP], as a loaded BERT vocabulary does
        return cls(inner, max_length)

    @classmethod
    def train_bpe(
        cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2, max_length: int = 128
    ) -> TextTokenizer:
        """Train a SentencePiece-style BPE vocabulary (whitespace kept in the pieces, so decoding gives the text
        back exactly: what translation needs for BLEU), with BERT's special tokens; ``[CLS] text [SEP]``."""
        from tokenizers import SentencePieceBPETokenizer
        from tokenizers.processors import TemplateProcessing

        tok = SentencePieceBPETokenizer(unk_token="[UNK]")  # its default '<unk>' is not in the vocabulary
        tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(_SPECIAL))  # fmt: skip
        inner = tok._tokenizer
        cls_id, sep_id = inner.token_to_id("[CLS]"), inner.token_to_id("[SEP]")
        inner.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
        )
        return cls(inner, max_length)

    def save(self, path: str | os.PathLike) -> Path:
        from ..weights.files import atomic_write

        return atomic_write(path, lambda tmp: self.tokenizer.save(str(tmp)))

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None) -> dict[str, Tensor]:
        """Strings -> {'input_ids': (B, L) int64, 'attention_mask': (B, L) int64, 1 = token}; ``[CLS] ... [SEP]``."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to tokenize (an empty batch)")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        limit = max_length or self.max_length
        if limit < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {limit}")
        encodings = self.tokenizer.encode_batch(texts)
        ids = [self._truncate(e.ids, limit) for e in encodings]
        longest = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def _truncate(self, ids: list[int], limit: int) -> list[int]:
        """At most ``limit`` ids: a longer encoding loses text, never its final [SEP]; one of exactly ``limit``
        ids is kept whole (as HF's ``truncation=True, max_length=limit``)."""
        if len(ids) <= limit:
            return list(ids)
        return ids[: limit - 1] + [self.sep_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text, special tokens (and anything after the first [SEP]) dropped."""
        ids = [int(i) for i in ids]
        if self.sep_id in ids:
            ids = ids[: ids.index(self.sep_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def read_sst2(data_dir: str | os.PathLike | None = None, split: str = "train") -> tuple[list[str], list[int]]:
    """SST-2 (GLUE) sentences and labels (0 negative, 1 positive); ``split`` is 'train' or 'dev'."""
    from .factory import resolve_data_dir

    check_split(split, ("train", "dev"))
    root = Path(resolve_data_dir(data_dir))
    path = root / "sst2" / f"{split}.tsv.gz"
    if not path.exists():
        raise DatasetNotFoundError("sst2", [path.parent], f"{path.name} (GLUE SST-2, sentence<TAB>label)")
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0][:2] != ["sentence", "label"]:
        raise ValueError(f"{path}: expected a 'sentence<TAB>label' header, got {rows[:1]}")
    sentences, labels = [], []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[1] not in ("0", "1"):
            raise ValueError(f"{path}:{n}: expected 'sentence<TAB>0|1', got {row!r}")
        sentences.append(row[0].strip())
        labels.append(int(row[1]))
    return sentences, labels


class TextClassificationDataset(Dataset):
    """Tokenised sentences in memory: ``raw`` (N, L) int64 token ids padded with ``pad_id``, ``targets`` (N,).

    Batches are cut to their longest sentence by the Trainer, so padding to the corpus maximum costs nothing.
    """

    modality = "text"

    def __init__(
        self, input_ids: Tensor, targets: Sequence[int] | Tensor, classes: Sequence[str], pad_id: int
    ):
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(
                f"input_ids must be int64 (N, L), got {input_ids.dtype} {tuple(input_ids.shape)}"
            )
        self.raw = input_ids
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        if len(self.targets) != len(self.raw):
            raise ValueError(f"{len(self.raw)} sentences but {len(self.targets)} labels")
        self.classes, self.pad_id = list(classes), int(pad_id)
        self.lengths = (self.raw != self.pad_id).sum(1)  # for length-bucketed batches

    @classmethod
    def from_texts(
        cls, texts: Sequence[str], labels: Sequence[int], classes: Sequence[str], tokenizer: TextTokenizer
    ) -> TextClassificationDataset:
        return cls(tokenizer(texts)["input_ids"], labels, classes, tokenizer.pad_id)

    def select(self, indices: Tensor) -> TextClassificationDataset:
        """The sentences at ``indices``, as a new in-memory dataset."""
        return TextClassificationDataset(self.raw[indices], self.targets[indices], self.classes, self.pad_id)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.raw[index], int(self.targets[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, classes={len(self.classes)}, max_len={self.raw.shape[1]})"
        )


# name -> (reader(data_dir, split) -> (texts, labels), class names, {vitkit split: the dataset's split})
TEXT_DATASETS = {
    "sst2": (read_sst2, SST2_CLASSES, {"train": "train", "test": "dev", "val": "dev", "dev": "dev"}),
}


def is_text_dataset(name: str | None) -> bool:
    return name is not None and name.strip().lower().replace("-", "") in TEXT_DATASETS


def read_text_split(name: str, split: str, data_dir: str | os.PathLike | None = None):
    """(texts, labels, classes) of a text dataset split (``test`` means SST-2's labelled GLUE dev set)."""
    key = name.strip().lower().replace("-", "")
    if key not in TEXT_DATASETS:
        raise ValueError(f"unknown text dataset {name!r}; known: {', '.join(sorted(TEXT_DATASETS))}")
    reader, classes, splits = TEXT_DATASETS[key]
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for {name}; expected one of {list(splits)}")
    texts, labels = reader(data_dir, splits[split])
    return texts, labels, classes


def build_text_dataset(
    name: str, split: str, tokenizer: TextTokenizer, data_dir: str | os.PathLike | None = None
) -> TextClassificationDataset:
    texts, labels, classes = read_text_split(name, split, data_dir)
    return TextClassificationDataset.from_texts(texts, labels, classes, tokenizer)
