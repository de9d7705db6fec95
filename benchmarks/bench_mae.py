"""MAE pre-training pays off with few labels and across datasets: the issue-4 experiment, end to end.

1. Pre-train an MAE on the Fashion-MNIST *training images* (labels never read): ``vitkit pretrain`` with the
   ``mae-fashion-mnist`` recipe (``--pretrain-epochs`` overrides its length).
2. 1% of the labels (600 images, class-balanced, fixed seed): the same ViT trained from scratch vs fine-tuned from
   the MAE encoder, same schedule; plus a linear probe of the frozen encoder (MAE's BatchNorm + linear head).
3. Transfer: the Fashion-MNIST encoder fine-tuned on MNIST (``--transfer-subset`` images) against training from
   scratch, accuracy after every epoch side by side in one PNG.

Every step is a normal run directory under ``--out-dir`` (curves, metrics.jsonl, checkpoints); a step whose
``summary.json`` exists is not run again, so the benchmark can be stopped and restarted. Prints a markdown table
and writes it (``--table``) with the transfer curves (``--plot``).

    .venv/bin/python benchmarks/bench_mae.py --data-dir ../shared/data            # ~1 h on a 2-core CPU
    .venv/bin/python benchmarks/bench_mae.py --quick                              # digits, ~3 min: a smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SAME_AS_ENCODER = {"pos_embed": "sincos", "no_embed_class": True}  # the MAE encoder's architecture exactly


def _run(out: Path, name: str, fn, **kw) -> dict:
    """Run one step unless its summary exists; returns the summary."""
    run = out / name
    if (run / "summary.json").exists():
        print(f"[{name}] already done, reusing {run}")
        return json.loads((run / "summary.json").read_text())
    if run.exists():
        shutil.rmtree(run)  # a half-finished step: start it again
    print(f"[{name}] running ...", flush=True)
    return fn(out_dir=str(out), name=name, **kw)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _first_epoch_reaching(records: list[dict], acc: float) -> int | None:
    return next((r["epoch"] for r in records if r.get("val_acc", -1) >= acc), None)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder with the datasets (default: VITKIT_DATA)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/bench-mae"))
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--labels", type=float, default=600, help="labelled images for the few-label runs")
    p.add_argument("--few-epochs", type=int, default=100)
    p.add_argument("--probe-epochs", type=int, default=50)
    p.add_argument("--transfer-subset", type=float, default=6000, help="MNIST training images for transfer")
    p.add_argument("--transfer-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="digits for everything, tiny schedules")
    p.add_argument("--table", type=Path, default=None, help="also write the markdown table here")
    p.add_argument(
        "--plot", type=Path, default=None, help="transfer curves PNG (default: OUT_DIR/transfer.png)"
    )
    args = p.parse_args(argv)

    from vitkit.plots import plot_metric_comparison
    from vitkit.train import pretrain, train

    out, seed, data_dir = args.out_dir, args.seed, args.data_dir
    common = dict(data_dir=data_dir, seed=seed, progress=False)
    if args.quick:
        pre = dict(model="mae_vit_digits", dataset="digits", epochs=args.pretrain_epochs or 4, batch_size=64,
                   lr=2e-3, warmup_epochs=0.5, drop_path=0.0)  # fmt: skip
        scratch_model, few_data, transfer_data = "vit_digits", "digits", "digits"
        args.labels, args.few_epochs, args.probe_epochs = 0.2, 10, 5
        args.transfer_subset, args.transfer_epochs = 0.5, 3
    else:
        pre = dict(recipe="mae-fashion-mnist")
        if args.pretrain_epochs:
            pre["epochs"] = args.pretrain_epochs
        scratch_model, few_data, transfer_data = "vit_mnist", "fashion-mnist", "mnist"
    few = dict(dataset=few_data, train_subset=args.labels, epochs=args.few_epochs, batch_size=64, lr=1e-3,
               warmup_epochs=5, weight_decay=0.05, drop_path=0.1, pad_crop=2, hflip=not args.quick,
               label_smoothing=0.1, eval_every=max(1, args.few_epochs // 5), **common)  # fmt: skip
    probe = dict(dataset=few_data, train_subset=args.labels, epochs=args.probe_epochs, batch_size=64, lr=5e-3,
                 warmup_epochs=1, weight_decay=0.0, drop_path=0.0, label_smoothing=0.0,
                 eval_every=max(1, args.probe_epochs // 5), finetune_mode="linear", **common)  # fmt: skip
    transfer = dict(dataset=transfer_data, train_subset=args.transfer_subset, epochs=args.transfer_epochs,
                    batch_size=64, lr=1e-3, warmup_epochs=1, weight_decay=0.05, drop_path=0.1, pad_crop=2,
                    label_smoothing=0.1, eval_every=1, **common)  # fmt: skip

    mae = _run(out, "pretrain", lambda **kw: pretrain("mae", **kw), **pre, data_dir=data_dir, seed=seed,
               progress=False)  # fmt: skip
    enc = str(out / "pretrain")
    scratch = _run(out, "few-scratch", train, model=scratch_model, model_args=SAME_AS_ENCODER, **few)
    tuned = _run(out, "few-mae-finetune", train, init_from=enc, layer_decay=0.75, **few)
    probed = _run(out, "few-mae-linear-probe", train, init_from=enc, **probe)
    t_scratch = _run(
        out, "transfer-scratch", train, model=scratch_model, model_args=SAME_AS_ENCODER, **transfer
    )
    t_mae = _run(out, "transfer-mae", train, init_from=enc, **transfer)

    curves = {
        f"from scratch ({transfer_data})": _records(out / "transfer-scratch"),
        f"MAE pre-trained on {'digits' if args.quick else 'Fashion-MNIST'}": _records(out / "transfer-mae"),
    }
    plot = args.plot or out / "transfer.png"
    plot_metric_comparison(
        curves, plot, title=f"{transfer_data}: fine-tuning on {t_mae.get('train_samples', '?')} labelled images",
    )  # fmt: skip
    gain = tuned["val_acc"] - scratch["val_acc"]
    rows = [
        ("MAE pre-training (no labels)", f"{mae['epochs']} ep", f"{mae['elapsed_s'] / 60:.1f} min",
         f"val masked-patch loss {mae['val_loss']:.4f}"),
        ("few labels: from scratch", f"{scratch['epochs']} ep", f"{scratch['elapsed_s'] / 60:.1f} min",
         f"{scratch['val_acc']:.2%}"),
        ("few labels: MAE fine-tune", f"{tuned['epochs']} ep", f"{tuned['elapsed_s'] / 60:.1f} min",
         f"{tuned['val_acc']:.2%} ({gain * 100:+.2f} pt)"),
        ("few labels: MAE linear probe", f"{probed['epochs']} ep", f"{probed['elapsed_s'] / 60:.1f} min",
         f"{probed['val_acc']:.2%}"),
        (f"transfer to {transfer_data}: from scratch", f"{t_scratch['epochs']} ep",
         f"{t_scratch['elapsed_s'] / 60:.1f} min", f"{t_scratch['val_acc']:.2%}"),
        (f"transfer to {transfer_data}: MAE fine-tune", f"{t_mae['epochs']} ep", f"{t_mae['elapsed_s'] / 60:.1f} min",
         f"{t_mae['val_acc']:.2%}"),
    ]  # fmt: skip
    lines = [
        f"# MAE: {few_data} pre-training, {args.labels:g} labels, transfer to {transfer_data}",
        "",
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, seed {seed}",
        "",
        "| step | budget | time | test top-1 |",
        "|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        "Epochs to reach an accuracy on the transfer task (from scratch vs MAE):",
        "",
        "| accuracy | from scratch | MAE |",
        "|---|---|---|",
    ]
    for acc in (0.90, 0.95, 0.97, 0.98):
        a, b = (_first_epoch_reaching(r, acc) for r in curves.values())
        lines.append(f"| {acc:.0%} | {a or 'not reached'} | {b or 'not reached'} |")
    lines += ["", f"few-label gain of MAE fine-tuning over scratch: {gain * 100:+.2f} points (target >= +5)",
              f"transfer curves: {plot}"]  # fmt: skip
    emit(lines, args.table)


def emit(lines: list[str], table: Path | None) -> None:
    """Print the report and, when ``table`` is given, write it there too."""
    text = "\n".join(lines)
    print(text)
    if table:
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(text + "\n")


if __name__ == "__main__":
    main()
