"""Language-model data: a tokenizer for causal models, a UTF-8 corpus read in chunks, and token streams.

:class:`LMTokenizer` wraps a HuggingFace ``tokenizers.Tokenizer``: character level (the vocabulary is the set of
characters of the training text, as nanoGPT's ``shakespeare_char``) or byte-level BPE (GPT-2's scheme: trained on
the corpus, or loaded from a GPT-2 ``vocab.json`` + ``merges.txt`` or a ``tokenizer.json``).

A corpus is split by position (the first 90% trains, the rest validates: the split of every small-GPT write-up),
read in chunks and encoded into a ``uint16`` (``uint32`` for vocabularies over 65,535) file that is memory-mapped,
so a corpus larger than memory trains. :class:`TokenWindows` draws random windows of ``block_size + 1`` tokens
from it (new ones every epoch); :class:`TokenBlocks` cuts it into consecutive windows for evaluation.
"""

from __future__ import annotations

import codecs
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "LMTokenizer",
    "text_chunks",
    "split_point",
    "encode_corpus",
    "TokenWindows",
    "TokenBlocks",
    "resolve_corpus",
]

EOT = "<|endoftext|>"
CHUNK_BYTES = 1 << 20


def resolve_corpus(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """A corpus name or path -> its UTF-8 text file. ``tinyshakespeare`` is ``DATA/tinyshakespeare/input.txt``
    (``DATA``: ``data_dir``, ``$VITKIT_DATA`` or ``./data``); anything else is a path to a text file."""
    from .factory import resolve_data_dir

    if name == "tinyshakespeare":
        path = resolve_data_dir(data_dir) / "tinyshakespeare" / "input.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"tinyshakespeare not found at {path}: pass --data-dir (the folder holding tinyshakespeare/input.txt)"
            )
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path} (a UTF-8 text file, or 'tinyshakespeare')")
    return path


def split_point(path: Path, fraction: float) -> int:
    """The byte offset where the validation part begins: ``fraction`` of the file, moved forward to the start of
    a UTF-8 character (for ASCII text this is nanoGPT's ``int(n * fraction)`` character split)."""
    if not 0 < fraction < 1:
        raise ValueError(f"the training fraction must be in (0, 1), got {fraction}")
    size = path.stat().st_size
    cut = int(size * fraction)
    with open(path, "rb") as f:
        f.seek(cut)
        tail = f.read(4)
    for b in tail:
        if b & 0xC0 != 0x80:  # not a continuation byte
            break
        cut += 1
    return cut


def text_chunks(path: Path, start: int = 0, end: int | None = None) -> Iterator[str]:
    """The UTF-8 text of bytes ``start:end`` of ``path`` in chunks of about 1 MiB, each ending at a line break
    where there is one (so that no word is cut in two for a BPE).

    Raises:
        ValueError: the file is empty, or a byte sequence is not UTF-8 (naming the byte offset).
    """
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty: no text to read")
    end = size if end is None else end
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    carry = ""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            data = f.read(min(CHUNK_BYTES, end - pos))
            if not data:
                raise ValueError(
                    f"{path} ended at byte {pos}, before byte {end}: was it changed while being read?"
                )
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk
            try:
                text = decoder.decode(data, final=pos + len(data) >= end)
            except UnicodeDecodeError as e:  # e.start counts from the first pending byte
                where = pos - pending + e.start
                raise ValueError(
                    f"{path} is not UTF-8 text: byte {where} ({e.object[e.start : e.start + 1]!r}) {e.reason}"
                ) from None
            pos += len(data)
            text = carry + text
            cut = text.rfind("\n") + 1 if pos < end else len(text)
            if cut == 0:
                cut = len(text)
            carry = text[cut:]
            if text[:cut]:
                yield text[:cut]
    if carry:
        yield carry


