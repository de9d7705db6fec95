"""Translation with the Trainer: ``vitkit translate train`` and ``vitkit translate RUN "a sentence"``.

:class:`TranslationTrainer` is the :class:`~vitkit.train.trainer.Trainer` (schedule, checkpoints and exact
resume, length-bucketed batches, torchrun) with teacher forcing: the model reads the source and the target shifted
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
from .distributed import all_reduce_sum
from .trainer import Trainer, fit_trainer

__all__ = ["TranslationTrainer", "train_translation", "translate", "corpus_bleu"]

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


class TranslationTrainer(Trainer):
    """Encoder-decoder training on a ``multi30k-SRC-TGT`` dataset (e.g. ``multi30k-de-en``)."""

    val_split = "val"  # model selection on Multi30k val; test_2016_flickr is scored once, at the end

    def detect_modality(self, train_data=None) -> str:
        return "translation"

    def _build_tokenizer(self) -> TextTokenizer:
        """``cfg.tokenizer``, else a joint BPE vocabulary (both languages) trained on the training pairs."""
        cfg = self.cfg
        if cfg.tokenizer:
            return TextTokenizer.from_file(cfg.tokenizer, cfg.max_length)
        _, src, tgt = parse_pair(cfg.dataset)
        sources, targets = read_multi30k(cfg.data_dir, "train", src, tgt)
        vocab = int(cfg.model_args.get("vocab_size", 8000))
        return TextTokenizer.train_bpe(sources + targets, vocab_size=vocab, max_length=cfg.max_length)

    def _build_dataset(self, split: str) -> TranslationDataset:
        _, src, tgt = parse_pair(self.cfg.dataset)
        split = self.val_split if split == self.cfg.val_split else split
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

    def data_config(self) -> dict[str, Any]:
        _, src, tgt = parse_pair(self.cfg.dataset)
        return {"dataset": self.cfg.dataset, "modality": "translation", "src_lang": src, "tgt_lang": tgt,
                "max_length": self.cfg.max_length}  # fmt: skip

    def _target(self, y: Tensor) -> Tensor:
        return y[:, : int((y != self.tokenizer.pad_id).sum(1).max())]  # cut to the batch's longest target

    def forward_step(self, x: Tensor, target: Tensor) -> Tensor:
        return self.step_model(x, self._target(target)[:, :-1])  # teacher forcing: BOS y1 .. y(n-1)

    def _token_loss(
        self, logits: Tensor, target: Tensor, smoothing: float, reduction: str = "mean"
    ) -> Tensor:
        gold = self._target(target)[:, 1 : logits.shape[1] + 1]  # y1 .. yn EOS
        return F.cross_entropy(logits.float().flatten(0, 1), gold.flatten(), ignore_index=self.tokenizer.pad_id,
                               label_smoothing=smoothing, reduction=reduction)  # fmt: skip

    def _default_loss(self, logits: Tensor, target: Tensor, images: Tensor | None = None) -> Tensor:
        return self._token_loss(logits, target, self.cfg.label_smoothing)

    def count_correct(self, outputs, targets: Tensor) -> Tensor:
        return torch.zeros((), device=self.device)  # reported per token on the validation split instead

    @torch.inference_mode()
    def evaluate(self, model: nn.Module | None = None, return_outputs: bool = False) -> dict[str, Any]:
        """Token loss (no smoothing) and accuracy, and greedy BLEU on the validation split."""
        model = model or self.model
        was_training = model.training
        model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        for x, y in self.val_loader:
            x, y = self._prepare(x, train=False), y.to(self.device)
            logits = model(x, self._target(y)[:, :-1])
            gold = self._target(y)[:, 1:]
            keep = gold != self.tokenizer.pad_id
            loss_sum += float(self._token_loss(logits, y, 0.0, reduction="sum"))
            correct += int((logits.argmax(-1) == gold)[keep].sum())
            count += int(keep.sum())
        loss_sum, correct, count = all_reduce_sum(loss_sum, correct, count, device=self.device)
        out = {"val_loss": loss_sum / max(count, 1), "val_token_acc": correct / max(count, 1)}
        if self.is_main:
            hyps = translate(model, self.tokenizer, self.val_data.sources)
            out["val_bleu"] = corpus_bleu(hyps, self.val_data.references)
        model.train(was_training)
        return out

    def finish(self, stopped_early: bool = False) -> dict[str, Any]:
        from ..plots import plot_training_curves
        from ..weights.io import save as save_model

        model = self.final_model()
        result = self.evaluate(model)
        summary: dict[str, Any] = {
            "run_dir": str(self.run_dir), "epochs": self.epoch, "val_loss": result["val_loss"],
            "val_token_acc": result["val_token_acc"], "val_bleu": result.get("val_bleu"),
            "elapsed_s": self.history[-1]["elapsed"] if self.history else 0.0,
            "params": sum(p.numel() for p in model.parameters()), "world_size": self.dist.world_size,
            "stopped_early": stopped_early,
        }  # fmt: skip
        if not self.is_main:
            return summary
        save_model(model, self.run_dir / "model.safetensors", data_config=self.data_config())
        _, src, tgt = parse_pair(self.cfg.dataset)
        sources, references = read_multi30k(self.cfg.data_dir, "test", src, tgt)
        for name, beam in (("greedy", 1), ("beam4", 4)):
            start = time.perf_counter()
            hyps = translate(model, self.tokenizer, sources, beam_size=beam)
            summary[f"test_bleu_{name}"] = corpus_bleu(hyps, references)
            summary[f"test_decode_s_{name}"] = time.perf_counter() - start
        (self.run_dir / "eval.json").write_text(
            json.dumps({k: v for k, v in summary.items() if "test" in k}, indent=2)
        )
        plot_training_curves(
            self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", loss_label="token loss"
        )
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def train_translation(
    recipe: str | None = None, config_file: str | Path | None = None, resume: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:  # fmt: skip
    """Python API of ``vitkit translate train``."""
    return fit_trainer(TranslationTrainer, recipe, config_file, resume, **overrides)


def load_translator(run: str | Path) -> tuple[Seq2SeqTransformer, TextTokenizer]:
    """The model and tokenizer of a translation run directory."""
    from ..weights.io import load

    run = Path(run)
    for name in ("model.safetensors", "tokenizer.json"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run} is not a finished translation run (no {name})")
    model = load(run / "model.safetensors")
    if not isinstance(model, Seq2SeqTransformer):
        raise ValueError(f"{run} holds a {type(model).__name__}, not a translation model")
    return model.eval(), TextTokenizer.from_file(run / "tokenizer.json", model.max_len)
