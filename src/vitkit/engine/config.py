"""Training configuration: one dataclass, named recipes, YAML files and command-line overrides.

Precedence (later wins): dataclass defaults < recipe < YAML file < explicit overrides.

The fields split in two: :data:`ENGINE_OPTIONS`, which the task-agnostic trainer reads for every task (schedule,
optimizer, runtime, output), and the rest, each read by the tasks that declare it in their ``options``
(:class:`vitkit.tasks.Task`). :func:`check_task_options` refuses, by name, a field set for a task that does not
read it.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

__all__ = [
    "TrainConfig", "RECIPES", "ENGINE_OPTIONS", "NONE", "resolve_config", "save_config", "load_config_file",
    "check_task_options", "resume_config", "RESUME_OPTIONS", "config_dict",
]  # fmt: skip


@dataclass
class TrainConfig:
    # what to train on
    task: str = "classification"  # a name in vitkit.tasks.TASKS
    model: str = "vit_digits"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    data_dir: str | None = None
    val_split: str = "test"
    on_bad_image: str = "skip"  # "skip" (count and report) or "raise"
    tokenizer: str | None = (
        None  # text: tokenizer.json / vocab.txt / folder (default: init_from's, or trained)
    )
    max_length: int = 128  # text: longest token sequence kept ([CLS] and [SEP] included)
    train_subset: float | None = None  # class-balanced subset of the training split: fraction (<1) or count
    # language modelling: context length (default: the model's), random batches per epoch, training part of the text
    block_size: int | None = None
    epoch_steps: int = 250
    train_fraction: float = 0.9
    # fine-tuning: start from pre-trained weights (vitkit run / model file / MAE run, or a timm/HF/JAX file)
    init_from: str | None = None
    finetune_mode: str = (
        "full"  # full | linear (frozen backbone, linear probe) | partial (freeze_blocks frozen)
    )
    freeze_blocks: int = 0  # partial: the patch embedding and the first N blocks stay fixed
    layer_decay: float | None = None  # layer-wise lr decay: block i of L trains at lr * decay ** (L + 1 - i)
    # contrastive image-text training (CLIP / SigLIP / LiT): which tower stays fixed (None: the model's own setting,
    # "none" | "image" | "text"), the loss ("clip" InfoNCE | "siglip" sigmoid), caption templates for labelled images
    # (None: vitkit.data.pairs.DEFAULT_TEMPLATES), the classes to train on (None: all), weights for each tower
    lock: str | None = None
    contrastive_loss: str = "clip"
    caption_templates: list[str] | None = None
    train_classes: list[str] | None = None
    init_image: str | None = None  # a vitkit run / model file, or a timm / HF / JAX ViT checkpoint
    init_text: str | None = None  # a HuggingFace BERT / MiniLM folder, or a vitkit run / model file
    # detection: weight of the class term of DETR's set loss (cross-entropy; the L1 and GIoU terms weigh 5 and 2)
    cls_loss_coef: float = 1.0
    # detection: train only the box classifier (a second stage on a trained detector), every other weight fixed
    freeze_detector: bool = False
    # schedule
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 5.0
    schedule: str = (
        "cosine"  # cosine (warmup then cosine to min_lr) | inverse_sqrt (warmup then 1/sqrt(step))
    )
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 1.0
    accum_steps: int = 1
    # regularisation
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    ema_decay: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    # batch augmentation (kornia): random-resized-crop scale, translate-by-padding crop, flips, RandAugment ops
    rrc_scale: tuple[float, float] | None = None
    pad_crop: int = 0
    hflip: bool = False
    randaugment: int = 0
    trivialaugment: bool = False
    random_erasing: float = 0.0
    # knowledge distillation (DeiT): a frozen teacher (vitkit run directory or model file) supervises the student
    teacher: str | None = None
    distill: str = "hard"  # hard (teacher's argmax) | soft (KL at temperature distill_tau)
    distill_alpha: float = 0.5  # weight of the distillation term; 1 - alpha on the labels
    distill_tau: float = 1.0
    # runtime
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | off
    compile: bool = False
    distributed: str = "ddp"  # under torchrun with > 1 process: ddp | fsdp (FSDP2 fully_shard, per block)
    channels_last: bool = False  # NHWC memory format: faster convolutions (conv stems) on CPU and GPU
    grad_checkpointing: bool = False
    seed: int = 0
    deterministic: bool = True
    num_workers: int = 0
    threads: int | None = None
    # output
    out_dir: str = "runs"
    name: str | None = None
    eval_every: int = 1
    save_every: int = 1
    time_limit_min: float | None = None
    tensorboard: bool = False
    progress: bool = True
    recipe: str | None = None


RECIPES: dict[str, dict[str, Any]] = {
    # scikit-learn's 8x8 digits, 1,437 training images: a small ViT on 2x2 patches with shift augmentation; 110
    # epochs of ~1.2 s on one core, evaluated and checkpointed every 5 (each evaluation costs ~5% of an epoch)
    "digits": dict(
        model="vit_digits", dataset="digits", epochs=110, batch_size=64, lr=2e-3, warmup_epochs=4,
        weight_decay=0.05, label_smoothing=0.1, drop_path=0.1, pad_crop=1, ema_decay=None, eval_every=5,
        save_every=5,
    ),
    "mnist": dict(
        model="vitc_mnist", dataset="mnist", epochs=10, batch_size=128, lr=2e-3, warmup_epochs=1,
        weight_decay=0.05, pad_crop=2, drop_path=0.05, label_smoothing=0.1, channels_last=True,
    ),
    # Fashion-MNIST in under an hour of a 2-core CPU: conv-stem ViT with 4 blocks, 21 epochs (~140 s each),
    # light augmentation, evaluated every 3 epochs (93.07% in 50.7 min)
    "fashion-mnist": dict(
        model="vitc_mnist", model_args={"depth": 4}, dataset="fashion-mnist", epochs=21, batch_size=128, lr=2e-3,
        warmup_epochs=1, weight_decay=0.05, pad_crop=2, hflip=True, drop_path=0.05, label_smoothing=0.1,
        random_erasing=0.1, channels_last=True, eval_every=3,
    ),
    # CIFAR-10 (JPEG copy) in under an hour of a 2-core CPU: the conv-stem ViT, 12 epochs (~240 s each), crop + flip
    "cifar10-cpu": dict(
        model="vitc_cifar", dataset="cifar10-jpeg", epochs=12, batch_size=128, lr=2e-3, warmup_epochs=1,
        weight_decay=0.05, pad_crop=4, hflip=True, drop_path=0.05, label_smoothing=0.1, channels_last=True,
    ),
    # MAE pre-training on the Fashion-MNIST training images (labels unused): vit_mnist encoder, 75% masking
    "mae-fashion-mnist": dict(
        task="mae", model="mae_vit_mnist", dataset="fashion-mnist", epochs=20, batch_size=256, lr=1.5e-3, warmup_epochs=1,
        weight_decay=0.05, betas=(0.9, 0.95), pad_crop=2, hflip=True, drop_path=0.0, eval_every=5,
    ),
    # Multi30k German -> English in an hour of a 2-core CPU: a small pre-norm Transformer, joint BPE, inverse-sqrt
    # schedule (no end to anneal to), stopped after the epoch that crosses 55 min (~370 s per epoch: 9 epochs,
    # test_2016_flickr BLEU 35.10 greedy, 36.59 beam 4)
    "multi30k-de-en": dict(
        task="translation", model="transformer_small", dataset="multi30k-de-en", epochs=40, time_limit_min=55, eval_every=3,
        batch_size=128, lr=1e-3, warmup_epochs=1,
        schedule="inverse_sqrt", weight_decay=0.0, betas=(0.9, 0.98), label_smoothing=0.1, drop_path=0.0,
        max_length=64, clip_grad=1.0,
    ),
    # Character-level Shakespeare, nanoGPT's small CPU configuration (4 layers, 4 heads, width 128, context 64, batch
    # 12, 2,000 iterations, no dropout; cosine after 100 warmup iterations, beta2 0.99, wd 0.1) with the lr doubled:
    # val loss 1.818 in 3 min (nanoGPT's lr 1e-3 -> 1e-4 gives 1.896 here; its README says 1.88)
    "shakespeare-char-cpu": dict(
        task="lm", model="gpt_micro", dataset="tinyshakespeare", block_size=64, batch_size=12, epochs=8,
        epoch_steps=250, lr=2e-3, min_lr=2e-4, warmup_epochs=0.4, weight_decay=0.1, betas=(0.9, 0.99), clip_grad=1.0,
        label_smoothing=0.0, drop_path=0.0,
    ),
    # Character-level Shakespeare in an hour of a 2-core CPU: 6 layers of width 192, context 128 (2.7M params); val
    # loss 1.511 at epoch 10 (42 min), 1.527 at the end (63 min); benchmarks/results/shakespeare_char.md
    "shakespeare-char": dict(
        task="lm", model="gpt_mini", dataset="tinyshakespeare", block_size=128, batch_size=32, epochs=14,
        epoch_steps=250, lr=2e-3, min_lr=2e-4, warmup_epochs=0.4, weight_decay=0.1, betas=(0.9, 0.99), clip_grad=1.0,
        label_smoothing=0.0, drop_path=0.0, eval_every=2,
    ),
    # CIFAR-10 on a GPU: longer schedule with RandAugment, mixup/cutmix and EMA
    "cifar10": dict(
        model="vit_cifar", dataset="cifar10-jpeg", epochs=100, batch_size=128, lr=1e-3, warmup_epochs=5,
        weight_decay=0.05, pad_crop=4, hflip=True, randaugment=2, drop_path=0.1, label_smoothing=0.1,
        mixup=0.8, cutmix=1.0, mix_prob=0.5, ema_decay=0.999,
    ),
}  # fmt: skip


# Read by the trainer for every task; any other field belongs to the tasks that list it in their ``options``.
ENGINE_OPTIONS = frozenset({
    "task", "model", "model_args", "dataset", "data_dir", "val_split", "epochs", "batch_size", "lr", "min_lr",
    "warmup_epochs", "schedule", "weight_decay", "betas", "clip_grad", "accum_steps", "ema_decay", "device",
    "amp", "compile", "distributed", "grad_checkpointing", "seed", "deterministic", "num_workers", "threads",
    "out_dir", "name", "eval_every", "save_every", "time_limit_min", "tensorboard", "progress", "recipe",
})  # fmt: skip


def check_task_options(cfg: TrainConfig, task: str, options: frozenset[str] | set[str]) -> None:
    """Refuse, by name, the fields ``cfg`` sets that neither the engine nor ``task`` reads.

    A field counts as set when it differs from the dataclass default and is not a value that turns the feature
    off (0, None, False): ``drop_path=0.0`` is fine for a model without stochastic depth, ``hflip=True`` is not
    for a detector whose boxes would not move with the flip.
    """
    defaults = TrainConfig()
    unused = [
        f.name for f in fields(TrainConfig)
        if f.name not in ENGINE_OPTIONS and f.name not in options
        and getattr(cfg, f.name) != getattr(defaults, f.name) and getattr(cfg, f.name) not in (0, None, False)
    ]  # fmt: skip
    if unused:
        raise ValueError(
            f"the {task} task does not take {', '.join(unused)} (drop {'it' if len(unused) == 1 else 'them'})"
        )


class _Unset:
    """An override that sets a field to None (``--clip-grad none``): a plain None override means "not given"."""

    def __repr__(self) -> str:
        return "NONE"


NONE = _Unset()


def _field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def _check_keys(values: dict[str, Any], source: str) -> None:
    known = _field_names()
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown training option {key!r} in {source}{hint}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict of overrides, checking the keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option: value, got {type(values).__name__}")
    _check_keys(values, str(path))
    return values


def resolve_config(
    recipe: str | None = None, config_file: str | Path | None = None, **overrides: Any
) -> TrainConfig:
    """Build a TrainConfig from a recipe, a YAML file and keyword overrides (``None`` values are ignored)."""
    values: dict[str, Any] = {}
    file_values = load_config_file(config_file) if config_file else {}
    recipe = recipe or file_values.get("recipe") or overrides.get("recipe")
    if recipe is not None:
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; known recipes: {sorted(RECIPES)}")
        values.update(RECIPES[recipe])
        values["recipe"] = recipe
    values.update(file_values)
    overrides = {k: (None if v is NONE else v) for k, v in overrides.items() if v is not None}
    _check_keys(overrides, "overrides")
    values.update(overrides)
    _fit_warmup(values, RECIPES.get(recipe or "", {}), {**file_values, **overrides})
    cfg = TrainConfig(**values)
    _absolute_data_paths(cfg)
    for name in ("betas", "rrc_scale"):
        if isinstance(getattr(cfg, name), list):
            setattr(cfg, name, tuple(getattr(cfg, name)))
    _validate(cfg)
    return cfg


def _absolute_data_paths(cfg: TrainConfig) -> None:
    """The data a run reads, recorded as absolute paths (a run evaluated or resumed from another folder finds it):
    ``data_dir``, local weights to start from (``init_from``, ``init_image``, ``init_text``), the folder of
    ``folder:`` / ``coco:`` / ``manifest:`` / ``pairs:`` datasets (a ``{split}`` manifest pattern too), a language
    model's text file."""
    if cfg.data_dir:
        cfg.data_dir = str(Path(cfg.data_dir).expanduser().absolute())
    for name in ("init_from", "init_image", "init_text"):  # local weights (not a Hub id or a registry name)
        value = getattr(cfg, name)
        if value and Path(value).expanduser().exists():
            setattr(cfg, name, str(Path(value).expanduser().absolute()))
    kind, sep, rest = str(cfg.dataset).partition(":")
    where = Path(rest).expanduser()
    if sep and kind in ("folder", "coco", "manifest", "pairs") and rest and (where.exists() or "{split}" in rest
                                                                            and where.parent.is_dir()):  # fmt: skip
        cfg.dataset = f"{kind}:{where.absolute()}"
    elif not sep and cfg.task == "lm" and Path(cfg.dataset).expanduser().is_file():
        cfg.dataset = str(Path(cfg.dataset).expanduser().absolute())


