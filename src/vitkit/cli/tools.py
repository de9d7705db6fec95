"""Tool commands: ``compress``, ``export``, ``serve``, ``models``, ``summary``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["add_tool_commands"]


def cmd_compress(args: argparse.Namespace) -> int:
    from ..compress.run import compress_run, format_report

    report = compress_run(
        args.run, args.method, args.out, energy=args.energy, rank=args.rank, heads=args.heads, mlp=args.mlp,
        tome_r=args.tome_r, int8_static=args.int8_static, keep_float=tuple(args.keep_float), calib_batches=args.calib_batches, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
        data_dir=args.data_dir, threads=args.threads,
    )  # fmt: skip
    print(format_report(report))
    print(f"wrote {report['out_dir']}/model.safetensors and report.json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_model, format_export_report

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
        raise RuntimeError(
            "vitkit serve needs the serve extras; from the vitkit checkout: pip install -c constraints.txt -e '.[serve]'"
        ) from e
    from ..serve import create_app
    from ..serve.protocol import header_deadline_protocol

    app = create_app(args.checkpoint, topk=args.topk, batching=args.batching, max_batch=args.max_batch,
                     batch_wait_ms=args.batch_wait_ms, max_bytes=int(args.max_mb * 2**20),
                     body_timeout_s=args.body_timeout)  # fmt: skip
    print(
        f"serving {args.checkpoint} on http://{args.host}:{args.port}/ (batching {'on' if args.batching else 'off'};"
        f" at most {args.max_connections} connections, keep-alive {args.keep_alive} s)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", limit_concurrency=args.max_connections,
                timeout_keep_alive=args.keep_alive, http=header_deadline_protocol(args.header_timeout))  # fmt: skip
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .. import list_models

    names = list_models(args.pattern)
    print("\n".join(names))
    print(f"({len(names)} models)", file=sys.stderr)
    return 0


def _shapes(out) -> str:
    if isinstance(out, dict):
        return ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items() if hasattr(v, "shape"))
    if isinstance(out, (tuple, list)):
        return ", ".join(str(tuple(o.shape)) for o in out if hasattr(o, "shape"))
    return str(tuple(out.shape))


# what `vitkit summary --pretrained` prints of the weights' pretrained cfg
_PRETRAINED_KEYS = ("hf_hub_id", "hf_hub_revision", "license", "mean", "std", "input_size", "crop_pct", "interpolation")  # fmt: skip


def cmd_summary(args: argparse.Namespace) -> int:
    """Any registered model or saved model (run directory, .safetensors): its config, size, multiply-adds and
    output shapes for an example input."""
    from pathlib import Path

    import torch

    from .. import create_model
    from ..models.examples import example_inputs
    from ..profiling import forward_flops

    if Path(args.model).exists():
        from ..tasks.inference import load_task_model

        model = load_task_model(args.model)[0]
    else:
        model = create_model(args.model, pretrained=args.pretrained).eval()
    print(f"{args.model}: {type(model).__name__}")
    for key, value in getattr(model, "config", {}).items():
        print(f"  {key:16s} {value}")
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    for key in (k for k in _PRETRAINED_KEYS if pretrained_cfg.get(k) is not None):
        value = pretrained_cfg[key]
        print(f"  {key:16s} {list(value) if isinstance(value, tuple) else value}  (pretrained weights)")
    if hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens"):
        print(f"  {'tokens':16s} {model.patch_embed.num_patches} patches + {model.num_prefix_tokens} prefix")
    print(f"  {'params':16s} {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M")
    x = example_inputs(model)
    flops = forward_flops(model, x)
    what = "per image" if x[0].is_floating_point() else f"per sequence of {x[0].shape[1]} tokens"
    print(f"  {'GMACs':16s} {flops / 2e9:.3f} {what} (multiply-adds, the figure papers and timm quote)")
    print(f"  {'GFLOPs':16s} {flops / 1e9:.3f} {what} (2 per multiply-add)")
    with torch.inference_mode():
        print(f"  {'output':16s} {_shapes(model(*x))}")
    return 0


def add_tool_commands(sub) -> None:
    """Register the tool commands on the ``sub`` parsers of the ``vitkit`` CLI."""
    add_compress_parser(sub)
    add_export_parser(sub)
    add_serve_parser(sub)
    add_models_parser(sub)
    add_summary_parser(sub)


def add_compress_parser(sub) -> None:
    """``vitkit compress RUN --method ...``: compress a trained run and report on it."""
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
    p.add_argument("--threads", type=int, default=None,
                   help="threads both models are timed with (default: the CPUs free for this process)")  # fmt: skip
    p.set_defaults(func=cmd_compress)


def add_export_parser(sub) -> None:
    """``vitkit export CHECKPOINT``: export to ONNX / TorchScript / safetensors and check it."""
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


def add_serve_parser(sub) -> None:
    """``vitkit serve CHECKPOINT``: the HTTP inference server."""
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
    p.add_argument("--max-connections", type=_positive(int), default=64,
                   help="open connections (and requests) served at once; over it, uvicorn answers 503")  # fmt: skip
    p.add_argument("--keep-alive", type=_positive(int), default=5,
                   help="seconds an idle keep-alive connection stays open")  # fmt: skip
    p.add_argument("--header-timeout", type=_positive(float), default=10.0,
                   help="seconds a client has to send a request's headers (408, or closed if it sent nothing)")  # fmt: skip
    p.add_argument("--body-timeout", type=_positive(float), default=30.0,
                   help="seconds a request body may stall between two reads (408)")  # fmt: skip
    p.set_defaults(func=cmd_serve)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def add_models_parser(sub) -> None:
    """``vitkit models [PATTERN]``: list registered model names."""
    p = sub.add_parser("models", help="list registered model names")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_models)


def add_summary_parser(sub) -> None:
    """``vitkit summary MODEL``: config, size, FLOPs and output shapes of a model."""
    p = sub.add_parser("summary", help="a registry model or a saved one: config, size, GMACs, output shapes")
    p.add_argument("model")
    p.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="WEIGHTS",
                   help="load weights: the name's default ones (no value), a local file or an hf-hub:org/name id; "
                        "prints their pretrained cfg (repo, mean/std, input size, crop)")  # fmt: skip
    p.set_defaults(func=cmd_summary)
