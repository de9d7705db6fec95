"""Bad COCO records and IDX headers are found at load time (issue 23, items 10 and 11): one line naming the file,
the record and the problem; ``--on-bad-image`` decides between skipping (counted) and failing fast."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vitkit.data.canvas import CocoDetection, make_canvases, write_coco
from vitkit.data.segmentation import SegmentationDataset

BAD = [  # (change to one annotation, the problem named)
    ({"category_id": 999}, "category_id 999 is not among the categories"),
    ({"bbox": None}, "bbox None is not \\[x, y, width, height\\]"),
    ({"bbox": [1.0, 1.0, math.nan, 4.0]}, "is not finite"),
    ({"bbox": [10.0, 10.0, -3.0, 4.0]}, "has no area"),
    ({"bbox": [2.0, 2.0, 0.0, 5.0]}, "has no area"),
    ({"bbox": [40.0, 5.0, 10.0, 10.0]}, "lies outside the 32x32 image"),
]


def _coco(tmp_path, masks: bool = False):
    items = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    items[0, :, 4:24, 4:24], items[1, :, 2:26, 11:17] = 255, 255
    images, targets, m = make_canvases(items, torch.tensor([0, 1]), num_images=4, canvas=32, objects=(2, 2),
                                       scale=(0.4, 0.6))  # fmt: skip
    write_coco(tmp_path, images, targets, ["square", "bar"], m if masks else None)
    return tmp_path / "annotations.json"


@pytest.mark.parametrize(
    ("change", "problem"), BAD, ids=["category", "no-bbox", "nan", "negative", "zero-size", "outside"]
)
def test_a_bad_box_is_named_or_skipped(tmp_path, change, problem):
    path = _coco(tmp_path)
    coco = json.loads(path.read_text())
    first = coco["annotations"][0]
    first.update(change)
    if change.get("bbox", 0) is None:
        del first["bbox"]
    path.write_text(json.dumps(coco))
    name = coco["images"][0]["file_name"]
    with pytest.raises(
        ValueError, match=f"annotations.json: annotation 1 of image '{name}': (bbox .* )?{problem}"
    ):
        CocoDetection(tmp_path)
    ds = CocoDetection(tmp_path, on_error="skip")
    assert ds.num_skipped == 1 and problem.split()[0].strip("\\") in ds.skipped[0]
    assert len(ds.annotations[0]["labels"]) == 1 and len(ds.annotations[1]["labels"]) == 2  # the others kept


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "missing.png"])
def test_an_image_outside_the_folder_or_missing_is_refused(tmp_path, name):
    for dataset, masks in ((CocoDetection, False), (SegmentationDataset, True)):
        root = tmp_path / dataset.__name__
        path = _coco(root, masks=masks)
        coco = json.loads(path.read_text())
        coco["images"][1]["file_name"] = name
        path.write_text(json.dumps(coco))
        with pytest.raises(ValueError, match=f"image 2: file_name '{name}'"):
            dataset(root)
        ds = dataset(root, on_error="skip")
        assert len(ds) == 3 and ds.num_skipped == 1


def test_an_idx_header_declaring_no_rows_is_refused(tmp_path):
    import gzip
    import struct

    from vitkit.data import IDXError, read_idx

    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 0, 28, 28))
    with pytest.raises(IDXError, match=r"declares dimensions \(0, 28, 28\): an empty array"):
        read_idx(path)