def _fit_warmup(values: dict[str, Any], recipe: dict[str, Any], given: dict[str, Any]) -> None:
    """A recipe's warmup in a run shortened by the user keeps its fraction of the run (the digits recipe's 4 of 110
    epochs become 0.073 of 2; left as it was, the learning rate would still be rising when the run ends); a warmup
    the user gave, or the default one, that does not end before the run does is kept and warned about."""
    epochs = values.get("epochs", TrainConfig.epochs)
    warmup = values.get("warmup_epochs", TrainConfig.warmup_epochs)
    if "epochs" in given and "warmup_epochs" not in given and "warmup_epochs" in recipe:
        scaled = recipe["warmup_epochs"] * epochs / recipe.get("epochs", TrainConfig.epochs)
        if scaled != warmup:
            log.info("warmup scaled to %.3g epochs: the recipe's %g of %g epochs, for a run of %g",
                     scaled, recipe["warmup_epochs"], recipe.get("epochs", TrainConfig.epochs), epochs)  # fmt: skip
            values["warmup_epochs"] = scaled
    elif warmup >= epochs:
        log.warning("warmup_epochs=%g is not shorter than the run (%g epochs): the learning rate never reaches lr "
                    "(give a shorter --warmup-epochs)", warmup, epochs)  # fmt: skip


