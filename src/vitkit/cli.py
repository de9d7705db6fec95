"""The ``vitkit`` command: train, evaluate, predict, explain, compress, export, serve, list and inspect models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _add_train_flags(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per TrainConfig field, typed from the dataclass (except ``skip``)."""
    from .train.config import config_field_types

    group = p.add_argument_group("training options (override the recipe / config file)")
    for name, f in config_field_types().items():
        if name == "recipe" or name in skip:
            continue  # its own flag, defined by the caller
        flag = "--" + name.replace("_", "-")
        tp = f.type if not isinstance(f.type, str) else None
        hint = str(f.type)
        if "dict" in hint:
            group.add_argument(flag, dest=name, type=json.loads, default=None, help="JSON object")
        elif hint.startswith("bool"):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif "tuple" in hint:
            group.add_argument(flag, dest=name, type=float, nargs=2, default=None, metavar=("A", "B"))
        else:
            caster = {"int": int, "float": float, "str": str}
            base = next((caster[k] for k in ("float", "int") if k in hint), str)
            if tp in (int, float, str):
                base = tp
            group.add_argument(flag, dest=name, type=_optional(base), default=None)


def _optional(base):
    def cast(value: str):
        return None if value.lower() in ("none", "null") else base(value)

    cast.__name__ = base.__name__
    return cast


def _train_overrides(args: argparse.Namespace) -> dict[str, typing.Any]:
    from .train.config import config_field_types

    out = {}
    for name in config_field_types():
        value = getattr(args, name, None)
        if value is not None and name != "recipe":
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


# Options of the classification recipes that other tasks (pre-training, translation, detection) do not take.
_CLASSIFIER_ONLY = ("init_from", "finetune_mode", "freeze_blocks", "layer_decay", "teacher", "distill",
                    "distill_alpha", "distill_tau", "mixup", "cutmix", "mix_prob")  # fmt: skip


