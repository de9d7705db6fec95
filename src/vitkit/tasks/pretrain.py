"""Self-supervised pre-training: masked autoencoder on images (``mae``), BERT's masked language model (``mlm``).

The model computes its own loss on what it hid (labels are never read); the validation loss is measured with the
same masks at every evaluation (a seeded generator), so the curve is comparable. A run writes
``model.safetensors`` (the whole pre-training model) and ``encoder.safetensors`` (the encoder alone: what
``vitkit finetune --from RUN`` starts from); MAE adds ``reconstructions.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .base import Batch, Task
from .inputs import AUGMENT_OPTIONS, ImageInput, build_tokenizer, cut_to_longest, text_datasets

__all__ = ["Pretraining", "MAEPretraining", "MLMPretraining", "PRETRAIN_METHODS"]


class Pretraining(Task):
    """Shared by the pre-training methods: the model returns (loss, ...) and is scored by that loss."""

    val_seed: ClassVar[int] = 1234  # validation masks are the same at every evaluation

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        outputs = model(batch["inputs"])
        return {"loss": outputs[0], "output": outputs}

    def begin_evaluation(self) -> None:
        self.generator = torch.Generator(device=self.device).manual_seed(self.val_seed + self.dist.rank)

    def data_config(self) -> dict[str, Any]:  # pre-training saw no labels
        return {"task": self.name, "dataset": self.cfg.dataset}

    def save_model(self, model: nn.Module, run_dir: Path, state_dict: dict | None = None) -> None:
        from ..weights.files import save

        save(model, run_dir / "model.safetensors", data_config=self.data_config())
        encoder = {
            k: v for k, v in self.data_config().items() if k != "task"
        }  # a plain encoder, no MAE/MLM head
        save(model.encoder, run_dir / "encoder.safetensors", data_config=encoder)

    def summary(self, result: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        return {"method": self.name, **super().summary(result, model),
                "encoder_params": sum(p.numel() for p in model.encoder.parameters())}  # fmt: skip

    @classmethod
    def report(cls, summary: dict[str, Any]) -> str:
        return f"val {cls.name} loss: {summary['val_loss']:.4f}"


class MAEPretraining(Pretraining):
    """Masked-autoencoder pre-training; ``cfg.model`` names an ``mae`` family model (e.g. ``mae_vit_mnist``)."""

    name = "mae"
    options = frozenset({"on_bad_image", "drop_path", *AUGMENT_OPTIONS})
    default_model = "mae_vit_digits"
    loss_label = "mae loss"
    quality_curve = None  # the reconstruction loss is the figure: no second panel

    def build_data(self, train_data=None, val_data=None):
        from ..data import build_dataset, is_text_dataset

        cfg = self.cfg
        if is_text_dataset(cfg.dataset):
            raise ValueError(f"--method mae pre-trains on images; {cfg.dataset!r} is text (use --method mlm)")
        load = dict(data_dir=cfg.data_dir, on_error=cfg.on_bad_image)
        self.train_data = (
            train_data if train_data is not None else build_dataset(cfg.dataset, "train", **load)
        )
        self.val_data = (
            val_data if val_data is not None else build_dataset(cfg.dataset, cfg.val_split, **load)
        )
        return self.train_data, self.val_data

    def build_model(self, in_chans: int) -> nn.Module:
        from ..registry import create_model

        cfg = self.cfg
        model = create_model(cfg.model, in_chans=in_chans, drop_path_rate=cfg.drop_path, **cfg.model_args)
        if getattr(model, "family", None) != "mae":
            raise ValueError(f"--method mae needs an MAE model (e.g. mae_vit_mnist), got {cfg.model!r}")
        return model

    def setup(self, model: nn.Module) -> None:
        self.images = ImageInput(
            self.cfg, self.train_data, model, self.device, memory_format=self.memory_format
        )

    def train_batch(self, batch) -> Batch:
        return {"inputs": self.images(batch[0], train=True), "size": len(batch[0])}

    def eval_batch(self, batch) -> Batch:
        return {"inputs": self.images(batch[0], train=False), "size": len(batch[0])}

    def eval_step(self, model: nn.Module, batch: Batch, final: bool) -> tuple[dict, Any]:
        x = batch["inputs"]
        loss = model(x, generator=self.generator)[0]
        return {"loss": float(loss) * len(x), "count": len(x)}, None

    def metrics(self, sums: dict[str, Any], kept: list[Any], model: nn.Module) -> dict[str, Any]:
        return {"val_loss": sums.get("loss", 0.0) / max(sums.get("count", 0), 1)}

    def data_config(self) -> dict[str, Any]:
        return {**super().data_config(), **self.images.data_config()}

    @torch.inference_mode()
    def reconstructions(self, model: nn.Module, n: int = 8) -> list[tuple[str, Tensor]]:
        """Rows (original, masked, reconstruction) for the first ``n`` validation images, in [0, 1]."""
        from ..models.mae import unpatchify

        model.eval()
        images = torch.stack([self.val_data[i][0] for i in range(min(n, len(self.val_data)))]).to(self.device)
        x = self.images(images, train=False)
        _, pred, mask = model(x, generator=torch.Generator(device=self.device).manual_seed(self.val_seed))
        masked, recon = model.reconstruct(x, pred.float(), mask)
        mean = torch.tensor(self.images.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.images.std, device=self.device).view(1, -1, 1, 1)
        hidden = unpatchify(mask[..., None].expand_as(pred).float(), model.patch_size, model.grid_size,
                            model.in_chans)  # fmt: skip
        return [
            ("original", images.clamp(0, 1)),
            ("masked", (masked * std + mean).clamp(0, 1) * (1 - hidden) + 0.5 * hidden),  # grey = hidden
            ("reconstruction", (recon * std + mean).clamp(0, 1)),
        ]

    @classmethod
    def predict(
        cls, model: nn.Module, inputs: list[Any], source, out_dir: Path, seed: int = 0, **options: Any
    ) -> list:
        """Each image's masked-autoencoder reconstruction (a random mask, seeded): loss and a PNG of original /
        masked / reconstruction in ``out_dir``."""
        from ..plots import plot_image_grid
        from .inputs import output_stem, read_images

        data = model.data_config or {}
        x, _, names = read_images(inputs, data)
        g = torch.Generator().manual_seed(seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        mean = torch.tensor(data["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(data["std"]).view(1, -1, 1, 1)
        results = []
        with torch.inference_mode():
            for i, name in enumerate(names):
                loss, pred, mask = model(x[i : i + 1], generator=g)
                masked, recon = model.reconstruct(x[i : i + 1], pred.float(), mask)
                png = out_dir / f"{output_stem(name, i)}-mae.png"
                rows = [("original", x[i : i + 1] * std + mean), ("masked", masked * std + mean),
                        ("reconstruction", recon * std + mean)]  # fmt: skip
                plot_image_grid(rows, png, title=f"MAE, mask ratio {model.mask_ratio:g}")
                results.append({"path": name, "loss": float(loss), "reconstruction": str(png)})
        return results

    def artifacts(self, model: nn.Module, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        from ..plots import plot_image_grid

        plot_image_grid(self.reconstructions(model), run_dir / "reconstructions.png",
                        title=f"MAE {self.cfg.model}: mask ratio {model.mask_ratio:g}")  # fmt: skip
        return {}


class MLMPretraining(Pretraining):
    """BERT masked-language-model pre-training of ``cfg.model`` (a ``bert`` encoder) on a text dataset's sentences."""

    name = "mlm"
    options = frozenset({"tokenizer", "max_length"})
    default_model = "bert_tiny"
    loss_label = "mlm loss"
    quality_curve = ("Masked-token accuracy", "accuracy on the masked tokens", "mlm_acc", "max")

    def build_data(self, train_data=None, val_data=None):
        from ..data.text import is_text_dataset

        cfg = self.cfg
        if not is_text_dataset(cfg.dataset):
            raise ValueError(f"--method mlm pre-trains on text; {cfg.dataset!r} is an image dataset")
        self.tokenizer = build_tokenizer(cfg)
        self.train_data, self.val_data = text_datasets(cfg, self.tokenizer, train_data, val_data)
        return self.train_data, self.val_data

    def build_model(self, in_chans: int) -> nn.Module:
        from ..models.bert import MaskedLanguageModel

        tok = self.tokenizer
        encoder_args = {"vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id, **self.cfg.model_args}
        specials = [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id]
        return MaskedLanguageModel(
            self.cfg.model, encoder_args, mask_token_id=tok.mask_id, special_ids=specials
        )

    def save_inputs(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / "tokenizer.json")

    def step(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        """The masked tokens' cross-entropy; accumulating or data-parallel, also their sum and count (the engine
        divides by the masked tokens of the whole batch, not micro-batch by micro-batch)."""
        out = super().step(model, batch)
        if self.cfg.accum_steps > 1 or self.dist.enabled:
            chosen = len(out["output"][2])  # the masked positions' targets
            out.update(loss_sum=out["loss"] * chosen, weight=chosen)
        return out

    def train_batch(self, batch) -> Batch:
        return self.eval_batch(batch)

    def eval_batch(self, batch) -> Batch:
        ids = cut_to_longest(batch[0].to(self.device, non_blocking=True), self.tokenizer.pad_id)
        return {"inputs": ids, "size": len(ids)}

    def eval_step(self, model: nn.Module, batch: Batch, final: bool) -> tuple[dict, Any]:
        loss, logits, target = model(batch["inputs"], generator=self.generator)
        return {"loss": float(loss) * len(target), "correct": int((logits.argmax(-1) == target).sum()),
                "count": len(target)}, None  # fmt: skip

    def metrics(self, sums: dict[str, Any], kept: list[Any], model: nn.Module) -> dict[str, Any]:
        count = max(sums.get("count", 0), 1)
        return {"val_loss": sums.get("loss", 0.0) / count, "val_mlm_acc": sums.get("correct", 0) / count}

    input_kind = "texts"

    @classmethod
    def predict(
        cls, model: nn.Module, inputs: list[Any], source, out_dir, topk: int = 5, **options: Any
    ) -> list:
        """The ``topk`` likeliest tokens for every ``[MASK]`` of each sentence, and the sentence filled with the
        likeliest ones."""
        from .text_classification import run_tokenizer

        tok = run_tokenizer(source, model)
        out = []
        for text in inputs:
            ids = tok([str(text)])["input_ids"]
            where = (ids[0] == tok.mask_id).nonzero().flatten().tolist()
            if not where:
                raise ValueError(f"{text!r} has no {tok.tokenizer.id_to_token(tok.mask_id)} to fill")
            with torch.inference_mode():
                probs = model.token_logits(ids)[0, where].float().softmax(-1)
            top_p, top_i = probs.topk(topk, dim=-1)
            filled = ids[0].clone()
            filled[where] = top_i[:, 0]
            masks = [{"position": pos, "top": [{"token": tok.tokenizer.id_to_token(int(j)), "prob": float(p)}
                                               for p, j in zip(ps, idx, strict=True)]}
                     for pos, ps, idx in zip(where, top_p.tolist(), top_i.tolist(), strict=True)]  # fmt: skip
            out.append({"text": text, "filled": tok.decode(filled.tolist()), "masks": masks})
        return out

    @classmethod
    def format_predictions(cls, results: list[dict[str, Any]]) -> str:
        lines = []
        for r in results:
            lines.append(f"{r['text']}\n  -> {r['filled']}")
            lines += [
                "  [MASK] " + ", ".join(f"{t['token']} {100 * t['prob']:.1f}%" for t in m["top"])
                for m in r["masks"]
            ]
        return "\n".join(lines)

    def data_config(self) -> dict[str, Any]:
        return {**super().data_config(), "modality": "text", "max_length": self.cfg.max_length}


PRETRAIN_METHODS = ("mae", "mlm")
