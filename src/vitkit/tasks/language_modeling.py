"""Language modelling: ``vitkit lm train`` (next-token prediction with a GPT) and ``vitkit lm generate RUN``.

:class:`LanguageModeling` reads a UTF-8 text (``tinyshakespeare`` or any file), splits it by position (the first
``train_fraction`` trains, the rest validates), builds a character or byte-level BPE vocabulary, encodes both parts
into memory-mapped token files and trains on random windows of ``block_size + 1`` tokens (``epoch_steps``
batches per epoch). Validation reports the mean next-token loss over every window of the validation part and its
perplexity, and writes a few generated samples to ``samples.txt`` at every evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.lm import (
    LMTokenizer,
    TokenBlocks,
    TokenWindows,
    encode_corpus,
    resolve_corpus,
    split_point,
    text_chunks,
)
from ..models.generation import generate, left_pad
from ..models.gpt import GPT
from ..registry import create_model, model_config
from .base import Batch, Task
from .inputs import shared_across_ranks

__all__ = ["LanguageModeling", "generate_text", "load_lm", "perplexity_of_text"]


def generate_text(
    model: GPT, tokenizer: LMTokenizer, prompts: list[str], max_new_tokens: int = 200, *, do_sample: bool = True,
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
    stop: list[str] | None = None, stream: Callable[[str], None] | None = None,
) -> list[str]:  # fmt: skip
    """Each prompt's continuation (the new text only), generated in one left-padded batch.

    ``stop``: strings that end a continuation (it is cut before the first one); the tokenizer's
    ``<|endoftext|>`` ends one too. ``stream``: called with each new piece of text of the first prompt as it
    comes. ``seed`` makes sampling reproducible. Raises ValueError for an empty prompt, characters a character
    vocabulary lacks, or sampling settings out of range."""
    if not prompts or any(p == "" for p in prompts):
        raise ValueError("every prompt needs at least one character")
    encoded = [tokenizer.encode(p) for p in prompts]
    for text, ids in zip(prompts, encoded, strict=True):
        if len(ids) > model.block_size:
            raise ValueError(f"the prompt {text[:30]!r}... has {len(ids)} tokens, more than the model's context "
                             f"of {model.block_size} tokens")  # fmt: skip
    device = next(model.parameters()).device
    idx, mask = left_pad(encoded)
    rows: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    stops = [s for s in (stop or []) if s]
    printer = _Streamer(stream, stops) if stream is not None else None

    def on_tokens(tokens: torch.Tensor) -> torch.Tensor:
        for i, t in enumerate(tokens.tolist()):
            if finished[i]:
                continue  # a finished row only gets padding
            if t == tokenizer.eos_id:
                finished[i] = True
                continue
            rows[i].append(t)
            text = tokenizer.decode(rows[i])
            finished[i] = any(s in text for s in stops)
            if i == 0 and printer is not None:
                printer.show(text)
        return torch.tensor(finished)

    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    generate(model, idx.to(device), max_new_tokens, attention_mask=mask.to(device), do_sample=do_sample,
             temperature=temperature, top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id, generator=generator,
             on_tokens=on_tokens)  # fmt: skip
    texts = [_cut(tokenizer.decode(ids), stops) for ids in rows]
    if printer is not None:
        printer.finish(texts[0])
    return texts


class _Streamer:
    """Writes the first continuation as it grows, holding back what could still be the start of a stop string or
    an unfinished character (a byte-level token may end mid-character), so that the terminal shows exactly the
    returned text."""

    def __init__(self, write: Callable[[str], None], stops: list[str]) -> None:
        self.write, self.stops, self.shown = write, stops, 0

    def show(self, text: str) -> None:
        text = _cut(text, self.stops)
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        safe = text[: len(text) - hold].rstrip("\ufffd")
        if len(safe) > self.shown:
            self.write(safe[self.shown :])
            self.shown = len(safe)

    def finish(self, text: str) -> None:
        if len(text) > self.shown:
            self.write(text[self.shown :])
        self.shown = len(text)


def _cut(text: str, stops: list[str]) -> str:
    ends = [text.find(s) for s in stops if s in text]
    return text[: min(ends)] if ends else text


@torch.no_grad()
def perplexity_of_text(
    model: GPT, tokenizer: LMTokenizer, path: str | os.PathLike, batch_size: int = 64
) -> dict[str, float]:
    """Mean next-token loss (nats) and perplexity of the model over a whole UTF-8 text file, in consecutive windows
    of the model's context."""
    tokens = encode_corpus(text_chunks(Path(path)), tokenizer, _cache_file(Path(path), tokenizer, "all"))
    blocks = TokenBlocks(tokens, model.block_size)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(blocks), batch_size):
        batch = torch.stack([blocks[j] for j in range(i, min(i + batch_size, len(blocks)))]).to(device)
        logits = model(batch[:, :-1])
        total += float(F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"))
        count += batch[:, 1:].numel()
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "tokens": count}


