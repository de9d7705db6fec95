"""Held-out COCO AP of a trained vitkit detector under the two DETR-family post-processings.

- DETR (vitkit's training metric): each query reported once, under its most probable real class.
- Deformable DETR: the image's 100 most probable (query, class) pairs, so a query may also count under its
  second class (COCO evaluates up to 100 detections per image).
- With a second stage (``box_classifier``), also the decoder's own classes (DETR's scoring of ``model.decode``):
  what the box classifier adds.
- Boxes only (a diagnostic): DETR's detections with every class merged into one, in the predictions and the
  ground truth: what the AP would be if no box were given the wrong class.

Same model, same images (through the one image pipeline, as ``vitkit predict`` reads them), same pycocotools:

    .venv/bin/python benchmarks/detection_postprocess.py runs/detr-canvas-40k-16ep --data coco:data/canvas-mnist-40k
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import vitkit  # noqa: E402
from vitkit.data.canvas import CocoDetection  # noqa: E402
from vitkit.models.detr import DETR  # noqa: E402
from vitkit.tasks.dense import coco_root  # noqa: E402
from vitkit.tasks.detection import coco_map, detections  # noqa: E402
from vitkit.tasks.inference import model_file  # noqa: E402
from vitkit.tasks.inputs import read_images  # noqa: E402


def boxes_only(val: CocoDetection, found: list[dict], folder: str) -> dict[str, float]:
    """COCO AP with one class: every ground-truth box and every detection relabelled as the first class."""
    gt = json.loads(Path(val.annotation_file).read_text())
    first = gt["categories"][0]
    gt["categories"] = [first]
    for a in gt["annotations"]:
        a["category_id"] = first["id"]
    path = Path(folder) / "one-class.json"
    path.write_text(json.dumps(gt))
    merged = SimpleNamespace(image_ids=val.image_ids, category_ids=[first["id"]], annotation_file=path)
    return coco_map(merged, [{**r, "labels": r["labels"] * 0} for r in found])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a detection run directory or its model.safetensors")
    p.add_argument("--data", required=True, metavar="coco:DIR", help="evaluates DIR/val")
    p.add_argument("--top-k", type=int, default=100, help="pairs kept per image (Deformable DETR: 100)")
    args = p.parse_args(argv)
    run = Path(args.run)
    model = vitkit.load(model_file(run)).eval()
    if not isinstance(model, DETR):
        p.error(f"{args.run} holds a {type(model).__name__}, not a detector (DETR)")
    if args.top_k < 0:
        p.error(f"--top-k must be >= 0, got {args.top_k}")
    val = CocoDetection(coco_root(args.data) / "val")
    images = [val.raw[i].permute(1, 2, 0).numpy() for i in range(len(val))]
    logits, boxes, decoder = [], [], []
    with torch.inference_mode():
        for i in range(0, len(images), 100):
            x, _, _ = read_images(images[i : i + 100], model.data_config)
            out = model(x)
            logits.append(out["pred_logits"])
            boxes.append(out["pred_boxes"])
            if (
                model.box_classifier is not None
            ):  # the decoder's own classes, to score without the second stage
                decoder.append(model.decode(x)["pred_logits"])
    outputs = {"pred_logits": torch.cat(logits), "pred_boxes": torch.cat(boxes)}
    rows = {}
    if model.box_classifier is not None:
        decoded = {**outputs, "pred_logits": torch.cat(decoder)}
        rows["DETR, the decoder's classes alone (no second stage)"] = detections(decoded, val.sizes)
    rows |= {
        "DETR: each query's best class": detections(outputs, val.sizes),
        f"Deformable DETR: top-{args.top_k} (query, class) pairs": detections(
            outputs, val.sizes, top_k=args.top_k, pairs=True
        ),
    }
    print(f"{run}: {len(val)} held-out images of {args.data}\n")
    print("| post-processing | AP50 | AP | AP75 |\n|---|---|---|---|")
    for name, found in rows.items():
        ap = coco_map(val, found)
        print(f"| {name} | {ap['AP50']:.3f} | {ap['AP']:.3f} | {ap['AP75']:.3f} |")
    with tempfile.TemporaryDirectory() as folder:
        ap = boxes_only(val, rows["DETR: each query's best class"], folder)
    print(
        f"| boxes only (DETR's detections, classes merged) | {ap['AP50']:.3f} | {ap['AP']:.3f} | {ap['AP75']:.3f} |"
    )


if __name__ == "__main__":
    main()