class LMTokenizer:
    """A ``tokenizers.Tokenizer`` for a causal language model: ``encode(text) -> ids``, ``decode(ids) -> text``.

    ``kind``: ``"char"`` (one token per character; characters outside the vocabulary are refused by name) or
    ``"bpe"`` (byte level: any text encodes). ``eos_id``: the ``<|endoftext|>`` token's id, if the vocabulary has it.
    """

    def __init__(self, tokenizer, kind: str) -> None:
        if kind not in ("char", "bpe"):
            raise ValueError(f"tokenizer kind must be 'char' or 'bpe', got {kind!r}")
        self.tokenizer, self.kind = tokenizer, kind
        self.eos_id = tokenizer.token_to_id(EOT)
        self._chars = set(tokenizer.get_vocab()) if kind == "char" else None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @classmethod
    def train_char(cls, chunks) -> LMTokenizer:
        """Character level: every character that occurs in ``chunks`` (strings), in code-point order."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        chars: set[str] = set()
        for chunk in chunks:
            chars.update(chunk)
        if not chars:
            raise ValueError("no text to build a character vocabulary from")
        vocab = {c: i for i, c in enumerate(sorted(chars))}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=sorted(chars)[0]))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return cls(tok, "char")

    @classmethod
    def train_bpe(cls, chunks, vocab_size: int = 4096) -> LMTokenizer:
        """Byte-level BPE (GPT-2's pre-tokenisation) trained on ``chunks``, with ``<|endoftext|>`` as id 0."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
        tok.train_from_iterator(chunks, trainer)
        return cls(tok, "bpe")

    @classmethod
    def from_gpt2_files(cls, vocab: str | os.PathLike, merges: str | os.PathLike) -> LMTokenizer:
        """GPT-2's own files: ``vocab.json`` and ``merges.txt`` (byte-level BPE, no prefix space)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return cls(tok, "bpe")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LMTokenizer:
        """A ``tokenizer.json`` (vitkit's or GPT-2's), or a folder holding one or ``vocab.json`` + ``merges.txt``."""
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                return cls.from_gpt2_files(path / "vocab.json", path / "merges.txt")
            else:
                raise FileNotFoundError(f"{path} holds neither tokenizer.json nor vocab.json + merges.txt")
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        tok = Tokenizer.from_file(str(path))
        kind = "char" if type(tok.model).__name__ == "WordLevel" else "bpe"
        return cls(tok, kind)

    def save(self, path: str | os.PathLike) -> Path:
        from ..weights.files import atomic_write

        return atomic_write(Path(path), lambda tmp: self.tokenizer.save(str(tmp)))

    def encode(self, text: str) -> list[int]:
        """Text -> token ids. Raises ValueError for characters a character vocabulary lacks (named)."""
        if self._chars is not None:
            unknown = sorted(set(text) - self._chars)
            if unknown:
                raise ValueError(
                    f"characters not in the model's character vocabulary: {''.join(unknown)!r} "
                    f"({len(self._chars)} characters are known)"
                )
        return self.tokenizer.encode(text).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def encode_corpus(chunks, tokenizer: LMTokenizer, out: str | os.PathLike, reuse: bool = True) -> np.memmap:
    """Encode text chunks into ``out`` (raw ``uint16``, or ``uint32`` for a vocabulary over 65,535), written chunk by
    chunk to a temporary file of this process and renamed into place (concurrent writers never mix); returns it
    memory-mapped read-only. ``reuse``: an existing ``out`` (complete, as only renames create it) is read as it is."""
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    out = Path(out)
    if reuse and out.is_file() and out.stat().st_size > 0:
        return np.memmap(out, dtype=dtype, mode="r")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    count = 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            ids = np.asarray(tokenizer.encode(chunk), dtype=dtype)
            f.write(ids.tobytes())
            count += len(ids)
    os.replace(tmp, out)
    if count == 0:
        raise ValueError(f"no tokens in the text encoded into {out}")
    return np.memmap(out, dtype=dtype, mode="r")


class TokenWindows(Dataset):
    """Random training windows of a token stream: item ``i`` is ``block_size + 1`` consecutive tokens (inputs and
    the next-token targets) starting at an offset drawn from (``seed``, epoch, ``i``); :meth:`set_epoch` draws new
    ones. The epoch is kept in shared memory, so DataLoader worker processes (persistent ones too) see it.

    ``num_windows`` is the length of an epoch (steps per epoch x batch size), not the corpus size."""

    modality = "lm"

    def __init__(self, tokens: np.ndarray, block_size: int, num_windows: int, seed: int = 0) -> None:
        if len(tokens) < block_size + 2:
            raise ValueError(
                f"the training text has {len(tokens)} tokens: too few for windows of {block_size} + 1 tokens"
            )
        self.tokens, self.block_size, self.num_windows, self.seed = tokens, block_size, num_windows, seed
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> Tensor:
        rng = np.random.default_rng((self.seed, int(self.epoch), int(index)))
        start = int(rng.integers(0, len(self.tokens) - self.block_size - 1))
        return torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))


class TokenBlocks(Dataset):
    """Consecutive windows of ``block_size + 1`` tokens overlapping by one: every token is predicted once, but for
    the last ``(len - 1) % block_size`` (a tail shorter than a window, left out)."""

    modality = "lm"

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        if len(tokens) < 2:
            raise ValueError(f"the validation text has {len(tokens)} tokens: at least 2 are needed")
        self.tokens, self.block_size = tokens, block_size
        self.count = max(1, (len(tokens) - 1) // block_size)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Tensor:
        start = index * self.block_size
        window = self.tokens[start : start + self.block_size + 1].astype(np.int64)
        return torch.from_numpy(window)
