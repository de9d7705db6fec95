"""Segmentation: Segmenter shapes for both decoders, and mIoU / pixel accuracy on known masks."""

from __future__ import annotations

import math

import pytest
import torch

import vitkit
from vitkit.models.segmenter import Segmenter, segmentation_metrics


@pytest.mark.parametrize("decoder", ["linear", "mask"])
def test_segmenter_outputs_full_resolution_scores(decoder):
    model = Segmenter(backbone_args={"img_size": 32, "patch_size": 4, "depth": 1}, num_classes=5, decoder=decoder,
                      in_chans=1)  # fmt: skip
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    assert out.shape == (2, 5, 32, 32)
    assert model.patch_scores(x).shape == (2, 5, 8, 8)
    out.logsumexp(1).mean().backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="decoder must be"):
        Segmenter(decoder="conv")


def test_registry_segmenters_save_and_load(tmp_path):
    model = vitkit.create_model("segmenter_vit_canvas", num_classes=11, in_chans=1).eval()
    vitkit.save(model, tmp_path / "seg.safetensors")
    again = vitkit.load(tmp_path / "seg.safetensors").eval()
    x = torch.randn(1, 1, 64, 64)
    assert torch.equal(model(x), again(x))


def test_miou_and_pixel_accuracy_on_known_masks():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 0], [0, 0, 1, 1], [2, 1, 2, 0]])
    m = segmentation_metrics(pred, target, num_classes=3)
    # class 0: tp 4, union 4 + 1 (pred 0 at a class-1 pixel) = 5; class 1: tp 3, union 5; class 2: tp 2, union 3
    assert m["iou"] == pytest.approx([4 / 5, 3 / 5, 2 / 3])
    assert m["mIoU"] == pytest.approx((4 / 5 + 3 / 5 + 2 / 3) / 3)
    assert m["pixel_acc"] == pytest.approx(9 / 11)  # the ignored pixel does not count
    absent = segmentation_metrics(torch.zeros(2, 2), torch.zeros(2, 2), num_classes=3)
    assert absent["mIoU"] == 1.0 and math.isnan(absent["iou"][1])  # classes in neither map are left out
    with pytest.raises(ValueError, match="labels outside"):
        segmentation_metrics(torch.full((2, 2), 3), torch.zeros(2, 2), num_classes=3)