def _cache_file(path: Path, tokenizer: LMTokenizer, part: str) -> Path:
    """Where a part of a corpus is kept encoded: keyed by the file, its size and time, the vocabulary and the part."""
    stat = path.stat()
    key = hashlib.sha256(
        f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{part}|{tokenizer.tokenizer.to_str()}".encode()
    ).hexdigest()[:20]
    folder = Path(os.environ.get("VITKIT_CACHE") or Path(tempfile.gettempdir()) / "vitkit-tokens")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{path.stem}-{part}-{key}.bin"


def load_lm(run: str | os.PathLike) -> tuple[GPT, LMTokenizer]:
    """The model (eval mode) and tokenizer of a language-model run directory or model file."""
    from ..weights.rebuild import load

    file = Path(run) / "model.safetensors" if Path(run).is_dir() else Path(run)
    if not file.is_file():
        raise FileNotFoundError(f"no model at {file} (give a language-model run directory or model file)")
    if not (file.parent / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer.json beside {file}: give the run directory of a language model"
        )
    model = load(file)
    if not isinstance(model, GPT):
        raise ValueError(f"{run} holds a {type(model).__name__}, not a GPT language model")
    return model.eval(), LMTokenizer.from_file(file.parent / "tokenizer.json")


class LanguageModeling(Task):
    """Next-token prediction with a decoder-only :class:`~vitkit.models.gpt.GPT` on a UTF-8 text."""

    name = "lm"
    options = frozenset({"tokenizer", "block_size", "epoch_steps", "train_fraction"})
    default_model = "gpt_micro"
    selection = ("val_loss", "min")
    loss_label = "token loss"
    quality_curve = ("Perplexity", "validation perplexity", "perplexity", "min")
    input_kind = "texts"
    num_samples, sample_tokens = 2, 200  # written to samples.txt at each evaluation

    def build_data(self, train_data=None, val_data=None):
        cfg = self.cfg
        self.corpus = resolve_corpus(cfg.dataset, cfg.data_dir)
        cut = split_point(self.corpus, cfg.train_fraction)
        self.tokenizer = self._build_tokenizer(cut)
        named = cfg.block_size or cfg.model_args.get("block_size")
        self.block_size = int(named or model_config(cfg.model).get("block_size", 256))
        if train_data is None:
            tokens = self._encoded(0, cut, "train")
            train_data = TokenWindows(tokens, self.block_size, cfg.epoch_steps * cfg.batch_size, cfg.seed)
        if val_data is None:
            val_data = TokenBlocks(self._encoded(cut, None, "val"), self.block_size)
        self.train_data, self.val_data = train_data, val_data
        self.evaluations = 0
        return train_data, val_data

    def _encoded(self, start: int, end: int | None, part: str):
        """A part of the corpus as a memory-mapped token file: encoded once (rank 0 under torchrun; the others wait,
        then read it) and reused by later runs on the same file and vocabulary."""
        import torch.distributed as dist

        out = _cache_file(self.corpus, self.tokenizer, f"{part}{self.cfg.train_fraction}")
        shared = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not shared or dist.get_rank() == 0:
            tokens = encode_corpus(text_chunks(self.corpus, start, end), self.tokenizer, out)
        if shared:
            dist.barrier()
            tokens = encode_corpus(iter(()), self.tokenizer, out)  # written by rank 0: read as it is
        return tokens

    def _build_tokenizer(self, cut: int) -> LMTokenizer:
        """``cfg.tokenizer``: a file or folder to load, ``"bpe"`` (byte-level BPE of ``model_args.vocab_size``,
        default 4096, trained on the training part) or ``"char"`` / None (the characters of the whole text)."""
        cfg = self.cfg
        spec = cfg.tokenizer or "char"
        if spec not in ("char", "bpe"):
            return LMTokenizer.from_file(spec)

        def train() -> LMTokenizer:
            if spec == "char":
                return LMTokenizer.train_char(text_chunks(self.corpus))
            return LMTokenizer.train_bpe(
                text_chunks(self.corpus, 0, cut), int(cfg.model_args.get("vocab_size", 4096))
            )

        return shared_across_ranks(train, lambda tok: LMTokenizer(tok, spec))

    def build_model(self, in_chans: int) -> nn.Module:
        args = {**self.cfg.model_args, "vocab_size": self.tokenizer.vocab_size, "block_size": self.block_size}
        model = create_model(self.cfg.model, **args)
        if not isinstance(model, GPT):
            raise ValueError(f"language modelling needs a GPT (e.g. gpt_micro), got {self.cfg.model!r}")
        return model

    def save_inputs(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / "tokenizer.json")

    def data_config(self) -> dict[str, Any]:
        return {"task": self.name, "dataset": str(self.cfg.dataset), "tokenizer": self.tokenizer.kind,
                "block_size": self.block_size}  # fmt: skip

    def train_batch(self, batch) -> Batch:
        batch = batch.to(self.device, non_blocking=True)
        return {"idx": batch[:, :-1], "targets": batch[:, 1:], "size": batch.shape[0],
                "tokens": batch.shape[0] * (batch.shape[1] - 1)}  # fmt: skip

    eval_batch = train_batch

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        """Mean next-token cross-entropy (every window has the same length, so micro-batch means average right)."""
        logits, loss = model(batch["idx"], batch["targets"])
        return {"loss": loss, "output": logits}

    def eval_step(self, model: nn.Module, batch: Batch, final: bool) -> tuple[dict, Any]:
        self.final_pass = final  # the end-of-run pass writes samples-final.txt, not samples.txt
        logits = model(batch["idx"])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), reduction="sum")
        return {"loss": float(loss), "count": batch["targets"].numel()}, None

    @property
    def eval_batch_size(self) -> int:
        """Validation batches as large as the training ones (the logits of a window are ``block_size x vocab``)."""
        return self.cfg.batch_size

    def metrics(self, sums: dict[str, Any], kept: list[Any], model: nn.Module) -> dict[str, Any]:
        """Validation loss (nats per token) and perplexity; samples appended to ``samples.txt`` (rank 0; not under
        FSDP, whose forward passes need every rank)."""
        from ..engine.distributed import is_sharded

        loss = sums.get("loss", 0.0) / max(sums.get("count", 0), 1)
        self.evaluations += 1
        final = getattr(self, "final_pass", False)
        if (
            self.dist.is_main
            and getattr(self, "run_dir", None) is not None
            and not is_sharded(model)
            and not final
        ):
            self._write_samples(model, self.run_dir / "samples.txt", f"evaluation {self.evaluations}")
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700))}

    def _write_samples(self, model: nn.Module, path: Path, title: str) -> list[str]:
        tok = self.tokenizer
        prompts = ["\n" if tok.kind == "bpe" or "\n" in tok._chars else tok.decode([0])] * self.num_samples
        texts = generate_text(getattr(model, "module", model), self.tokenizer, prompts, self.sample_tokens,
                              temperature=0.8, top_k=200, seed=self.cfg.seed)  # fmt: skip
        with open(path, "a") as f:
            f.write(f"===== {title}\n" + "\n-----\n".join(t for t in texts) + "\n")
        return texts

    def artifacts(self, model: nn.Module, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """``eval.json`` (validation loss and perplexity) and three 300-token samples in ``samples-final.txt``."""
        out = {"val_loss": result["val_loss"], "val_perplexity": result["val_perplexity"]}
        from ..engine.distributed import is_sharded

        (run_dir / "eval.json").write_text(json.dumps(out, indent=2))
        self.num_samples, self.sample_tokens = 3, 300
        if not is_sharded(model):
            self._write_samples(model, run_dir / "samples-final.txt", "final model")
        return out

    @classmethod
    def predict(cls, model: nn.Module, inputs: list[Any], source, out_dir, max_new_tokens: int = 100,
                temperature: float = 0.8, top_k: int | None = 200, top_p: float | None = None, seed: int = 0,
                **options: Any) -> list:  # fmt: skip
        """Each prompt continued (sampled, seeded)."""
        found = Path(source) / "tokenizer.json" if source is not None else None
        if found is None or not found.is_file():
            raise FileNotFoundError(
                f"no tokenizer.json beside the model (in {source}): give the run directory"
            )
        tokenizer = LMTokenizer.from_file(found)
        texts = generate_text(model, tokenizer, [str(s) for s in inputs], max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed)  # fmt: skip
        return [{"prompt": p, "continuation": t} for p, t in zip(inputs, texts, strict=True)]

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        return "\n\n".join(f"{r['prompt']}{r['continuation']}" for r in results)

    @classmethod
    def report(cls, summary: dict[str, Any]) -> str:
        return f"val loss {summary['val_loss']:.4f} (perplexity {summary['val_perplexity']:.2f})"
