"""DETR's second stage: a box classifier reads each box from the image and joins the decoder's class distribution."""

from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.models.box_classifier import BoxClassifier, box_crops


def test_box_crops_read_the_boxes_pixels():
    image = torch.arange(2 * 64 * 48, dtype=torch.float32).view(1, 2, 64, 48)  # non-square, two channels
    images = torch.cat([image, -image])
    # a 16 x 16-pixel box with its corner at (x 8, y 20): the crop's pixel centres fall on the image's
    box = torch.tensor([(8 + 8) / 48, (20 + 8) / 64, 16 / 48, 16 / 64])
    crops = box_crops(images, box.expand(2, 3, 4), 16, margin=0.0)
    assert crops.shape == (2, 3, 2, 16, 16)  # (images, boxes, channels, size, size)
    torch.testing.assert_close(crops[1, 2], -image[0, :, 20:36, 8:24])  # each image's own boxes
    torch.testing.assert_close(crops[0, 0], image[0, :, 20:36, 8:24])
    wide = box_crops(images[:1], box.view(1, 1, 4), 32, margin=1.0)  # the margin widens the square
    torch.testing.assert_close(wide[0, 0], image[0, :, 12:44, 0:32])
    tall = torch.tensor([0.5, 0.5, 8 / 48, 32 / 64]).view(1, 1, 4)  # the square follows the longer side
    torch.testing.assert_close(box_crops(images[:1], tall, 32, margin=0.0)[0, 0], image[0, :, 16:48, 8:40])
    corner = box_crops(images[:1], torch.tensor([0.0, 0.0, 4 / 48, 4 / 64]).view(1, 1, 4), 4, margin=0.0)[
        0, 0
    ]
    assert corner[:, :2].abs().sum() == 0 and corner[:, :, :2].abs().sum() == 0  # zeros outside the image
    torch.testing.assert_close(corner[:, 2:, 2:], image[0, :, :2, :2])


def test_a_box_classifier_gives_logits_per_box_and_none_for_no_boxes():
    head = BoxClassifier(in_chans=1, num_classes=7, width=4, crop_size=12)
    images = torch.randn(3, 1, 32, 32)
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.2], [0.2, 0.3, 0.1, 0.1]]).expand(3, -1, -1)
    assert head(images, boxes).shape == (3, 2, 7)
    assert head(images, boxes[:, :0]).shape == (3, 0, 7)


def test_detr_multiplies_the_decoders_and_the_box_classifiers_classes_in_eval_mode():
    torch.manual_seed(0)
    model = vitkit.create_model("detr_vit_canvas", num_classes=4, in_chans=1, img_size=32, box_classifier=4)
    for p in model.box_classifier.parameters():  # weights that give the crops distinct classes
        p.data.normal_()
    images = torch.randn(2, 1, 32, 32)
    gt = [torch.tensor([[0.5, 0.5, 0.4, 0.4]]), torch.zeros(0, 4)]
    train = model.train()(images, gt)
    assert train["box_logits"].shape == (1, 4)  # the given boxes, in image order
    torch.testing.assert_close(train["box_logits"], model.box_classifier(images[:1], gt[0][None])[0])
    model.eval()
    with torch.no_grad():
        out = model(images)
        decoder = model.decode(images)["pred_logits"].softmax(-1)
        b, q = out["pred_boxes"].shape[:2]
        box = model.box_classifier(images, out["pred_boxes"])
    prob = out["pred_logits"].exp()
    torch.testing.assert_close(prob.sum(-1), torch.ones(b, q))
    torch.testing.assert_close(prob[..., -1], decoder[..., -1])  # "no object": the decoder's
    expert = decoder[..., :-1] * box.softmax(-1)
    torch.testing.assert_close(
        prob[..., :-1], expert / expert.sum(-1, keepdim=True) * (1 - decoder[..., -1:])
    )
    assert "box_logits" not in out and not torch.allclose(prob, decoder)


