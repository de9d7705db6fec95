"""Contrastive image-text training: CLIP's symmetric InfoNCE or SigLIP's sigmoid loss, LiT as a flag.

``vitkit train --task contrastive`` trains a :class:`~vitkit.models.clip.CLIP` dual encoder on

- a labelled image dataset (``digits``, ``fashion-mnist``, ``cifar10-jpeg``, ``folder:``, ``manifest:``) whose
  labels become captions through ``caption_templates`` ("a photo of a {label}.", one drawn per image and step), or
- ``pairs:<manifest>``: a CSV/JSONL of ``path,caption`` rows (:mod:`vitkit.data.pairs`).

Every caption a run can see is known up front (classes x templates, or the manifest's distinct captions), so they
are tokenised once; a batch picks rows. Pairs whose captions count as the same (one class, or one manifest caption)
are positives of each other (``caption_ids`` of :func:`~vitkit.models.contrastive.clip_loss`; UniCL). With a locked
text tower (LiT, ``lock="text"``) each caption is encoded once and its embedding reused: the tower runs in eval mode
without gradients, so this is the same computation. The temperature is clamped to at most 100 at the start of every
step (the engine has no after-step hook; clamping before step k's forward is clamping after step k-1) and once more
when the model is saved.

Validation: the loss, then for labelled data zero-shot top-1 (and top-5 with >= 5 classes) over the validation
split's classes with prompt ensembling (:mod:`.zeroshot`); for pairs image->text and text->image recall@1/5/10.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.distributed import is_sharded, unsharded
from .base import Batch, Task, dataset_label
from .inputs import AUGMENT_OPTIONS, ImageInput, shared_across_ranks
from .zeroshot import encode_texts, retrieval_recall, topk_hits

__all__ = ["Contrastive"]

RECALL_KS = (1, 5, 10)


def unwrap(model: nn.Module) -> nn.Module:
    """The CLIP inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def parse_names(values: Any) -> list[str]:
    """Class names from a list whose items may hold several, comma-separated (``--classes cat,dog bird``)."""
    values = [values] if isinstance(values, str) else list(values or [])
    return [n.strip() for v in values for n in str(v).split(",") if n.strip()]


def select_classes(dataset: Any, names: Any) -> Any:
    """The items of ``dataset`` whose class is in ``names`` (labels keep their index in ``dataset.classes``)."""
    from ..data.base import TensorImageDataset
    from ..data.subset import SubsetDataset

    wanted, known = parse_names(names), [str(c) for c in dataset.classes]
    if not wanted:
        raise ValueError(
            "train_classes is an empty class list: name at least one class, or leave it out for all"
        )
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"train_classes {unknown} are not classes of the dataset ({', '.join(known)})")
    keep = torch.tensor([known.index(n) for n in wanted])
    idx = torch.isin(torch.as_tensor(dataset.targets), keep).nonzero().flatten()
    if isinstance(dataset, TensorImageDataset):
        return TensorImageDataset(dataset.raw[idx], dataset.targets[idx], dataset.classes)
    return SubsetDataset(dataset, idx)


