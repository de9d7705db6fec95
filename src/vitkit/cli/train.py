"""``vitkit train`` for every task, and its task-named aliases.

``vitkit train --task NAME [flags]`` trains any task; ``finetune``, ``pretrain --method mae|mlm``,
``translate train``, ``detect train`` and ``segment train`` are the same command with the task (and for
``finetune`` the ``--from`` weights) named for you. Each parser carries exactly the flags its task takes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from .options import add_own_parser, add_train_flags, refuse_other_task_flags, task_fields, train_overrides

__all__ = ["train_parser", "run_training", "add_training_commands"]

DATA_HELP = {
    "classification": "dataset name (digits, mnist, fashion-mnist, cifar10-jpeg, folder:PATH, manifest:FILE)",
    "text-classification": "text dataset (sst2)",
    "mae": "image dataset whose images to pre-train on",
    "mlm": "text dataset whose sentences to pre-train on",
    "translation": "multi30k-SRC-TGT, e.g. multi30k-de-en",
    "detection": "coco:DIR (DIR/train, DIR/val with annotations.json)",
    "segmentation": "coco:DIR (DIR/train, DIR/val with annotations.json and masks/)",
    "lm": "a UTF-8 text file, or tinyshakespeare (DATA_DIR/tinyshakespeare/input.txt)",
}


def train_parser(
    task_name: str, prog: str, description: str, fixed: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """The parser of one task's training command: common flags, then the task's training options.

    ``fixed`` names fields the command sets itself (no flag for them).
    """
    from ..engine.config import RECIPES
    from ..tasks import get_task

    task = get_task(task_name)
    p = argparse.ArgumentParser(prog=prog, description=description)
    if "dataset" not in fixed:
        p.add_argument("--data", "--dataset", dest="dataset", default=None, help=DATA_HELP.get(task_name))
    if "init_from" in task.options and "init_from" not in fixed:
        p.add_argument("--from", "--init-from", dest="init_from", default=None, metavar="RUN_OR_WEIGHTS",
                       help="start from a vitkit run or model file (or, for classification, a timm / HF / JAX "
                            "checkpoint or an hf-hub:org/name Hub id, with --model naming the architecture; for "
                            "text, a HuggingFace BERT folder or hf-hub: id; for detection / segmentation, a ViT "
                            "run for the backbone, or a run of the same task for every weight)")  # fmt: skip
    recipes = [n for n, r in RECIPES.items() if r.get("task", "classification") == task_name]
    p.add_argument(
        "--recipe", default=None, help=f"named recipe: {', '.join(recipes) or 'none for this task'}"
    )
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its checkpoint")
    add_train_flags(p, task_fields(task), skip=("dataset", "init_from", *fixed))
    p.set_defaults(task_name=task_name)
    return p


def run_training(parser: argparse.ArgumentParser, argv: Sequence[str], fixed_task: bool = True) -> int:
    """Parse ``argv`` with a :func:`train_parser`, train, print the run's result lines. ``fixed_task``: the command
    names the task (``detect train``...); otherwise only an explicit ``--task`` does, and a recipe, YAML file or
    resumed run keeps its own."""
    from ..tasks import get_task
    from ..train import train

    args, unknown = parser.parse_known_args(argv)
    refuse_other_task_flags(unknown, args.task_name, parser)
    overrides = train_overrides(args)
    if args.resume is None and fixed_task:
        overrides["task"] = args.task_name
    summary = train(recipe=args.recipe, config_file=args.config, resume=args.resume, **overrides)
    if os.environ.get("RANK", "0") != "0":
        return 0
    task = get_task(summary.get("task", args.task_name))
    run = summary["run_dir"]
    if "init_from" in overrides:
        print(f"fine-tuned from: {overrides['init_from']}  mode: {task.training_mode(overrides)}")
    print(f"run directory: {run}")
    params = summary.get("encoder_params", summary["params"])
    print(f"epochs: {summary['epochs']}  {task.report(summary)}  time: "
          f"{summary['elapsed_s']:.1f}s  params: {params / 1e6:.3f}M")  # fmt: skip
    print_run_files(task.name, run)
    return 0


# What a user does next with a finished run of each task (the generic commands work for every family)
_IMAGE_NEXT = "vitkit eval {run} · vitkit predict {run} IMAGE · vitkit serve {run}"
_PRETRAIN_NEXT = "vitkit finetune --from {run} --data DATASET"
_NEXT = {
    **dict.fromkeys(("classification", "detection", "segmentation"), _IMAGE_NEXT),
    **dict.fromkeys(("mae", "mlm"), _PRETRAIN_NEXT),
    "contrastive": "vitkit zeroshot {run} --data DATASET · vitkit fewshot {run} --data DATASET",
}


def print_run_files(task: str, run: str | os.PathLike) -> None:
    """The last lines of a run: the files it wrote, and the commands that use them."""
    from pathlib import Path

    files = sorted(p.name for p in Path(run).iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"files: {', '.join(files)}")
    print(f"next: {_NEXT.get(task, 'vitkit eval {run}').format(run=run)}")


def _task_from_argv(argv: Sequence[str]) -> str | None:
    """The task a training command line means (to choose its flags): ``--task``, else the resumed run's, the
    recipe's, the YAML file's, or the one the dataset implies."""
    from pathlib import Path

    import yaml

    from ..engine.config import RECIPES
    from ..tasks import task_for

    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--task", "--resume", "--recipe", "--config"):
        pre.add_argument(flag, default=None)
    pre.add_argument("--data", "--dataset", dest="dataset", default=None)
    known, _ = pre.parse_known_args(argv)
    saved: dict = {}
    if known.resume and (Path(known.resume) / "config.yaml").is_file():
        saved = yaml.safe_load((Path(known.resume) / "config.yaml").read_text()) or {}
    elif known.config and Path(known.config).is_file():
        saved = yaml.safe_load(Path(known.config).read_text()) or {}
    recipe = RECIPES.get(known.recipe or saved.get("recipe") or "", {})
    task = known.task or saved.get("task") or recipe.get("task")
    dataset = known.dataset or saved.get("dataset") or recipe.get("dataset")
    return task or (task_for(dataset) if dataset else None)


def cmd_train(args: argparse.Namespace) -> int:
    from ..tasks import get_task

    name = _task_from_argv(args.rest) or "classification"
    get_task(name)  # an unknown task is named before any flag is parsed
    p = train_parser(
        name, "vitkit train", f"train a model: the {name} task (default: a ViT on the embedded digits)"
    )
    p.add_argument("--task", default=None, help=f"what to train (this help: {name})")
    return run_training(p, args.rest, fixed_task=False)


def cmd_finetune(args: argparse.Namespace) -> int:
    name = _task_from_argv(args.rest) or "classification"
    p = train_parser(
        name, "vitkit finetune", "fine-tune pre-trained weights (vitkit run, MAE run, timm/HF/JAX file)"
    )
    p.add_argument("--task", default=None, help="classification (default) or text-classification")
    if name == "classification":
        p.add_argument("--mode", dest="finetune_mode", default=None, choices=("full", "linear", "partial"),
                       help="full fine-tune (default), linear probe (frozen backbone) or partial (--freeze-blocks)")  # fmt: skip
    args_, _ = p.parse_known_args(args.rest)
    if args_.resume is None and not args_.init_from:
        p.error("--from RUN_OR_WEIGHTS is required (the weights to fine-tune)")
    if args_.resume is None and args_.recipe is None and args_.config is None and args_.dataset is None:
        raise ValueError("name the data to fine-tune on: --data NAME (or --recipe / --config)")
    return run_training(p, args.rest, fixed_task=False)


def cmd_pretrain(args: argparse.Namespace) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default="mae", choices=("mae", "mlm"))
    known, _ = pre.parse_known_args(args.rest)
    p = train_parser(known.method, "vitkit pretrain", "self-supervised pre-training without labels: masked "
                     "autoencoder (--method mae, images) or masked language model (--method mlm, text)")  # fmt: skip
    p.add_argument("--method", default="mae", choices=("mae", "mlm"), help="mae (images) or mlm (text)")
    return run_training(p, args.rest)


def add_training_commands(sub) -> None:
    """``train``, ``finetune`` and ``pretrain``: each parses its own flags, those of the task it trains."""
    for name, func, text in (
        ("train", cmd_train, "train any task (--task NAME, listed by 'vitkit train --help'; default image "
                             "classification on the embedded digits); 'vitkit train --task NAME --help' lists that "
                             "task's flags"),
        ("finetune", cmd_finetune, "fine-tune pre-trained weights (vitkit run, MAE run, timm/HF/JAX file): full, "
                                   "linear probe, partial"),
        ("pretrain", cmd_pretrain, "self-supervised pre-training without labels: masked autoencoder (images), "
                                   "masked LM (text)"),
    ):  # fmt: skip
        add_own_parser(sub, name, func, text)