def test_a_box_classifier_is_added_to_a_trained_detector_and_trained_alone(tmp_path):
    from test_segmentation import _blob_canvases

    from vitkit.data.canvas import write_coco
    from vitkit.engine.config import resolve_config
    from vitkit.export import export_model
    from vitkit.tasks import build_trainer

    images, targets, masks = _blob_canvases(8)
    for split in ("train", "val"):
        write_coco(tmp_path / "data" / split, images, targets, ["square", "bar", "slab"], masks)
    base = dict(task="detection", dataset=f"coco:{tmp_path / 'data'}", model="detr_vit_canvas", epochs=1,
                batch_size=4, threads=1, out_dir=str(tmp_path), progress=False)  # fmt: skip
    first = build_trainer(resolve_config(None, None, **base, name="first", model_args={"decoder_depth": 1}))
    first.fit()
    with pytest.raises(
        ValueError, match="freeze_detector trains only the box classifier, and this model has none"
    ):
        build_trainer(resolve_config(None, None, **base, freeze_detector=True))
    cfg = resolve_config(None, None, **base, name="second", init_from=str(tmp_path / "first"), lr=1e-2,
                         freeze_detector=True, model_args={"box_classifier": 4, "box_crop": 8})  # fmt: skip
    second = build_trainer(cfg)
    before = {k: v.clone() for k, v in second.model.state_dict().items()}
    second.fit()
    after = vitkit.load(tmp_path / "second" / "model.safetensors").state_dict()
    theirs = vitkit.load(tmp_path / "first" / "model.safetensors").state_dict()
    assert all(torch.equal(after[k], theirs[k]) for k in theirs)  # the detector stays as it was
    assert sorted(set(after) - set(theirs)) == sorted(k for k in after if k.startswith("box_classifier."))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("box_classifier."))
    with pytest.raises(
        ValueError, match="freeze_detector keeps the detector as it is: it needs --from .* got none"
    ):
        build_trainer(
            resolve_config(None, None, **base, freeze_detector=True, model_args={"box_classifier": 4})
        )
    vit = vitkit.create_model("vit_mnist", in_chans=1, img_size=32, depth=1)
    vit.data_config = {"classes": [str(i) for i in range(10)], "mean": [0.5], "std": [0.5], "img_size": [32, 32],
                       "in_chans": 1}  # fmt: skip
    vitkit.save(
        vit, tmp_path / "vit.safetensors"
    )  # a backbone only: the decoder would start (and stay) untrained
    with pytest.raises(ValueError, match="it needs --from .* a trained detector, got .*vit.safetensors"):
        build_trainer(resolve_config(None, None, **base, init_from=str(tmp_path / "vit.safetensors"),
                                     freeze_detector=True, model_args={"box_classifier": 4}))  # fmt: skip
    with pytest.raises(
        ValueError, match=r"model_args \['box_classifier'\] would change the trained box_classifier"
    ):
        build_trainer(resolve_config(None, None, **base, init_from=str(tmp_path / "second"),
                                     model_args={"box_classifier": 8, "box_crop": 8}))  # fmt: skip
    with pytest.raises(
        ValueError, match="would change the trained box_classifier"
    ):  # dropping it loses weights
        build_trainer(resolve_config(None, None, **base, init_from=str(tmp_path / "second"),
                                     model_args={"box_classifier": 0}))  # fmt: skip
    from vitkit.tasks import get_task

    assert (
        get_task("detection").training_mode({"freeze_detector": True}) == "box classifier only"
    )  # what it prints
    assert (
        get_task("segmentation").training_mode({"finetune_mode": "linear"}) == "full"
    )  # takes no finetune_mode
    report = export_model(tmp_path / "second", "onnx", tmp_path / "m.onnx", bench=False)
    assert max(report["max_abs_diff"].values()) <= 1e-4  # the crops (grid_sample) export too


@pytest.mark.parametrize("family", ["detr_vitc_canvas", "detr_vit_canvas", "segmenter_vit_canvas"])
def test_every_trainable_weight_of_a_dense_model_gets_a_gradient(family):
    """PyTorch DDP refuses a parameter that never gets a gradient: the backbone's head parts (fc_norm), which a
    dense model never reads, were one (torchrun training of ``detr_vitc_canvas`` failed)."""
    from vitkit.detection import SetCriterion

    args = {"box_classifier": 8} if family.startswith("detr") else {}
    model = vitkit.create_model(family, num_classes=3, in_chans=1, img_size=64, **args).train()
    images = torch.randn(2, 1, 64, 64)
    if family.startswith("detr"):
        targets = [
            {
                "labels": torch.tensor([1, 2]),
                "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2]]),
            },
            {
                "labels": torch.zeros(0, dtype=torch.long),
                "boxes": torch.zeros(0, 4),
            },  # an image without objects
        ]
        out = model(images, [t["boxes"] for t in targets])
        loss = SetCriterion(3)(out, targets)[0] + out["box_logits"].logsumexp(-1).sum()
    else:
        out = model(images)
        loss = (out["pred_masks"] if isinstance(out, dict) else out).float().square().mean()
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.backbone.fc_norm.weight.requires_grad is False  # the head parts: kept in the state dict
    assert "backbone.fc_norm.weight" in model.state_dict()


def test_box_classifier_arguments_are_checked_by_name():
    with pytest.raises(ValueError, match=r"crop_size \(DETR's box_crop\) must be >= 8 pixels, got 4"):
        vitkit.create_model(
            "detr_vit_canvas", num_classes=3, in_chans=1, img_size=32, box_classifier=8, box_crop=4
        )
    with pytest.raises(ValueError, match="box_classifier"):
        vitkit.create_model("detr_vit_canvas", num_classes=3, in_chans=1, img_size=32, box_classifier=-1)
