"""The dense tasks' drawings: DETR's predictions.png / <image>-boxes.png and Segmenter's overlays.png have a titled,
spaced panel per image, class names on boxes, a legend of class colours, and say when no box passed the threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.data.canvas import CocoDetection, make_canvases, write_coco
from vitkit.data.segmentation import SegmentationDataset
from vitkit.detection import box_cxcywh_to_xyxy
from vitkit.tasks import drawings
from vitkit.tasks.detection import Detection, detection_sheet, draw_detections
from vitkit.tasks.segmentation import draw_segmentation, segmentation_sheet

CLASSES = ["square", "bar", "slab"]


@pytest.fixture(scope="module")
def canvases(tmp_path_factory):
    """Four 32x32 canvases with their boxes and masks, written in COCO layout (val split)."""
    torch.manual_seed(0)
    items = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    items[0, :, 4:24, 4:24], items[1, :, 2:26, 11:17], items[2, :, 8:20, 2:26] = 255, 255, 160
    images, targets, masks = make_canvases(items, torch.tensor([0, 1, 2]), num_images=4, canvas=32,
                                           objects=(1, 2), scale=(0.4, 0.6))  # fmt: skip
    root = tmp_path_factory.mktemp("canvases") / "val"
    write_coco(root, images, targets, CLASSES, masks=masks)
    return root


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _legend(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_detection_sheet_titles_boxes_and_no_box_panels(canvases, tmp_path):
    ds = CocoDetection(canvases)
    results = []
    for i in range(len(ds)):  # the ground truth moved by a pixel; image 0's scores all under the threshold
        h, w = ds.sizes[i]
        boxes = box_cxcywh_to_xyxy(ds.annotations[i]["boxes"]) * torch.tensor([w, h, w, h]) + 1
        scores = torch.full((len(boxes),), 0.31 if i == 0 else 0.9)
        results.append({"boxes": boxes, "scores": scores, "labels": ds.annotations[i]["labels"]})
    fig = detection_sheet(ds, results, min_score=0.5)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    counts = [len(a["labels"]) for a in ds.annotations]
    assert titles[0] == "000000.png\n0 boxes with score ≥ 0.5"
    for i, title in enumerate(titles[1:], 1):
        assert title.startswith(f"{i:06d}.png\n{counts[i]} box") and title.endswith("with score ≥ 0.5")
    texts = _texts(fig)
    assert texts.count("no box above score 0.5 (best 0.31)") == 1  # only image 0's panel
    named = [f"{CLASSES[int(c)]} 0.90" for a in ds.annotations[1:] for c in a["labels"]]
    assert sorted(t for t in texts if t.endswith("0.90")) == sorted(named)  # every kept box: class and score
    assert _legend(fig) == ["ground truth", "predicted (class score)"]
    out = draw_detections(ds, results, tmp_path / "predictions.png")
    width, height = _png_size(out)
    assert width > 4 * 2.8 * 120 * 0.9 and height > 2.8 * 120  # four panels side by side, not 32 px tiles


def test_predict_drawing_says_when_no_box_passed(canvases, tmp_path, monkeypatch):
    """``vitkit predict`` on a detector whose boxes all score under the threshold: the drawing says so."""
    torch.manual_seed(0)
    model = vitkit.create_model("detr_vit_canvas", num_classes=3, in_chans=1, img_size=32, num_queries=3,
                                backbone_args={"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
                                embed_dim=32, num_heads=2, decoder_depth=1).eval()  # fmt: skip
    model.data_config = {"task": "detection", "classes": CLASSES, "mean": [0.5], "std": [0.5],
                         "img_size": [32, 32], "in_chans": 1}  # fmt: skip
    figures = []
    save = drawings.save
    monkeypatch.setattr(drawings, "save", lambda fig, out: figures.append(fig) or save(fig, out))
    image = canvases / "images" / "000000.png"
    result = Detection.predict(model, [image], source=None, out_dir=tmp_path, threshold=0.99)[0]
    assert result["boxes"] == [] and (tmp_path / "000000-boxes.png").is_file()
    (fig,) = figures
    assert fig.axes[0].get_title() == "000000.png\n0 boxes with score ≥ 0.99"
    (message,) = _texts(fig)
    assert message.startswith("no box above score 0.99 (best 0.")
    kept = Detection.predict(model, [image], source=None, out_dir=tmp_path, threshold=0.0)[0]
    assert len(kept["boxes"]) == 3 and _texts(figures[1]) == [
        f"{b['label']} {b['score']:.2f}" for b in kept["boxes"]
    ]
    served = Detection.predict(model, [image], source=None, out_dir=tmp_path / "served", draw=False)[0]
    assert "drawing" not in served and not list((tmp_path / "served").glob("*.png"))
    assert "drawn in" not in Detection.format_predictions([served]) and len(figures) == 2


def test_segmentation_sheet_titles_and_class_legend(canvases, tmp_path):
    ds = SegmentationDataset(canvases)
    predictions = ds.masks.clone().to(torch.uint8)
    predictions[0] = 0  # image 0: nothing found
    fig = segmentation_sheet(ds, predictions, n=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0::3] == ["000000.png", "000001.png", "000002.png"]
    assert titles[1::3] == ["ground truth"] * 3
    right = float((ds.masks[0] == 0).float().mean())
    assert (
        titles[2] == f"prediction: {right:.1%} of pixels right"
        and titles[5] == "prediction: 100.0% of pixels right"
    )
    shown = sorted({int(c) for m in ds.masks[:3] for c in torch.unique(m) if c > 0})
    assert _legend(fig) == ["background (untinted)", *(ds.classes[c] for c in shown)]
    out = draw_segmentation(ds, predictions, tmp_path / "overlays.png", n=3)
    assert _png_size(out)[1] > 3 * 2.8 * 120  # three rows of full-size panels


def test_overlay_tints_classes_with_their_legend_colours():
    image = torch.full((1, 2, 2), 100, dtype=torch.uint8)
    mask = torch.tensor([[0, 1], [2, 12]])
    out = drawings.overlay(image, mask, alpha=1.0)
    colours = drawings.class_colours(40)
    assert out[0, 0].tolist() == [100, 100, 100]  # background untinted
    assert out[0, 1].tolist() == list(drawings.PALETTE[1]) and out[1, 0].tolist() == list(drawings.PALETTE[2])
    assert out[1, 1].tolist() == colours[12].round().int().tolist()  # past the palette: tab20, still distinct
    assert len({tuple(c) for c in colours.round().tolist()}) == 40
    assert np.asarray(out).dtype == np.uint8
