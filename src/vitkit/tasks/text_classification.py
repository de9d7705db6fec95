"""Text classification: a BERT encoder with a classifier head on labelled sentences (e.g. SST-2).

The tokenizer is ``tokenizer`` (a ``tokenizer.json`` / ``vocab.txt``), else the one beside ``init_from``, else a
WordPiece vocabulary trained on the training sentences; the run keeps it as ``tokenizer.json``. ``init_from``
starts from a HuggingFace BERT folder or a vitkit text / MLM run (its encoder) with a new head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .base import Batch
from .classification import ClassifierTask
from .inputs import TOKENIZER_FILES, build_tokenizer, cut_to_longest, text_datasets

__all__ = ["TextClassification", "build_text_model", "run_tokenizer"]


def build_text_model(cfg, num_classes: int, tokenizer) -> nn.Module:
    """A text classifier: a HuggingFace BERT folder or vitkit text run (``init_from``) with a new head, or a fresh
    ``cfg.model`` sized to the tokenizer's vocabulary."""
    from ..registry import create_model
    from ..weights.hub import local_folder
    from ..weights.rebuild import load
    from .finetune import resolve_source

    if cfg.init_from:
        src = Path(local_folder(cfg.init_from, TOKENIZER_FILES))  # an hf-hub: id: its snapshot folder
        if (src / "config.json").exists():
            from ..weights.hf_bert import bert_from_huggingface

            model = bert_from_huggingface(src, num_classes=num_classes)
        else:  # a vitkit text run or file; an MLM pre-training run gives its encoder
            model = load(resolve_source(src))
            model.reset_classifier(num_classes)
        vocab = model.embeddings.word.num_embeddings
        if tokenizer.vocab_size > vocab:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's table {vocab}")
        return model
    return create_model(cfg.model, num_classes=num_classes, vocab_size=tokenizer.vocab_size,
                        pad_token_id=tokenizer.pad_id, **cfg.model_args)  # fmt: skip


def run_tokenizer(source: Path | None, model: nn.Module):
    """The ``tokenizer.json`` beside a text model (what its token ids mean)."""
    from ..data.text import TextTokenizer

    found = Path(source) / "tokenizer.json" if source is not None else None
    if found is None or not found.is_file():
        raise FileNotFoundError(f"no tokenizer.json beside the model (in {source}): give the run directory")
    return TextTokenizer.from_file(found, int((model.data_config or {}).get("max_length", 128)))


class TextClassification(ClassifierTask):
    """Sentence classification with a BERT encoder (``bert_tiny``, a HuggingFace BERT, an MLM run's encoder)."""

    name = "text-classification"
    options = frozenset({"tokenizer", "max_length", "init_from", "train_subset", "label_smoothing"})
    default_model = "bert_tiny"

    def build_data(self, train_data=None, val_data=None):

        cfg = self.cfg
        self.tokenizer = build_tokenizer(cfg)
        train_data, self.val_data = text_datasets(cfg, self.tokenizer, train_data, val_data)
        self.train_data = self.subset(train_data)
        return self.train_data, self.val_data

    def build_model(self, in_chans: int) -> nn.Module:
        return build_text_model(self.cfg, len(self.classes), self.tokenizer)

    def save_inputs(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / "tokenizer.json")  # the vocabulary the model's token ids mean

    def train_batch(self, batch) -> Batch:
        return self.eval_batch(batch)  # no augmentation of token ids

    def eval_batch(self, batch) -> Batch:
        x, y = batch
        y = y.to(self.device, non_blocking=True)
        ids = cut_to_longest(x.to(self.device, non_blocking=True), self.tokenizer.pad_id)
        return {"inputs": ids, "labels": y, "target": y, "size": y.shape[0]}

    input_kind = "texts"

    @classmethod
    def predict(
        cls, model: nn.Module, inputs: list[Any], source, out_dir, topk: int = 5, **options: Any
    ) -> list:
        """Top-``topk`` classes of each sentence, read with the run's ``tokenizer.json``."""
        import torch

        tok = run_tokenizer(source, model)
        classes = list((model.data_config or {}).get("classes") or range(model.num_classes))
        with torch.inference_mode():
            probs = model(tok([str(t) for t in inputs])["input_ids"]).float().softmax(-1)
        top_p, top_i = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        return [{"text": text, "top": [{"label": str(classes[j]), "index": int(j), "prob": float(p)}
                                       for p, j in zip(ps, idx, strict=True)]}
                for text, ps, idx in zip(inputs, top_p.tolist(), top_i.tolist(), strict=True)]  # fmt: skip

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        return "\n".join(f"{r['text']}\n  " + "  ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in r["top"])
                         for r in results)  # fmt: skip

    def data_config(self) -> dict[str, Any]:
        return {"task": self.name, "dataset": self.cfg.dataset, "classes": self.classes, "modality": "text",
                "max_length": self.cfg.max_length}  # fmt: skip
