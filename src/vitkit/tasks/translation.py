"""Translation: ``vitkit translate train`` and ``vitkit translate RUN "a sentence"``.

:class:`Translation` trains an encoder-decoder with teacher forcing: the model reads the source and the target shifted
right, the loss is label-smoothed cross-entropy over the target tokens (padding ignored). Validation reports that
loss, token accuracy and corpus BLEU (sacrebleu, greedy decoding) on Multi30k ``val``; at the end BLEU on
``test_2016_flickr`` with greedy and beam decoding goes to ``summary.json`` / ``eval.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.text import TextTokenizer
from ..data.translation import TranslationDataset, parse_pair, read_multi30k
from ..models.seq2seq import Seq2SeqTransformer, beam_search, greedy_decode
from ..registry import create_model
from .base import Batch, Task
from .inputs import cut_to_longest, shared_across_ranks

__all__ = ["Translation", "translate", "corpus_bleu", "load_translator"]

log = logging.getLogger(__name__)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU (13a tokenisation, cased) of detokenised sentences."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@torch.no_grad()
def translate(
    model: Seq2SeqTransformer, tokenizer: TextTokenizer, sentences: list[str], beam_size: int = 1,
    max_len: int = 64, batch_size: int = 128,
) -> list[str]:  # fmt: skip
    """Sentences -> translations (greedy when ``beam_size`` is 1, else beam search), in order."""
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, len(sentences), batch_size):
        src = tokenizer(sentences[i : i + batch_size], model.max_len)["input_ids"].to(device)
        ids = (
            greedy_decode(model, src, max_len)
            if beam_size == 1
            else beam_search(model, src, beam_size, max_len)
        )
        out += [tokenizer.decode(row) for row in ids.tolist()]
    return out


class Translation(Task):
    """Encoder-decoder training on a ``multi30k-SRC-TGT`` dataset (e.g. ``multi30k-de-en``)."""

    name = "translation"
    options = frozenset({"tokenizer", "max_length", "label_smoothing", "train_subset"})
    default_model = "transformer_small"
    # BLEU is decoded on rank 0 alone; the token loss is reduced over ranks, so every rank picks the same weights
    selection = ("val_loss", "min")
    loss_label = "token loss"
    quality_curve = ("BLEU", "validation BLEU (greedy)", "bleu", "max")
    val_split_name = "val"  # model selection on Multi30k val; test_2016_flickr is scored once, at the end

    def build_data(self, train_data=None, val_data=None):
        cfg = self.cfg
        self.tokenizer = self._build_tokenizer()
        self.train_data = train_data if train_data is not None else self._dataset("train")
        if cfg.train_subset is not None:
            from ..data import stratified_subset

            self.train_data = stratified_subset(self.train_data, cfg.train_subset, cfg.seed)
        self.val_data = (
            val_data
            if val_data is not None
            else self._dataset(self.val_split_name if cfg.val_split == "test" else cfg.val_split)
        )
        return self.train_data, self.val_data

    def _build_tokenizer(self) -> TextTokenizer:
        """``cfg.tokenizer``, else a joint BPE vocabulary (both languages) trained on the training pairs."""
        cfg = self.cfg
        if cfg.tokenizer:
            return TextTokenizer.from_file(cfg.tokenizer, cfg.max_length)
        _, src, tgt = parse_pair(cfg.dataset)
        sources, targets = read_multi30k(cfg.data_dir, "train", src, tgt)
        vocab = int(cfg.model_args.get("vocab_size", 8000))
        return shared_across_ranks(
            lambda: TextTokenizer.train_bpe(sources + targets, vocab_size=vocab, max_length=cfg.max_length),
            lambda tok: TextTokenizer(tok, cfg.max_length),
        )

    def _dataset(self, split: str) -> TranslationDataset:
        _, src, tgt = parse_pair(self.cfg.dataset)
        sources, targets = read_multi30k(self.cfg.data_dir, split, src, tgt)
        return TranslationDataset(sources, targets, self.tokenizer, self.cfg.max_length)

    def build_model(self, in_chans: int) -> nn.Module:
        tok, cfg = self.tokenizer, self.cfg
        args = {**cfg.model_args, "vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "bos_id": tok.cls_id,
                "eos_id": tok.sep_id, "max_len": max(cfg.max_length, int(cfg.model_args.get("max_len", 0)))}  # fmt: skip
        model = create_model(cfg.model, **args)
        if not isinstance(model, Seq2SeqTransformer):
            raise ValueError(
                f"translation needs an encoder-decoder (e.g. transformer_small), got {cfg.model!r}"
            )
        return model

    def save_inputs(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / "tokenizer.json")

    def data_config(self) -> dict[str, Any]:
        _, src, tgt = parse_pair(self.cfg.dataset)
        return {"task": self.name, "dataset": self.cfg.dataset, "modality": "translation", "src_lang": src,
                "tgt_lang": tgt, "max_length": self.cfg.max_length}  # fmt: skip

    def train_batch(self, batch) -> Batch:
        x, y = batch
        y = y.to(self.device, non_blocking=True)
        pad = self.tokenizer.pad_id
        return {"source": cut_to_longest(x.to(self.device, non_blocking=True), pad), "target": cut_to_longest(y, pad),
                "size": y.shape[0]}  # fmt: skip

    eval_batch = train_batch

    def _token_loss(
        self, logits: Tensor, target: Tensor, smoothing: float, reduction: str = "mean"
    ) -> Tensor:
        gold = target[:, 1 : logits.shape[1] + 1]  # y1 .. yn EOS
        return F.cross_entropy(logits.float().flatten(0, 1), gold.flatten(), ignore_index=self.tokenizer.pad_id,
                               label_smoothing=smoothing, reduction=reduction)  # fmt: skip

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        """Token cross-entropy. Accumulating or data-parallel, the sum over tokens and their count go back too: the
        engine divides by the tokens of the whole batch (a mean per micro-batch would over-weight short ones)."""
        logits = model(batch["source"], batch["target"][:, :-1])  # teacher forcing: BOS y1 .. y(n-1)
        if self.cfg.accum_steps == 1 and not self.dist.enabled:
            return {
                "loss": self._token_loss(logits, batch["target"], self.cfg.label_smoothing),
                "output": logits,
            }
        total = self._token_loss(logits, batch["target"], self.cfg.label_smoothing, reduction="sum")
        tokens = int((batch["target"][:, 1:] != self.tokenizer.pad_id).sum())
        return {"loss": total / max(tokens, 1), "loss_sum": total, "weight": tokens, "output": logits}

    def eval_step(self, model: nn.Module, batch: Batch, final: bool) -> tuple[dict, Any]:
        """Token loss (no smoothing) and token accuracy."""
        y = batch["target"]
        logits = model(batch["source"], y[:, :-1])
        gold = y[:, 1:]
        keep = gold != self.tokenizer.pad_id
        return {"loss": float(self._token_loss(logits, y, 0.0, reduction="sum")),
                "correct": int((logits.argmax(-1) == gold)[keep].sum()), "count": int(keep.sum())}, None  # fmt: skip

    def metrics(self, sums: dict[str, Any], kept: list[Any], model: nn.Module) -> dict[str, Any]:
        """Token loss and accuracy, and greedy corpus BLEU on the validation split (rank 0)."""
        count = max(sums.get("count", 0), 1)
        out = {"val_loss": sums.get("loss", 0.0) / count, "val_token_acc": sums.get("correct", 0) / count}
        if self.dist.is_main:
            out["val_bleu"] = corpus_bleu(translate(model, self.tokenizer, self.val_data.sources),
                                          self.val_data.references)  # fmt: skip
        return out

    def artifacts(self, model: nn.Module, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """BLEU on ``test_2016_flickr`` with greedy and beam-4 decoding (``eval.json``)."""
        _, src, tgt = parse_pair(self.cfg.dataset)
        sources, references = read_multi30k(self.cfg.data_dir, "test", src, tgt)
        out: dict[str, Any] = {}
        for name, beam in (("greedy", 1), ("beam4", 4)):
            start = time.perf_counter()
            hyps = translate(model, self.tokenizer, sources, beam_size=beam)
            out[f"test_bleu_{name}"] = corpus_bleu(hyps, references)
            out[f"test_decode_s_{name}"] = time.perf_counter() - start
        (run_dir / "eval.json").write_text(json.dumps(out, indent=2))
        return out

    input_kind = "texts"

    @classmethod
    def predict(cls, model: nn.Module, inputs: list[Any], source, out_dir, beam: int = 4, max_len: int = 64,
                **options: Any) -> list:  # fmt: skip
        """Each sentence translated (beam search; ``beam=1`` is greedy)."""
        from .text_classification import run_tokenizer

        if any(not str(s).strip() for s in inputs):
            raise ValueError("empty sentence: nothing to translate")
        hyps = translate(model, run_tokenizer(source, model), [str(s) for s in inputs], beam, max_len)
        return [{"text": s, "translation": h} for s, h in zip(inputs, hyps, strict=True)]

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        return "\n".join(f"{r['text']}\n  -> {r['translation']}" for r in results)

    @classmethod
    def report(cls, summary: dict[str, Any]) -> str:
        return (f"val BLEU: {summary['val_bleu']:.2f}  test_2016_flickr BLEU: greedy {summary['test_bleu_greedy']:.2f}, "
                f"beam 4 {summary['test_bleu_beam4']:.2f}")  # fmt: skip


def load_translator(run: str | Path) -> tuple[Seq2SeqTransformer, TextTokenizer]:
    """The model and tokenizer of a translation run directory."""
    from ..weights.rebuild import load

    run = Path(run)
    for name in ("model.safetensors", "tokenizer.json"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run} is not a finished translation run (no {name})")
    model = load(run / "model.safetensors")
    if not isinstance(model, Seq2SeqTransformer):
        raise ValueError(f"{run} holds a {type(model).__name__}, not a translation model")
    return model.eval(), TextTokenizer.from_file(run / "tokenizer.json", model.max_len)
