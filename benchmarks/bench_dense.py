"""Segmentation and detection beyond the canvas detector: what a pre-trained backbone and the decoder choice buy.

1. Canvas segmentation (Fashion-MNIST items on 64x64 canvases, 11 classes with background): the Segmenter's
   mask-transformer decoder against the linear decoder, on the same ViT backbone and schedule (mIoU, pixel acc).
2. Penn-Fudan pedestrians (120 train / 50 val images, resized to ``--size``): DETR and the Segmenter with a
   backbone pre-trained in vitkit (``--backbone``: a supervised run, by default the CIFAR-10 conv-stem ViT of the
   ``cifar10-cpu`` recipe) against the same model from scratch (box AP / AP50; person mIoU).

Converted data goes to ``--work`` (outside the repository: Penn-Fudan may not be redistributed). Each step is a
run directory under ``--out-dir``; a step whose ``summary.json`` exists is reused.

    .venv/bin/vitkit train --recipe cifar10-cpu --data-dir ../shared/data --name cifar10-cpu-final   # the backbone
    .venv/bin/python benchmarks/bench_dense.py --data-dir ../shared/data --backbone runs/cifar10-cpu-final
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mae import _run, emit  # noqa: E402  (one step = one reusable run directory; the report)


def _canvases(work: Path, data_dir: str | None, train: int, val: int) -> Path:
    from vitkit.data import build_dataset
    from vitkit.data.canvas import make_canvases, write_coco

    root = work / f"canvas-fmnist-{train}-{val}"
    if not (root / "val" / "annotations.json").exists():
        for split, n, seed in (("train", train, 0), ("val", val, 1)):
            source = build_dataset(
                "fashion-mnist", "train" if split == "train" else "test", data_dir=data_dir
            )
            images, targets, masks = make_canvases(source.raw, source.targets, n, 64, seed=seed)
            write_coco(root / split, images, targets, source.classes, masks)
    return root


def _penn_fudan(work: Path, data_dir: str | None) -> Path:
    from vitkit.data import resolve_data_dir
    from vitkit.data.pennfudan import convert_penn_fudan

    root = work / "penn-fudan"
    if not (root / "val" / "annotations.json").exists():
        convert_penn_fudan(resolve_data_dir(data_dir), root)
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "vitkit" / "bench-dense")
    p.add_argument("--out-dir", type=Path, default=Path("runs/bench-dense"))
    p.add_argument(
        "--backbone", default="runs/cifar10-cpu-final", help="pre-trained vitkit run for Penn-Fudan"
    )
    p.add_argument("--size", type=int, default=96, help="Penn-Fudan image size")
    p.add_argument("--canvas-train", type=int, default=2000)
    p.add_argument("--canvas-val", type=int, default=300)
    p.add_argument("--canvas-epochs", type=int, default=8)
    p.add_argument("--pf-epochs", type=int, default=20)
    p.add_argument("--skip", nargs="*", default=(), choices=("canvas", "pf-seg", "pf-det"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", type=Path, default=None)
    args = p.parse_args(argv)

    from vitkit.train import train_detection, train_segmentation

    out, rows = args.out_dir, []
    common = dict(seed=args.seed, progress=False, drop_path=0.0, weight_decay=1e-4)
    if "canvas" not in args.skip:
        canvas = _canvases(args.work, args.data_dir, args.canvas_train, args.canvas_val)
        backbone = {"patch_size": 8}  # 8x8 patch grid on a 64x64 canvas
        for decoder in ("mask", "linear"):
            s = _run(out, f"canvas-seg-{decoder}", train_segmentation, dataset=f"coco:{canvas}",
                     model="segmenter_vit_canvas", model_args={"decoder": decoder, "backbone_args": backbone},
                     epochs=args.canvas_epochs, batch_size=64, lr=1e-3, warmup_epochs=1, **common)  # fmt: skip
            rows.append((f"canvas segmentation, {decoder} decoder", "scratch", f"{s['epochs']} ep",
                         f"{s['elapsed_s'] / 60:.1f} min", f"mIoU {s['val_mIoU']:.3f}",
                         f"pixel acc {s['val_pixel_acc']:.4f}"))  # fmt: skip
    pf_runs = [("pf-seg", train_segmentation, "segmenter_vit_canvas", "mIoU"),
               ("pf-det", train_detection, "detr_vit_canvas", "AP50")]  # fmt: skip
    if any(step not in args.skip for step, *_ in pf_runs):
        pf = _penn_fudan(args.work, args.data_dir)
        if not Path(args.backbone).exists():
            raise SystemExit(
                f"no pre-trained backbone at {args.backbone} (train the cifar10-cpu recipe first)"
            )
        for step, fit, model, _ in pf_runs:
            if step in args.skip:
                continue
            for init in ("pretrained", "scratch"):
                from_scratch = {"backbone": "vitc_cifar", "backbone_args": {}} if init == "scratch" else {}
                s = _run(out, f"{step}-{init}", fit, dataset=f"coco:{pf}", model=model,
                         model_args={"img_size": args.size, **from_scratch},
                         init_from=args.backbone if init == "pretrained" else None, epochs=args.pf_epochs,
                         batch_size=16, lr=5e-4, warmup_epochs=2, eval_every=5, **common)  # fmt: skip
                if step == "pf-seg":
                    figures = (f"mIoU {s['val_mIoU']:.3f}", f"person IoU {s['val_iou']['person']:.3f}")
                else:
                    figures = (f"AP50 {s['val_AP50']:.3f}", f"AP {s['val_AP']:.3f}")
                task = "segmentation" if step == "pf-seg" else "detection (DETR)"
                rows.append((f"Penn-Fudan {task}", init, f"{s['epochs']} ep", f"{s['elapsed_s'] / 60:.1f} min",
                             *figures))  # fmt: skip
    lines = [
        f"Dense tasks on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "",
        "| task | backbone | epochs | time | figure | figure |",
        "|---|---|---|---|---|---|",
        *(f"| {' | '.join(r)} |" for r in rows),
    ]
    emit(lines, args.table)


if __name__ == "__main__":
    main()