class Contrastive(Task):
    """A dual encoder trained to match images with their captions (see the module docstring)."""

    name = "contrastive"
    options = frozenset({"lock", "contrastive_loss", "caption_templates", "train_classes", "init_image", "init_text",
                         "tokenizer", "max_length", "on_bad_image", "train_subset", "drop_path",
                         *AUGMENT_OPTIONS})  # fmt: skip
    default_model = "clip_vit_tiny_patch4_32"
    loss_label = "contrastive loss"
    selection = ("val_zeroshot_top1", "max")
    quality_curve = ("Zero-shot accuracy", "zero-shot top-1", "zeroshot_top1", "max")

    def __init__(self, cfg, device, dist) -> None:
        super().__init__(cfg, device, dist)
        self.pairs = str(cfg.dataset).lower().startswith("pairs:")
        if self.pairs:
            self.selection = ("val_mean_recall@1", "max")
            self.quality_curve = (
                "Retrieval",
                "mean recall@1 (image->text, text->image)",
                "mean_recall@1",
                "max",
            )
        from ..data.pairs import DEFAULT_TEMPLATES, check_templates

        self.templates = check_templates(
            cfg.caption_templates if cfg.caption_templates is not None else DEFAULT_TEMPLATES
        )
        self._text_cache: Tensor | None = None
        self._eval_text: Tensor | None = None

    # ------------------------------------------------------------------ data
    def build_data(self, train_data=None, val_data=None):
        from ..data import build_dataset, stratified_subset

        cfg = self.cfg

        def read(split: str):
            return build_dataset(cfg.dataset, split, data_dir=cfg.data_dir, on_error=cfg.on_bad_image)

        train_data = train_data if train_data is not None else read("train")
        if cfg.train_classes is not None:
            train_data = select_classes(train_data, cfg.train_classes)
        if cfg.train_subset is not None:
            train_data = stratified_subset(train_data, cfg.train_subset, cfg.seed)
        self.train_data, self.val_data = train_data, val_data if val_data is not None else read(cfg.val_split)
        self.captions = self._caption_table(self.train_data.classes)
        self.val_captions = self._caption_table(self.val_data.classes)
        self.tokenizer = self._build_tokenizer()
        return self.train_data, self.val_data

    def _caption_table(self, classes: list[str]) -> list[str]:
        """Every caption of a split, indexed by caption index: the manifest's captions, or class-major
        ``templates[t].format(label=classes[c])`` at ``c * len(templates) + t``."""
        from ..data.pairs import CaptionTemplates

        if self.pairs:
            return [str(c) for c in classes]
        return [p for per_class in CaptionTemplates(classes, self.templates).all() for p in per_class]

    def _build_tokenizer(self):
        """``tokenizer``, else the one in ``init_text``'s folder, else WordPiece trained on the captions."""
        from ..data.text import TextTokenizer

        cfg = self.cfg
        if cfg.tokenizer:
            return TextTokenizer.from_file(cfg.tokenizer, cfg.max_length)
        if cfg.init_text:
            src = Path(cfg.init_text)
            for name in ("tokenizer.json", "vocab.txt"):
                if ((src if src.is_dir() else src.parent) / name).is_file():
                    return TextTokenizer.from_file(
                        (src if src.is_dir() else src.parent) / name, cfg.max_length
                    )
        return shared_across_ranks(
            lambda: TextTokenizer.train_wordpiece(self.captions + self.val_captions, vocab_size=8000,
                                                  min_frequency=1, max_length=cfg.max_length),
            lambda tok: TextTokenizer(tok, cfg.max_length),
        )  # fmt: skip

    def save_inputs(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / "tokenizer.json")

    def run_name(self) -> str:
        return f"{self.cfg.model}-contrastive-{dataset_label(self.cfg.dataset)}"

    # ------------------------------------------------------------------ model
    def build_model(self, in_chans: int) -> nn.Module:
        from ..registry import create_model
        from .towers import load_tower_weights, model_args_for

        args = model_args_for(self.cfg, in_chans, self.tokenizer)
        model = create_model(self.cfg.model, **args)
        load_tower_weights(model, self.cfg.init_image, self.cfg.init_text)
        return model

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
            raise ValueError(f"the contrastive task trains a dual encoder (CLIP), got {type(model).__name__}")
        if self.cfg.lock == "image" and not model.lock_image:
            model.lock_image_tower()
        if self.cfg.lock == "text" and not model.lock_text:
            model.lock_text_tower()
        if self.cfg.contrastive_loss == "clip" and model.logit_bias is not None:
            model.logit_bias.requires_grad_(False)  # a softmax ignores it: DDP needs every trainable one used
        if self.cfg.contrastive_loss == "siglip" and model.logit_bias is None:
            raise ValueError(
                "contrastive_loss='siglip' needs a model with a logit bias (logit_bias_init, e.g. -10)"
            )
        return model

    def setup(self, model: nn.Module) -> None:
        from .towers import text_context

        self.images = ImageInput(self.cfg, self.train_data, model.visual, self.device,
                                 memory_format=self.memory_format)  # fmt: skip
        self.max_length = min(self.cfg.max_length, text_context(model))
        self.tokens = self._tokenize(self.captions)

    def _tokenize(self, captions: list[str]) -> dict[str, Tensor]:
        """All captions as one (N, L) id table and mask on the device (chunks padded to the longest of all)."""
        chunks = [
            self.tokenizer(captions[i : i + 4096], self.max_length) for i in range(0, len(captions), 4096)
        ]
        length = max(c["input_ids"].shape[1] for c in chunks)
        pad = lambda t, v: torch.nn.functional.pad(t, (0, length - t.shape[1]), value=v)  # noqa: E731
        return {"input_ids": torch.cat([pad(c["input_ids"], self.tokenizer.pad_id) for c in chunks]).to(self.device),
                "attention_mask": torch.cat([pad(c["attention_mask"], 0) for c in chunks]).to(self.device)}  # fmt: skip

    def _rows(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """The token ids and mask of captions ``index``, cut to the longest of them."""
        mask = self.tokens["attention_mask"][index]
        length = int(mask.sum(dim=1).max())
        return self.tokens["input_ids"][index, :length], mask[:, :length]

    # ------------------------------------------------------------------ training
    def _batch(self, batch, train: bool, generator: torch.Generator | None = None) -> Batch:
        x, y = batch
        y = y.to(self.device, non_blocking=True)
        if self.pairs:
            index = y  # the label is the caption's index
        else:  # one template per image, from the global RNG (saved in checkpoints: a resume draws the same)
            picks = torch.randint(len(self.templates), tuple(y.shape), generator=generator)
            index = y * len(self.templates) + picks.to(self.device)
        return {
            "images": self.images(x, train=train),
            "labels": y,
            "caption_index": index,
            "size": y.shape[0],
        }

    def train_batch(self, batch) -> Batch:
        return self._batch(batch, train=True)

    def eval_batch(self, batch) -> Batch:
        return self._batch(batch, train=False, generator=self._eval_generator)

    def _loss(self, out: dict[str, Any], text: Tensor, ids: Tensor, gather: bool) -> Tensor:
        from ..models.contrastive import clip_loss, siglip_loss

        if self.cfg.contrastive_loss == "siglip":
            return siglip_loss(out["image_embeds"], text, out["logit_scale"], out["logit_bias"], gather, ids)
        return clip_loss(out["image_embeds"], text, out["logit_scale"], gather, ids)

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        """The loss of the batch's images against their captions; positives: pairs with the same label."""
        clip = unwrap(model)
        clip.clamp_logit_scale()
        index = batch["caption_index"]
        if clip.lock_text:  # LiT: every caption's embedding is computed once
            out = model(batch["images"], None)
            text = self.cached_text(clip, index)
        else:
            out = model(batch["images"], *self._rows(index))
            text = out["text_embeds"]
        return {"loss": self._loss(out, text, batch["labels"], gather=True), "output": out}

    @torch.no_grad()
    def cached_text(self, clip: nn.Module, index: Tensor) -> Tensor:
        """Unit-length embeddings of captions ``index`` from a locked text tower, each caption encoded once."""
        if self._text_cache is None:
            self._text_cache = torch.zeros(len(self.captions), clip.embed_dim, device=self.device)
            self._cached = torch.zeros(len(self.captions), dtype=torch.bool, device=self.device)
        if is_sharded(clip):  # FSDP gathers weights in collectives: every rank encodes every caption, at once
            missing = (~self._cached).nonzero().flatten()
        else:
            missing = index[~self._cached[index]].unique()
        if len(missing):
            with unsharded(clip):
                for chunk in missing.split(1024):
                    embeds = clip.encode_text(*self._rows(chunk), normalize=True)
                    self._text_cache[chunk] = embeds.to(self._text_cache.dtype)
            self._cached[missing] = True
        return self._text_cache[index]

    def finalize(self, model: nn.Module) -> nn.Module:
        unwrap(model).clamp_logit_scale()
        return model

    # ------------------------------------------------------------------ evaluation
    def begin_evaluation(self) -> None:
        self._eval_generator = torch.Generator().manual_seed(
            self.cfg.seed
        )  # the same captions every evaluation
        self._eval_text = None

    def _val_text(self, model: nn.Module) -> Tensor:
        """Every validation caption's unit-length embedding (computed once per evaluation)."""
        if self._eval_text is None:
            with unsharded(model):
                self._eval_text = encode_texts(
                    model, self.val_captions, lambda t: self.tokenizer(t, self.max_length)
                )
        return self._eval_text

    def eval_step(self, model: nn.Module, batch: Batch, final: bool) -> tuple[dict, Any]:
        clip = unwrap(model)
        text = self._val_text(clip)
        out = clip(batch["images"], None)
        y, n = batch["labels"], batch["size"]
        sums = {"loss": float(self._loss(out, text[batch["caption_index"]], y, gather=False)) * n, "count": n}
        if self.pairs:
            return sums, (out["image_embeds"].float().cpu(), y.cpu())
        logits = out["logit_scale"].float() * out["image_embeds"].float() @ self._classifier(text).float()
        hits = topk_hits(logits.float(), y, (1, 5))
        sums.update(correct1=hits[1], correct5=hits[5])
        return sums, ((logits.float().cpu(), y.cpu()) if final else None)

    def _classifier(self, text: Tensor) -> Tensor:
        """(D, C) zero-shot weights: each class's prompt embeddings averaged and renormalised."""
        from .zeroshot import ensemble

        return ensemble(text.view(len(self.val_data.classes), len(self.templates), -1))

    def metrics(self, sums: dict[str, Any], kept: list[Any], model: nn.Module) -> dict[str, Any]:
        count = max(sums.get("count", 0), 1)
        out: dict[str, Any] = {"val_loss": sums.get("loss", 0.0) / count}
        if self.pairs:
            images, ids = torch.cat([k[0] for k in kept]), torch.cat([k[1] for k in kept])
            recall = retrieval_recall(images, self._val_text(unwrap(model)).cpu(), ids, RECALL_KS)
            out.update({f"val_{k}": v for k, v in recall.items()})
            out["val_mean_recall@1"] = (recall["i2t_recall@1"] + recall["t2i_recall@1"]) / 2
            return out
        out["val_zeroshot_top1"] = sums.get("correct1", 0) / count
        if len(self.val_data.classes) >= 5:
            out["val_zeroshot_top5"] = sums.get("correct5", 0) / count
        if kept:
            out["logits"], out["targets"] = torch.cat([k[0] for k in kept]), torch.cat([k[1] for k in kept])
        return out

    # ------------------------------------------------------------------ the end of a run
    def data_config(self) -> dict[str, Any]:
        config = {"task": self.name, "dataset": str(self.cfg.dataset), "max_length": self.max_length,
                  **self.images.data_config()}  # fmt: skip
        if not self.pairs:  # what `vitkit predict` / `vitkit zeroshot` classify into by default
            config.update(classes=[str(c) for c in self.val_data.classes], templates=self.templates)
        return config

    def artifacts(self, model: nn.Module, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """``eval.json``: the retrieval figures, or the zero-shot classification metrics and their confusion
        matrix (``confusion_matrix.png``)."""
        if self.pairs or "logits" not in result:
            figures = {k: v for k, v in result.items() if k.startswith("val_")}
            (run_dir / "eval.json").write_text(json.dumps(figures, indent=2))
            return {}
        from ..metrics import classification_metrics
        from ..plots import plot_confusion_matrix

        classes = [str(c) for c in self.val_data.classes]
        metrics = classification_metrics(result["logits"], result["targets"], classes)
        (run_dir / "eval.json").write_text(json.dumps({"zeroshot": True, **metrics}, indent=2))
        plot_confusion_matrix(metrics["confusion_matrix"], classes, run_dir / "confusion_matrix.png",
                              title="Zero-shot confusion matrix")  # fmt: skip
        return {"zeroshot_top1": metrics["top1"], "zeroshot_top5": metrics["top5"]}

    @classmethod
    def predict(
        cls, model: nn.Module, inputs: list[Any], source, out_dir, topk: int = 5, **options: Any
    ) -> list:
        """Zero-shot top-``topk`` of each image over the classes and templates the model was trained with
        (softmax of ``exp(logit_scale) * cosine``)."""
        from .zeroshot import predict_zeroshot

        return predict_zeroshot(model, inputs, source, topk=topk)

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        from ..predict import format_predictions

        return format_predictions(results)

    @classmethod
    def report(cls, summary: dict[str, Any]) -> str:
        if "val_zeroshot_top1" in summary:
            return (f"val loss: {summary['val_loss']:.4f}  zero-shot top-1: {summary['val_zeroshot_top1']:.4f}  "
                    f"best: {summary['best_val_zeroshot_top1']:.4f}")  # fmt: skip
        return (f"val loss: {summary['val_loss']:.4f}  recall@1 image->text {summary['val_i2t_recall@1']:.4f}, "
                f"text->image {summary['val_t2i_recall@1']:.4f}")  # fmt: skip
