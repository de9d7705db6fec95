"""What tasks share about their inputs: image batches (to float, resize, augment, normalise) and token batches.

:class:`ImageInput` is the training-time half of vitkit's one image pipeline (decoding and mode conversion happen
when a dataset or a predict/serve request reads a file, see :mod:`vitkit.data`): uint8 or float batches -> float
in [0, 1] -> resized to the model's input -> (training only) batch augmentation on the device -> normalised.
:func:`build_tokenizer` and :func:`cut_to_longest` serve the text tasks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ImageInput",
    "AUGMENT_OPTIONS",
    "input_size",
    "pretrained_stats",
    "build_tokenizer",
    "cut_to_longest",
]

log = logging.getLogger(__name__)

# batch augmentation flags (kornia) that move pixels but not labels: for tasks whose targets do not move
AUGMENT_OPTIONS = frozenset(
    {"rrc_scale", "pad_crop", "hflip", "randaugment", "trivialaugment", "random_erasing", "channels_last"}
)


def input_size(model: nn.Module) -> tuple[int, int] | None:
    """The (height, width) a vitkit model expects (an MAE's is its encoder's), or None when it takes any size."""
    from ..models.examples import image_input_shape

    shape = image_input_shape(model)
    return shape[1:] if shape is not None else None


def pretrained_stats(model: nn.Module, channels: int) -> tuple[list[float], list[float]] | None:
    """The mean/std that the model's pretrained weights expect (``model.pretrained_cfg``, set by weights from the
    Hugging Face Hub), when they have one per data channel; None otherwise. Fine-tuning normalises with them, as
    timm does, not with the new dataset's statistics."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("mean") is None or cfg.get("std") is None or len(cfg["mean"]) != channels:
        return None
    log.info("normalising with the pretrained weights' mean %s / std %s", list(cfg["mean"]), list(cfg["std"]))
    return list(cfg["mean"]), list(cfg["std"])


class ImageInput:
    """Normalisation (the pretrained weights' mean/std, else the dataset's) and, when ``augment`` is on, the config's batch augmentation."""

    def __init__(self, cfg, dataset, model: nn.Module, device: torch.device, augment: bool = True,
                 memory_format=torch.contiguous_format) -> None:  # fmt: skip
        from ..data import Normalize, build_train_augment, dataset_stats

        self.device, self.memory_format = device, memory_format
        self.size = input_size(model)
        self.in_chans = int(dataset.num_channels)
        mean, std = pretrained_stats(model, self.in_chans) or dataset_stats(cfg.dataset, dataset)
        self.mean, self.std = list(map(float, mean)), list(map(float, std))
        self.normalize = Normalize(self.mean, self.std).to(device)
        self.augment = None
        if augment:
            self.augment = build_train_augment(
                self.size, rrc_scale=cfg.rrc_scale, hflip=cfg.hflip, pad_crop=cfg.pad_crop,
                randaugment=cfg.randaugment or None, trivialaugment=cfg.trivialaugment,
                random_erasing=cfg.random_erasing,
            ).to(device)  # fmt: skip

    def __call__(self, x: Tensor, train: bool) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.size and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        if train and self.augment is not None:
            x = self.augment(x)
        return self.normalize(x).contiguous(memory_format=self.memory_format)

    def data_config(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "img_size": list(self.size) if self.size else None,
                "in_chans": self.in_chans}  # fmt: skip


def cut_to_longest(ids: Tensor, pad_id: int) -> Tensor:
    """Token ids (B, L) cut to the batch's longest sequence (padding is on the right)."""
    return ids[:, : int((ids != pad_id).sum(1).max())]


TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
)  # what a text model's folder or Hub repo holds, preferred first


def build_tokenizer(cfg):
    """``cfg.tokenizer``, else the one beside ``init_from`` (a folder, file or ``hf-hub:`` repo), else WordPiece trained on the training texts."""
    from ..data.text import TextTokenizer, read_text_split
    from ..weights.hub import local_folder

    if cfg.tokenizer:
        return TextTokenizer.from_file(cfg.tokenizer, cfg.max_length)
    if getattr(cfg, "init_from", None):
        src = Path(local_folder(cfg.init_from, TOKENIZER_FILES))  # an hf-hub: id: its snapshot folder
        for name in TOKENIZER_FILES:
            found = (src if src.is_dir() else src.parent) / name
            if found.exists():
                return TextTokenizer.from_file(found, cfg.max_length)
    return shared_across_ranks(
        lambda: TextTokenizer.train_wordpiece(read_text_split(cfg.dataset, "train", cfg.data_dir)[0], vocab_size=8000,
                                              max_length=cfg.max_length),
        lambda tok: TextTokenizer(tok, cfg.max_length),
    )  # fmt: skip


def shared_across_ranks(train: Any, wrap: Any):
    """``train()``'s tokenizer on rank 0, the same vocabulary on every rank under torchrun (a WordPiece or BPE
    trained on each rank orders tied tokens differently: the ranks would read other token ids). ``train()``
    returns a vitkit tokenizer around a ``tokenizers.Tokenizer`` (its ``.tokenizer``); ``wrap(tokenizer)`` builds
    the same vitkit tokenizer around the one rank 0 sent."""
    import torch.distributed as dist
    from tokenizers import Tokenizer

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return train()
    payload = [train().tokenizer.to_str() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    return wrap(Tokenizer.from_str(payload[0]))


def read_images(inputs: list[Any], data_config: dict[str, Any]) -> tuple[Tensor, list[Any], list[Any]]:
    """Image files (or PIL images / arrays) -> (normalised batch at the model's size, original uint8 (H, W, C)
    arrays, names): decoded by the one image pipeline (:func:`vitkit.data.images.decode_image`), prepared as
    :func:`vitkit.predict.preprocess` does for a classifier."""
    import numpy as np

    from ..data.images import decode_image
    from ..predict import preprocess

    channels = int(data_config.get("in_chans") or len(data_config["mean"]))
    arrays, names = [], []
    for i, item in enumerate(inputs):
        if isinstance(item, (str, Path)) or hasattr(item, "mode"):  # a file or a PIL image
            arrays.append(decode_image(item, channels=channels).pixels)
            names.append(str(item) if isinstance(item, (str, Path)) else f"<image #{i}>")
        else:
            arrays.append(np.asarray(item) if not isinstance(item, Tensor) else item.numpy())
            names.append(f"<image #{i}>")
    return preprocess(arrays, data_config), arrays, names


def output_stem(name: str, index: int) -> str:
    """The file-name stem for outputs about input ``name`` (an in-memory input gets ``image<index>``)."""
    return f"image{index}" if name.startswith("<") else Path(name).stem


def text_datasets(cfg, tokenizer, train_data=None, val_data=None) -> tuple[Any, Any]:
    """The training and validation splits of ``cfg.dataset`` read with ``tokenizer`` (a given one is kept)."""
    from ..data.text import build_text_dataset

    read = lambda split: build_text_dataset(cfg.dataset, split, tokenizer, cfg.data_dir)  # noqa: E731
    return (train_data if train_data is not None else read("train"),
            val_data if val_data is not None else read(cfg.val_split))  # fmt: skip
