"""Image-text pair data (issue 22): manifests, caption templates, and the bad input they refuse by row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import build_dataset
from vitkit.data.pairs import CaptionTemplates, check_templates, read_pairs


def _images(tmp_path, n=3):
    for i in range(n):
        Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")


def test_csv_and_jsonl_manifests_give_images_labelled_by_caption(tmp_path):
    _images(tmp_path)
    (tmp_path / "pairs.csv").write_text(
        "image,caption\nim0.png,a red car\nim1.png,a dog\nim2.png,a red car\n"
    )
    ds = build_dataset(f"pairs:{tmp_path / 'pairs.csv'}", image_size=4)
    assert ds.classes == ["a red car", "a dog"] and ds.targets.tolist() == [0, 1, 0]  # one id per caption
    x, y = ds[1]
    assert x.shape == (3, 4, 4) and y == 1 and abs(float(x.max()) - 40 / 255) < 1e-6
    (tmp_path / "pairs.jsonl").write_text(
        '{"path": "im2.png", "text": "two"}\n\n{"path": "im0.png", "text": "one"}\n'
    )
    assert read_pairs(tmp_path / "pairs.jsonl") == [
        (str(tmp_path / "im2.png"), "two"),
        (str(tmp_path / "im0.png"), "one"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,caption\nim0.png,a cat\nmissing.png,a dog\n", r"pairs.csv:3: image 'missing.png' not found"),
        ("path,caption\nim0.png,a cat\nim1.png,  \n", r"pairs.csv:3: empty caption for image 'im1.png'"),
        (
            "path,label\nim0.png,cat\n",
            r"pairs.csv:2: a pairs row needs an image column .* and a caption column",
        ),
        ("path,caption\n", r"no \(image, caption\) rows"),
    ],
    ids=["missing-image", "empty-caption", "no-caption-column", "empty"],
)
def test_bad_rows_are_named(tmp_path, text, message):
    _images(tmp_path, 2)
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_pairs(tmp_path / "pairs.csv")


def test_templates_are_checked_and_sampled_per_label():
    for bad, message in [([], "no caption templates"), (["a photo"], "must contain '{label}' exactly once"),
                         (["{label} {label}"], "exactly once"), (["{label} {x}"], "a field other than")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            check_templates(bad)
    with pytest.raises(ValueError, match="an empty class list"):
        CaptionTemplates([], ["a {label}"])
    with pytest.raises(ValueError, match="class 1 has an empty name"):
        CaptionTemplates(["cat", " "], ["a {label}"])
    caps = CaptionTemplates(["cat", "dog"], ["a {label}.", "the {label}!"])
    assert caps.all() == [["a cat.", "the cat!"], ["a dog.", "the dog!"]]
    drawn = caps.sample(torch.tensor([1, 0, 1, 1] * 8), torch.Generator().manual_seed(0))
    assert set(drawn) == {"a dog.", "the dog!", "a cat.", "the cat!"}
    assert drawn == caps.sample(torch.tensor([1, 0, 1, 1] * 8), torch.Generator().manual_seed(0))  # seeded