def _validate(cfg: TrainConfig) -> None:
    problems = []
    if cfg.epochs < 1:
        problems.append(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        problems.append(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.lr <= 0:
        problems.append(f"lr must be > 0, got {cfg.lr}")
    if cfg.accum_steps < 1:
        problems.append(f"accum_steps must be >= 1, got {cfg.accum_steps}")
    if cfg.on_bad_image not in ("skip", "raise"):
        problems.append(f"on_bad_image must be 'skip' or 'raise', got {cfg.on_bad_image!r}")
    if cfg.amp not in ("auto", "bf16", "off"):
        problems.append(f"amp must be 'auto', 'bf16' or 'off', got {cfg.amp!r}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        problems.append(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {cfg.device!r}")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.schedule not in ("cosine", "inverse_sqrt"):
        problems.append(f"schedule must be 'cosine' or 'inverse_sqrt', got {cfg.schedule!r}")
    if cfg.finetune_mode not in ("full", "linear", "partial"):
        problems.append(f"finetune_mode must be 'full', 'linear' or 'partial', got {cfg.finetune_mode!r}")
    if cfg.finetune_mode != "full" and not cfg.init_from:
        problems.append(f"finetune_mode={cfg.finetune_mode!r} needs init_from (the weights to start from)")
    if cfg.layer_decay is not None and not 0 < cfg.layer_decay <= 1:
        problems.append(f"layer_decay must be in (0, 1], got {cfg.layer_decay}")
    if cfg.block_size is not None and cfg.block_size < 1:
        problems.append(f"block_size must be >= 1, got {cfg.block_size}")
    if cfg.epoch_steps < 1:
        problems.append(f"epoch_steps must be >= 1, got {cfg.epoch_steps}")
    if not 0 < cfg.train_fraction < 1:
        problems.append(f"train_fraction must be in (0, 1), got {cfg.train_fraction}")
    if cfg.lock not in (None, "none", "image", "text"):
        problems.append(f"lock must be 'none', 'image' or 'text', got {cfg.lock!r}")
    if not cfg.cls_loss_coef > 0:
        problems.append(f"cls_loss_coef must be > 0, got {cfg.cls_loss_coef}")
    if cfg.contrastive_loss not in ("clip", "siglip"):
        problems.append(f"contrastive_loss must be 'clip' or 'siglip', got {cfg.contrastive_loss!r}")
    if cfg.train_subset is not None and cfg.train_subset <= 0:
        problems.append(f"train_subset must be a fraction in (0, 1) or a count >= 1, got {cfg.train_subset}")
    if problems:
        raise ValueError("invalid training config: " + "; ".join(problems))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML atomically (a kill mid-write leaves the old file, never an empty one)."""
    from ..weights.files import atomic_write

    text = yaml.safe_dump(config_dict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as plain values (tuples as lists): what config.yaml and a checkpoint hold."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


# What a resume may change: how long and how the run goes on, not what it trains (those are refused by name)
RESUME_OPTIONS = frozenset({
    "epochs", "time_limit_min", "eval_every", "save_every", "progress", "threads", "num_workers", "tensorboard",
    "device", "data_dir",
})  # fmt: skip


def resume_config(saved: dict[str, Any], **overrides: Any) -> TrainConfig:
    """The config a resumed run trains with: the one its checkpoint was trained with (``saved``), with the
    ``overrides`` a resume may change (:data:`RESUME_OPTIONS`). Any other override that differs is refused, naming
    the option and the run's value."""
    known = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**known)
    for name in ("betas", "rrc_scale"):
        if isinstance(getattr(cfg, name), list):
            setattr(cfg, name, tuple(getattr(cfg, name)))
    given = {k: (None if v is NONE else v) for k, v in overrides.items() if v is not None}
    _check_keys(given, "the resume's options")
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    # paths as the run recorded them (absolute): `--data coco:DIR` or `--from runs/a` again is not a change
    probe = dataclasses.replace(cfg, **given)
    _absolute_data_paths(probe)
    given = {k: getattr(probe, k) for k in given}
    refused = [f"{k} (the run has {getattr(cfg, k)!r})" for k, v in given.items()
               if k not in RESUME_OPTIONS and v != getattr(cfg, k)]  # fmt: skip
    if refused:
        raise ValueError(
            f"a resume goes on with the run's own settings; it cannot change {', '.join(refused)}. Resumable: "
            f"{', '.join(sorted(RESUME_OPTIONS))}; start a new run to change the rest"
        )
    for k, v in given.items():
        setattr(cfg, k, v)
    _validate(cfg)
    return cfg


def config_field_types() -> dict[str, Any]:
    """Field name -> dataclass field (for building command-line flags)."""
    return {f.name: f for f in dataclasses.fields(TrainConfig)}