def _report(summary: dict[str, typing.Any], figures: str, first_line: str | None = None) -> int:
    """Print a run's summary: its folder, then epochs, ``figures``, time and size (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") != "0":
        return 0
    if first_line:
        print(first_line)
    print(f"run directory: {summary['run_dir']}")
    params = summary.get("encoder_params", summary["params"])
    print(
        f"epochs: {summary['epochs']}  {figures}  time: {summary['elapsed_s']:.1f}s  params: {params / 1e6:.3f}M"
    )
    return 0


def _report_classifier(summary: dict[str, typing.Any], first_line: str | None = None) -> int:
    return _report(
        summary, f"val top-1: {summary['val_acc']:.4f}  best: {summary['best_val_acc']:.4f}", first_line
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    summary = train(recipe=args.recipe, config_file=args.config, resume=args.resume, **_train_overrides(args))
    return _report_classifier(summary)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .train import train

    overrides = _train_overrides(args)
    if args.recipe is None and args.config is None and "dataset" not in overrides:
        raise ValueError("name the data to fine-tune on: --data NAME (or --recipe / --config)")
    summary = train(recipe=args.recipe, config_file=args.config, resume=args.resume, **overrides)
    source = f"fine-tuned from: {overrides.get('init_from')}  mode: {overrides.get('finetune_mode', 'full')}"
    return _report_classifier(summary, source)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .train.pretrain import pretrain

    summary = pretrain(
        args.method, recipe=args.recipe, config_file=args.config, resume=args.resume, **_train_overrides(args)
    )
    _report(summary, f"val {args.method} loss: {summary['val_loss']:.4f}")
    if os.environ.get("RANK", "0") != "0":
        return 0
    run = summary["run_dir"]
    extra = f"  reconstructions: {run}/reconstructions.png" if args.method == "mae" else ""
    print(f"encoder: {run}/encoder.safetensors{extra}")
    print(f"next: vitkit finetune --from {run} --data DATASET")
    return 0


def _translate_train_parser() -> argparse.ArgumentParser:
    from .train.config import RECIPES

    p = argparse.ArgumentParser(
        prog="vitkit translate train", description="train an encoder-decoder translator"
    )
    p.add_argument("--data", dest="dataset", default=None, help="multi30k-SRC-TGT, e.g. multi30k-de-en")
    p.add_argument("--recipe", default=None, help=f"named recipe: {', '.join(RECIPES)}")
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its checkpoint")
    _add_train_flags(p, skip=_CLASSIFIER_ONLY)
    return p


def cmd_translate(args: argparse.Namespace) -> int:
    """``vitkit translate train [flags]`` or ``vitkit translate RUN "sentence" ... [--beam K]``."""
    if args.target == "train":
        from .train.translate import train_translation

        targs = _translate_train_parser().parse_args(args.rest)
        overrides = _train_overrides(targs)
        if targs.recipe is None and targs.config is None and "dataset" not in overrides:
            targs.recipe = "multi30k-de-en"
        summary = train_translation(targs.recipe, targs.config, targs.resume, **overrides)
        return _report(summary, f"val BLEU: {summary['val_bleu']:.2f}  test_2016_flickr BLEU: greedy "
                                f"{summary['test_bleu_greedy']:.2f}, beam 4 {summary['test_bleu_beam4']:.2f}")  # fmt: skip
    from .train.translate import load_translator, translate

    p = argparse.ArgumentParser(
        prog="vitkit translate RUN", description="translate sentences with a trained run"
    )
    p.add_argument("sentences", nargs="+")
    p.add_argument("--beam", type=int, default=4, help="beam size (1 = greedy)")
    p.add_argument("--max-len", type=int, default=64)
    targs = p.parse_args(args.rest)
    if any(not s.strip() for s in targs.sentences):
        raise ValueError("empty sentence: nothing to translate")
    model, tokenizer = load_translator(args.target)
    outputs = translate(model, tokenizer, targs.sentences, targs.beam, targs.max_len)
    for src, out in zip(targs.sentences, outputs, strict=True):
        print(f"{src}\n  -> {out}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    """``vitkit detect make-canvas ...`` writes a COCO canvas set; ``vitkit detect train ...`` trains DETR."""
    if args.action == "make-canvas":
        from .data import build_dataset
        from .data.canvas import make_canvases, write_coco

        p = argparse.ArgumentParser(prog="vitkit detect make-canvas",
                                    description="multi-object canvases of real dataset items, in COCO format")  # fmt: skip
        p.add_argument(
            "--source", default="fashion-mnist", help="dataset whose items are placed (train/test)"
        )
        p.add_argument("--data-dir", default=None)
        p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
        p.add_argument(
            "--train", type=int, default=5000, help="training canvases (items from the train split)"
        )
        p.add_argument("--val", type=int, default=500, help="validation canvases (items from the test split)")
        p.add_argument("--canvas", type=int, default=64)
        p.add_argument("--objects", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"))
        p.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.2), metavar=("MIN", "MAX"))
        p.add_argument("--seed", type=int, default=0)
        a = p.parse_args(args.rest)
        for split, n, seed in (("train", a.train, a.seed), ("val", a.val, a.seed + 1)):
            source = build_dataset(a.source, "train" if split == "train" else "test", data_dir=a.data_dir)
            images, targets, masks = make_canvases(source.raw, source.targets, n, a.canvas, tuple(a.objects),
                                                   tuple(a.scale), seed=seed)  # fmt: skip
            path = write_coco(Path(a.out) / split, images, targets, source.classes, masks)
            print(f"{split}: {n} canvases, {sum(len(t['labels']) for t in targets)} objects -> {path}")
        return 0
    if args.action == "make-penn-fudan":
        from .data.pennfudan import convert_penn_fudan

        p = argparse.ArgumentParser(prog="vitkit detect make-penn-fudan",
                                    description="Penn-Fudan pedestrians -> COCO boxes + person masks (local use)")  # fmt: skip
        p.add_argument("--data-dir", default=None, help="folder holding penn-fudan/PennFudanPed-webp.tar.xz")
        p.add_argument("--out", required=True, help="output folder (gets train/ and val/); keep it local")
        p.add_argument("--val", type=int, default=50, help="validation images (a seeded split)")
        p.add_argument("--seed", type=int, default=0)
        a = p.parse_args(args.rest)
        from .data import resolve_data_dir

        counts = convert_penn_fudan(resolve_data_dir(a.data_dir), a.out, a.val, a.seed)
        for split in ("train", "val"):
            print(f"{split}: {counts[split + '_images']} images, {counts[split + '_people']} people -> "
                  f"{Path(a.out) / split / 'annotations.json'}")  # fmt: skip
        return 0
    if args.action == "train":
        from .train.detect import train_detection

        summary = _dense_train(args.rest, "vitkit detect train", "train DETR on COCO-format data",
                               train_detection, "detr_vit_canvas")  # fmt: skip
        nan = float("nan")
        return _report(
            summary, f"val AP50: {summary.get('val_AP50', nan):.3f}  AP: {summary.get('val_AP', nan):.3f}"
        )
    raise ValueError(f"unknown detect action {args.action!r}: make-canvas, make-penn-fudan or train")


def _dense_train(rest: list[str], prog: str, description: str, fit, default_model: str) -> dict:
    """Parse the training flags of a COCO-folder task (detection, segmentation) and run it."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--data", dest="dataset", default=None, help="coco:DIR (DIR/train, DIR/val)")
    p.add_argument("--recipe", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--resume", default=None, metavar="RUN_DIR")
    p.add_argument("--from", dest="init_from", default=None, metavar="RUN_OR_WEIGHTS",
                   help="start the backbone from a vitkit run or model file (supervised ViT or MAE)")  # fmt: skip
    _add_train_flags(p, skip=_CLASSIFIER_ONLY)
    a = p.parse_args(rest)
    if a.dataset is None and a.resume is None:
        p.error("--data coco:DIR is required (or --resume RUN_DIR)")
    overrides = _train_overrides(a)
    if a.resume is None:  # a resumed run keeps the model (and everything else) of its saved config
        overrides.setdefault("model", default_model)
    if a.init_from:
        overrides["init_from"] = a.init_from
    return fit(a.recipe, a.config, a.resume, **overrides)


def cmd_segment(args: argparse.Namespace) -> int:
    """``vitkit segment train --data coco:DIR ...`` trains a Segmenter on COCO folders with ``masks/``."""
    if args.action != "train":
        raise ValueError(f"unknown segment action {args.action!r}: train")
    from .train.segment import train_segmentation

    summary = _dense_train(args.rest, "vitkit segment train", "train a Segmenter on COCO folders with masks/",
                           train_segmentation, "segmenter_vit_canvas")  # fmt: skip
    return _report(summary, f"val mIoU: {summary['val_mIoU']:.3f}  pixel acc: {summary['val_pixel_acc']:.4f}")


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .metrics import format_metrics_table

    metrics = evaluate(
        args.checkpoint, dataset=args.data, data_dir=args.data_dir, split=args.split,
        batch_size=args.batch_size, out_json=args.out, device=args.device,
    )  # fmt: skip
    print(format_metrics_table(metrics))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import format_predictions, predict

    results = predict(args.checkpoint, args.images, topk=args.topk)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_image

    result = explain_image(
        args.checkpoint, args.image, args.out, method=args.method, head_fusion=args.head_fusion,
        discard_ratio=args.discard_ratio, target=args.target,
    )  # fmt: skip
    print(f"{args.image}: {result['label']} (p={result['prob']:.3f}), {args.method} relevance")
    print(f"wrote {result['png']} and {result['npy']}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from .compress.run import compress_run, format_report

    report = compress_run(
        args.run, args.method, args.out, energy=args.energy, rank=args.rank, heads=args.heads, mlp=args.mlp,
        tome_r=args.tome_r, int8_static=args.int8_static, keep_float=tuple(args.keep_float), calib_batches=args.calib_batches, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
        data_dir=args.data_dir,
    )  # fmt: skip
    print(format_report(report))
    print(f"wrote {report['out_dir']}/model.safetensors and report.json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model, format_export_report

    report = export_model(
        args.checkpoint, args.format, args.out, batch_size=args.batch_size, atol=args.atol, opset=args.opset,
        bench=args.bench,
    )  # fmt: skip
    print(format_export_report(report))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as e:
        raise RuntimeError("vitkit serve needs the serve extras: pip install 'vitkit[serve]'") from e
    from .serve import create_app

    app = create_app(args.checkpoint, topk=args.topk, batching=args.batching, max_batch=args.max_batch,
                     batch_wait_ms=args.batch_wait_ms, max_bytes=int(args.max_mb * 2**20))  # fmt: skip
    print(
        f"serving {args.checkpoint} on http://{args.host}:{args.port}/ (batching {'on' if args.batching else 'off'})"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import list_models

    names = list_models(args.pattern)
    print("\n".join(names))
    print(f"({len(names)} models)", file=sys.stderr)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    import torch

    from . import create_model
    from .models import vit_flops

    model = create_model(args.model)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {type(model).__name__}")
    for key in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads",
                "mlp_ratio", "global_pool"):  # fmt: skip
        print(f"  {key:12s} {cfg[key]}")
    print(f"  {'tokens':12s} {model.patch_embed.num_patches} patches + {model.num_prefix_tokens} prefix")
    print(f"  {'params':12s} {n_params / 1e6:.2f}M")
    print(f"  {'GFLOPs':12s} {vit_flops(model) / 1e9:.3f} per image")
    x = torch.zeros(1, cfg["in_chans"], *cfg["img_size"])
    with torch.inference_mode():
        print(f"  {'output':12s} {tuple(model.eval()(x).shape)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit",
        description="Vision Transformers: train, evaluate, predict, explain, compress, export, serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")

    from .train.config import RECIPES

    p = sub.add_parser("train", help="train a model (default: a ViT on the embedded 8x8 digits)")
    p.add_argument("--recipe", default=None, help=f"named recipe: {', '.join(RECIPES)}")
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its checkpoint")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "finetune",
        help="fine-tune pre-trained weights (vitkit run, MAE run, timm/HF/JAX file): full, linear probe, partial",
    )
    p.add_argument("--from", dest="init_from", required=True, metavar="RUN_OR_WEIGHTS",
                   help="vitkit run directory / model.safetensors / MAE pre-training run, or a timm, HuggingFace "
                   "or JAX checkpoint (then --model names the architecture)")  # fmt: skip
    p.add_argument("--data", dest="dataset", default=None, help="dataset to fine-tune on")
    p.add_argument("--mode", dest="finetune_mode", default=None, choices=("full", "linear", "partial"),
                   help="full fine-tune (default), linear probe (frozen backbone) or partial (--freeze-blocks)")  # fmt: skip
    p.add_argument("--recipe", default=None, help=f"named recipe: {', '.join(RECIPES)}")
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its checkpoint")
    _add_train_flags(p, skip=("init_from", "finetune_mode"))
    p.set_defaults(func=cmd_finetune)

    from .train.pretrain import PRETRAIN_METHODS

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pre-training without labels: masked autoencoder (images), masked LM (text)",
    )
    p.add_argument("--method", default="mae", choices=PRETRAIN_METHODS)
    p.add_argument(
        "--data", dest="dataset", default=None, help="dataset whose images / sentences to pre-train on"
    )
    p.add_argument("--recipe", default=None, help=f"named recipe: {', '.join(RECIPES)}")
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its checkpoint")
    _add_train_flags(p, skip=(*_CLASSIFIER_ONLY, "label_smoothing"))
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "translate",
        help="'translate train [flags]' trains an encoder-decoder (Multi30k); 'translate RUN \"text\"' translates",
        add_help=False,
    )
    p.add_argument("target", metavar="train|RUN", help="'train', or a translation run directory")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="training flags, or the sentences (and --beam K)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser(
        "detect", add_help=False,
        help="'detect make-canvas --out DIR' writes COCO canvases; 'detect train --data coco:DIR' trains DETR",
    )  # fmt: skip
    p.add_argument("action", metavar="make-canvas|make-penn-fudan|train")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser(
        "segment",
        add_help=False,
        help="'segment train --data coco:DIR' trains a Segmenter (mask or linear decoder)",
    )
    p.add_argument("action", metavar="train")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("eval", help="evaluate a run or model file on a dataset split")
    p.add_argument("checkpoint", help="run directory or model .safetensors")
    p.add_argument("--data", default=None, help="dataset name (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="where to write the metrics JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes for images")
    p.add_argument("checkpoint", help="run directory or model .safetensors")
    p.add_argument("images", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    from .explain import HEAD_FUSIONS, METHODS

    p = sub.add_parser("explain", help="attention rollout heatmap of a prediction, as PNG + .npy")
    p.add_argument("checkpoint", help="run directory or model .safetensors")
    p.add_argument("image")
    p.add_argument("-o", "--out", default="explain.png", help="PNG to write (the .npy goes beside it)")
    p.add_argument("--method", default="rollout", choices=METHODS)
    p.add_argument("--head-fusion", default="mean", choices=HEAD_FUSIONS)
    p.add_argument(
        "--discard-ratio", type=float, default=0.0, help="rollout: drop this fraction of weakest links"
    )
    p.add_argument(
        "--target", type=int, default=None, help="class index to explain (default: the predicted one)"
    )
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "compress",
        help="quantize, factorise, prune or token-merge a trained run; report size, speed, accuracy",
    )
    p.add_argument("run", help="run directory (model.safetensors + config.yaml)")
    p.add_argument("--method", required=True, choices=("int8", "lowrank", "prune", "tome"))
    p.add_argument("-o", "--out", default=None, help="output directory (default: RUN-METHOD beside the run)")
    p.add_argument("--energy", type=float, default=None, help="lowrank: kept squared singular-value energy")
    p.add_argument("--rank", type=int, default=None, help="lowrank: one rank for every factorised layer")
    p.add_argument("--heads", type=float, default=0.0, help="prune: fraction of attention heads to remove")
    p.add_argument("--mlp", type=float, default=0.0, help="prune: fraction of MLP hidden units to remove")
    p.add_argument("--tome-r", type=int, default=0, help="tome: token pairs merged in every block")
    p.add_argument(
        "--int8-static", action=argparse.BooleanOptionalAction, default=True,
        help="int8: also run the patch embedding (conv stem) in int8, calibrated on training batches",
    )  # fmt: skip
    p.add_argument(
        "--keep-float", nargs="*", default=["head", "head_dist"], metavar="MODULE",
        help="int8: module names (glob patterns) left in float (default: the classifier head)",
    )  # fmt: skip
    p.add_argument(
        "--calib-batches",
        type=int,
        default=8,
        help="prune/int8: training batches to score units or calibrate on",
    )
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--finetune-lr", type=float, default=None, help="default: a tenth of the run's lr")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser(
        "export",
        help="export a model as ONNX, TorchScript or safetensors; check it against PyTorch and time it",
    )
    p.add_argument("checkpoint", help="run directory or model .safetensors")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript", "safetensors"))
    p.add_argument(
        "-o",
        "--out",
        default=None,
        help="output file (default: model.onnx, model.torchscript.pt or model.export.safetensors beside it)",
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="batch used to export and check (batch stays dynamic)"
    )
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed |logit difference| vs PyTorch")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True, help="time both runtimes")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve", help="serve a model over HTTP: /predict, /explain, /health and an upload page"
    )
    p.add_argument("checkpoint", help="run directory or model .safetensors")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                   help="share forward passes between concurrent requests")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests"
    )
    p.add_argument("--max-mb", type=float, default=10.0, help="largest upload accepted, in MiB")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="list registered model names")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("summary", help="build a model and print its shape, size and FLOPs")
    p.add_argument("model")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        if args.verbose:
            raise
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
