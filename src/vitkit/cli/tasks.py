"""The task-named command groups: ``translate``, ``detect``, ``segment``.

Each has a ``train`` subcommand (an alias of ``vitkit train --task NAME``) and the task's own tools:
``translate RUN "sentence"``, ``detect make-canvas`` / ``make-penn-fudan``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_own_parser
from .train import run_training, train_parser

__all__ = ["add_task_commands"]


def _usage(prog: str, lines: list[str]) -> int:
    print(f"usage: {prog} ACTION ...\n\nactions:")
    for line in lines:
        print(f"  {line}")
    print(f"\n'{prog} ACTION --help' lists an action's flags.")
    return 0


def _is_help(rest: list[str]) -> bool:
    return not rest or rest[0] in ("-h", "--help")


# ---------------------------------------------------------------- translate
def cmd_translate(args: argparse.Namespace) -> int:
    """``vitkit translate train [flags]`` or ``vitkit translate RUN "sentence" ... [--beam K]``."""
    rest = args.rest
    if _is_help(rest):
        return _usage("vitkit translate", ["train [flags]     train an encoder-decoder (default recipe multi30k-de-en)",
                                           'RUN "sentence"... translate sentences with a trained run (--beam K)'])  # fmt: skip
    if rest[0] == "train":
        p = train_parser("translation", "vitkit translate train", "train an encoder-decoder translator")
        argv = rest[1:]
        if not any(a in argv for a in ("--recipe", "--config", "--resume", "--data", "--dataset")):
            argv = ["--recipe", "multi30k-de-en", *argv]
        return run_training(p, argv)
    from ..tasks.translation import load_translator, translate

    p = argparse.ArgumentParser(
        prog="vitkit translate RUN", description="translate sentences with a trained run"
    )
    p.add_argument("run", help="a translation run directory")
    p.add_argument("sentences", nargs="+")
    p.add_argument("--beam", type=int, default=4, help="beam size (1 = greedy)")
    p.add_argument("--max-len", type=int, default=64)
    a = p.parse_args(rest)
    if any(not s.strip() for s in a.sentences):
        raise ValueError("empty sentence: nothing to translate")
    model, tokenizer = load_translator(a.run)
    for src, out in zip(
        a.sentences, translate(model, tokenizer, a.sentences, a.beam, a.max_len), strict=True
    ):
        print(f"{src}\n  -> {out}")
    return 0


# ---------------------------------------------------------------- detect / segment
def _make_canvas(rest: list[str]) -> int:
    from ..data import build_dataset
    from ..data.canvas import make_canvases, write_coco

    p = argparse.ArgumentParser(prog="vitkit detect make-canvas",
                                description="multi-object canvases of real dataset items, in COCO format")  # fmt: skip
    p.add_argument("--source", default="fashion-mnist", help="dataset whose items are placed (train/test)")
    p.add_argument("--data-dir", default=None, help="folder holding the source dataset (e.g. ../shared/data)")
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--train", type=int, default=5000, help="training canvases (items from the train split)")
    p.add_argument("--val", type=int, default=500, help="validation canvases (items from the test split)")
    p.add_argument("--canvas", type=int, default=64, help="canvas side in pixels (default 64)")
    p.add_argument("--objects", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"),
                   help="items per canvas, drawn uniformly (default 1 4)")  # fmt: skip
    p.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.2), metavar=("MIN", "MAX"),
                   help="each item's size as a factor of its own (default 0.5 1.2)")  # fmt: skip
    p.add_argument("--distort", type=float, default=0.0,
                   help="random affine distortion of each training item (1: up to 15 degrees of rotation, 0.3 of "
                        "shear, 15%% of stretch); the validation canvases are never distorted")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the training canvases")
    p.add_argument("--val-seed", type=int, default=None,
                   help="seed of the validation canvases (default: --seed + 1); keep it to draw new training "
                        "canvases beside the same held-out ones")  # fmt: skip
    a = p.parse_args(rest)
    if min(a.train, a.val) < 0:
        p.error(f"--train and --val count canvases (>= 0), got {a.train} and {a.val}")
    val_seed = a.seed + 1 if a.val_seed is None else a.val_seed
    for split, n, seed in (("train", a.train, a.seed), ("val", a.val, val_seed)):
        if n == 0:
            print(f"{split}: none written (--{split} 0)")
            continue
        source = build_dataset(a.source, "train" if split == "train" else "test", data_dir=a.data_dir)
        images, targets, masks = make_canvases(source.raw, source.targets, n, a.canvas, tuple(a.objects),
                                               tuple(a.scale), seed=seed,
                                               distort=a.distort if split == "train" else 0.0)  # fmt: skip
        path = write_coco(Path(a.out) / split, images, targets, source.classes, masks)
        print(f"{split}: {n} canvases, {sum(len(t['labels']) for t in targets)} objects -> {path}")
    return 0


def _make_penn_fudan(rest: list[str]) -> int:
    from ..data import resolve_data_dir
    from ..data.pennfudan import convert_penn_fudan

    p = argparse.ArgumentParser(prog="vitkit detect make-penn-fudan",
                                description="Penn-Fudan pedestrians -> COCO boxes + person masks (local use)")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="folder holding penn-fudan/PennFudanPed-webp.tar.xz")
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/); keep it local")
    p.add_argument("--val", type=int, default=50, help="validation images (a seeded split)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(rest)
    counts = convert_penn_fudan(resolve_data_dir(a.data_dir), a.out, a.val, a.seed)
    for split in ("train", "val"):
        print(f"{split}: {counts[split + '_images']} images, {counts[split + '_people']} people -> "
              f"{Path(a.out) / split / 'annotations.json'}")  # fmt: skip
    return 0


def _dense_train(task: str, rest: list[str]) -> int:
    what = "DETR on COCO-format data" if task == "detection" else "a Segmenter on COCO folders with masks/"
    verb = "detect" if task == "detection" else "segment"
    p = train_parser(task, f"vitkit {verb} train", f"train {what}")
    args, _ = p.parse_known_args(rest)
    if args.dataset is None and args.resume is None and args.config is None:
        p.error("--data coco:DIR is required (or --resume RUN_DIR)")
    return run_training(p, rest)


def cmd_detect(args: argparse.Namespace) -> int:
    actions = {"make-canvas": _make_canvas, "make-penn-fudan": _make_penn_fudan,
               "train": lambda rest: _dense_train("detection", rest)}  # fmt: skip
    if _is_help(args.rest):
        return _usage("vitkit detect", ["make-canvas --out DIR      multi-object canvases of real items (COCO format)",
                                        "make-penn-fudan --out DIR  Penn-Fudan pedestrians as COCO boxes + masks",
                                        "train --data coco:DIR      train DETR"])  # fmt: skip
    action, *rest = args.rest
    if action not in actions:
        raise ValueError(f"unknown detect action {action!r}: {', '.join(actions)}")
    return actions[action](rest)


def cmd_segment(args: argparse.Namespace) -> int:
    if _is_help(args.rest):
        return _usage(
            "vitkit segment", ["train --data coco:DIR   train a Segmenter (mask or linear decoder)"]
        )
    action, *rest = args.rest
    if action != "train":
        raise ValueError(f"unknown segment action {action!r}: train")
    return _dense_train("segmentation", rest)


def add_task_commands(sub) -> None:
    for name, func, text in (
        ("translate", cmd_translate, "'translate train [flags]' trains an encoder-decoder (Multi30k); "
                                     "'translate RUN \"text\"' translates"),
        ("detect", cmd_detect, "'detect make-canvas --out DIR' writes COCO canvases; 'detect train --data coco:DIR' "
                               "trains DETR"),
        ("segment", cmd_segment, "'segment train --data coco:DIR' trains a Segmenter (mask or linear decoder)"),
    ):  # fmt: skip
        add_own_parser(sub, name, func, text)
