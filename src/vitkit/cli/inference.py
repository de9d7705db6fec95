"""The inference commands: ``eval``, ``predict``, ``explain``, ``fewshot``, ``zeroshot`` on a run directory or
model file."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_inference_commands"]


def _task(checkpoint: str) -> str:
    from ..tasks.inference import task_of_file

    return task_of_file(checkpoint) or "classification"  # not a vitkit file: the classifier path names why


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate
    from ..metrics import format_metrics_table

    task = _task(args.checkpoint)
    if task != "classification":
        from ..tasks.inference import evaluate as evaluate_task

        result = evaluate_task(args.checkpoint, dataset=args.data, data_dir=args.data_dir, out_json=args.out,
                               device=args.device, batch_size=args.batch_size, split=args.split,
                               resize=args.resize)  # fmt: skip
        for key, value in result.items():
            print(f"{key:16s} {value}")
        return 0

    metrics = evaluate(
        args.checkpoint, dataset=args.data, data_dir=args.data_dir, split=args.split,
        batch_size=args.batch_size, out_json=args.out, device=args.device, resize=args.resize,
    )  # fmt: skip
    print(format_metrics_table(metrics))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Any task: a classifier's top-k, a detector's boxes, a segmenter's mask, a translation, a filled [MASK]..."""
    from ..tasks import get_task
    from ..tasks.inference import predict

    task = get_task(_task(args.checkpoint))
    if task.name == "classification":
        from ..predict import predict as predict_images

        results = predict_images(args.checkpoint, args.inputs, topk=args.topk)
    else:
        options = {"topk": args.topk, "threshold": args.threshold, "beam": args.beam}
        results = predict(args.checkpoint, args.inputs, out_dir=args.out, **options)
    print(json.dumps(results, indent=2) if args.json else task.format_predictions(results))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ..explain import explain_image

    result = explain_image(
        args.checkpoint, args.image, args.out, method=args.method, head_fusion=args.head_fusion,
        discard_ratio=args.discard_ratio, target=args.target,
    )  # fmt: skip
    print(f"{args.image}: {result['label']} (p={result['prob']:.3f}), {args.method} relevance")
    print(f"wrote {result['png']} and {result['npy']}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def cmd_fewshot(args: argparse.Namespace) -> int:
    from ..fewshot import fewshot_eval, format_fewshot_table

    r = fewshot_eval(
        args.model, args.data, data_dir=args.data_dir, shots=args.shots, seeds=args.seeds, l2=args.l2,
        pretrained=args.pretrained, out_dir=args.out, pool_limit=args.pool_limit, test_limit=args.test_limit,
        batch_size=args.batch_size, device=args.device,
    )  # fmt: skip
    size, src = r["input"]["img_size"], r["dataset_image_size"]
    resized = f", resized from {src[0]}x{src[1]}" if src and list(src) != list(size) else ""
    print(f"{r['model']} on {r['dataset']}: {r['feature_dim']}-d {r['features']} of {size[0]}x{size[1]} "
          f"{r['input']['in_chans']}-channel images{resized}; pool {r['pool_size']}, test {r['test_size']}, "
          f"l2 {r['l2']:g}, features in {r['feature_seconds']:.1f} s, probes in {r['probe_seconds']:.2f} s")  # fmt: skip
    print(format_fewshot_table(r))
    print(f"wrote {r['fewshot_json']}, {r['fewshot_md']}, {r['fewshot_png']}")
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    """A dual encoder's zero-shot top-1/top-5 on a labelled dataset, or its retrieval recall on a pairs: set."""
    from ..metrics import format_metrics_table
    from ..zeroshot import zeroshot

    result = zeroshot(args.checkpoint, dataset=args.data, data_dir=args.data_dir, split=args.split,
                      classes=args.classes, templates=args.templates, tokenizer=args.tokenizer,
                      batch_size=args.batch_size, device=args.device, out_json=args.out)  # fmt: skip
    if "top1" in result:
        print(format_metrics_table(result))
        print(
            f"templates: {len(result['templates'])} ({result['templates'][0]!r}{', ...' if len(result['templates']) > 1 else ''})"
        )
    else:
        print(f"dataset {result['dataset']}, split {result['split']}: {result['num_images']} images, "
              f"{result['num_captions']} captions")  # fmt: skip
        for way in ("i2t", "t2i"):
            figures = "  ".join(f"R@{k} {result[f'{way}_recall@{k}']:.4f}" for k in (1, 5, 10))
            print(f"  {'image->text' if way == 'i2t' else 'text->image'}  {figures}")
    print(f"wrote {result['zeroshot_json']}")
    return 0


def add_inference_commands(sub) -> None:
    from ..explain import HEAD_FUSIONS, METHODS

    p = sub.add_parser("eval", help="evaluate a run or model file on a dataset split")
    p.add_argument("checkpoint", help="run directory or model .safetensors")
    p.add_argument("--data", default=None, help="dataset name (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="where to write the metrics JSON")
    p.add_argument("--resize", action="store_true", help="resize another dataset's images to the model's input "
                   "size (refused by default: a 28x28 dataset for an 8x8 model)")  # fmt: skip
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict with a model of any task: classes, boxes, masks, translations, "
                       "filled [MASK], MAE reconstructions")  # fmt: skip
    p.add_argument("checkpoint", help="run directory or model .safetensors")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or sentences for a text model")
    p.add_argument("--topk", type=int, default=5, help="classification, text classification, MLM: top-k")
    p.add_argument("--threshold", type=float, default=0.5, help="detection: lowest box score shown")
    p.add_argument("--beam", type=int, default=4, help="translation: beam size (1 = greedy)")
    p.add_argument("-o", "--out", default=None, help="folder for drawings, masks and reconstructions "
                   "(default: predictions/ beside the model)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

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
    _add_fewshot_command(sub)
    _add_zeroshot_command(sub)


def _add_fewshot_command(sub) -> None:
    p = sub.add_parser("fewshot", help="few-shot accuracy of a frozen backbone: closed-form ridge probes on its "
                       "features, k images per class, several seeds (big_vision's evaluator)")  # fmt: skip
    p.add_argument("model", help="run directory, model .safetensors, or a registry name (with --pretrained)")
    p.add_argument("--data", required=True, help="dataset to probe on (its train split is the pool)")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--pretrained", default=None, help="weights file for a registry name (timm / HF / JAX / vitkit)"
    )
    p.add_argument(
        "--shots", type=_int_list, default=[1, 5, 10, 25], help="images per class (default 1,5,10,25)"
    )
    p.add_argument(
        "--seeds", type=int, default=5, help="samples drawn per shot count: seeds 0..n-1 (default 5)"
    )
    p.add_argument("--l2", type=_float_list, default=[2.0**10], help="ridge l2 (default 1024, big_vision's); "
                   "several, comma-separated: the first is reported, all are swept")  # fmt: skip
    p.add_argument("--pool-limit", type=int, default=None, help="class-balanced subset of the train split")
    p.add_argument("--test-limit", type=int, default=None, help="class-balanced subset of the test split")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="folder for fewshot.json/.md/.png (default: fewshot-<data>/ "
                   "beside the model)")  # fmt: skip
    p.set_defaults(func=cmd_fewshot)


def _add_zeroshot_command(sub) -> None:
    p = sub.add_parser("zeroshot", help="zero-shot top-1/top-5 of a CLIP / SigLIP / LiT model on a labelled dataset "
                       "(classes written into prompt templates), or retrieval recall@1/5/10 on a pairs: set")  # fmt: skip
    p.add_argument("checkpoint", help="contrastive run directory or model .safetensors")
    p.add_argument(
        "--data", default=None, help="dataset (default: the run's), or pairs:MANIFEST for retrieval"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="class names, comma-separated or one per argument: some of the dataset's classes (only "
                        "their images are scored) or new names for all of them, in order (default: the dataset's)")  # fmt: skip
    p.add_argument("--templates", nargs="+", default=None, metavar="TEMPLATE",
                   help="prompts, each with {label} (default: the run's, else CLIP's 'a photo of a {label}.' ensemble)")  # fmt: skip
    p.add_argument("--tokenizer", default=None, help="tokenizer.json / vocab.txt (default: the run's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--out", default=None, help="where to write the JSON (default: zeroshot-<data>.json beside the model)"
    )
    p.set_defaults(func=cmd_zeroshot)
