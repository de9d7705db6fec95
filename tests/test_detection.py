"""Detection pieces: box formats, IoU/GIoU, the Hungarian matcher, DETR's set loss, canvases in COCO format."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch

import vitkit
from vitkit.data.canvas import CocoDetection, make_canvases, write_coco
from vitkit.detection import (
    HungarianMatcher,
    SetCriterion,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
)
from vitkit.engine.checkpoint import load_checkpoint


def test_box_formats_round_trip():
    xyxy = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy)
    assert box_xyxy_to_cxcywh(xyxy)[0].tolist() == pytest.approx([0.3, 0.55, 0.4, 0.7])


def test_iou_and_giou_of_known_boxes():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 5.0, 5.0]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1 / 7, 1.0, 0.0])
    # GIoU = IoU - (enclosing - union) / enclosing: 1/7 - (9 - 7)/9;  1;  0 - (25 - 5)/25
    assert generalized_box_iou(a, b)[0].tolist() == pytest.approx([1 / 7 - 2 / 9, 1.0, -0.8])
    with pytest.raises(ValueError, match="x1 >= x0"):
        generalized_box_iou(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), a)


def test_matcher_is_optimal_against_brute_force():
    torch.manual_seed(0)
    matcher = HungarianMatcher()
    for _ in range(20):
        Q, n = 5, int(torch.randint(1, 5, (1,)))
        logits = torch.randn(1, Q, 4)
        boxes = torch.rand(1, Q, 4) * 0.5 + 0.25
        target = {"labels": torch.randint(0, 3, (n,)), "boxes": torch.rand(n, 4) * 0.5 + 0.25}
        cost = matcher.cost_matrix(logits[0], boxes[0], target["labels"], target["boxes"])
        rows, cols = matcher(logits, boxes, [target])[0]
        got = cost[rows, cols].sum().item()
        best = min(sum(cost[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(Q), n))
        assert got == pytest.approx(best, abs=1e-5)
        assert sorted(cols.tolist()) == list(range(n))  # every object matched exactly once


def test_set_loss_is_low_for_perfect_predictions_and_counts_no_object():
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.3]])
    target = [{"labels": torch.tensor([1, 2]), "boxes": boxes}]
    logits = torch.full((1, 4, 4), -10.0)
    logits[0, 0, 2] = logits[0, 2, 1] = 10.0  # query 0 -> class 2, query 2 -> class 1
    logits[0, 1, 3] = logits[0, 3, 3] = 10.0  # the others say "no object" (index 3)
    pred = torch.rand(1, 4, 4) * 0.1 + 0.4
    pred[0, 0], pred[0, 2] = boxes[1], boxes[0]
    criterion = SetCriterion(num_classes=3)
    loss, parts = criterion({"pred_logits": logits, "pred_boxes": pred}, target)
    assert parts["bbox"] < 1e-6 and parts["giou"] < 1e-6 and parts["class"] < 1e-3
    wrong = logits.clone()
    wrong[0, 1, 3], wrong[0, 1, 0] = -10.0, 10.0  # a spurious object is penalised
    assert criterion({"pred_logits": wrong, "pred_boxes": pred}, target)[1]["class"] > parts["class"] + 0.5


def test_detections_per_query_and_as_query_class_pairs():
    """DETR's post-processing keeps each query's best real class; Deformable DETR's (``pairs``) keeps the best
    (query, class) pairs, so a query may count under two classes. Boxes scale to each image's pixels."""
    from vitkit.tasks.detection import detections

    # 2 images x 2 queries x (2 classes + no object); probabilities by hand, logits are their logs
    prob = torch.tensor([[[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]], [[0.2, 0.5, 0.3], [0.45, 0.45, 0.1]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]] * 2)
    out = {"pred_logits": prob.log(), "pred_boxes": boxes}
    first, second = detections(out, [(10, 20), (40, 30)])
    torch.testing.assert_close(first["scores"], torch.tensor([0.6, 0.2]))
    assert first["labels"].tolist() == [0, 1]
    torch.testing.assert_close(first["boxes"], torch.tensor([[8.0, 3.0, 12.0, 7.0], [0.0, 0.0, 10.0, 5.0]]))
    assert second["labels"].tolist() in ([1, 0], [1, 1]) and second["scores"][0] == pytest.approx(0.5)
    torch.testing.assert_close(second["boxes"][0], torch.tensor([12.0, 12.0, 18.0, 28.0]))  # 30 wide, 40 high
    assert detections(out, [(10, 20), (40, 30)], top_k=0, pairs=True)[0]["scores"].numel() == 0
    assert detections({k: v[:0] for k, v in out.items()}, []) == []
    same = detections(out, torch.tensor([[10, 20], [40, 30]]))  # sizes as a (B, 2) tensor
    torch.testing.assert_close(same[1]["boxes"], second["boxes"])
    with pytest.raises(ValueError, match="1 image sizes for a batch of 2"):
        detections(out, [(10, 20)])
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        detections(out, [(10, 20), (40, 30)], top_k=-1, pairs=True)
    assert len(detections(out, [(10, 20), (40, 30)], top_k=1)[0]["scores"]) == 1

    pairs = detections(out, [(10, 20), (40, 30)], top_k=3, pairs=True)
    torch.testing.assert_close(pairs[0]["scores"], torch.tensor([0.6, 0.3, 0.2]))
    assert pairs[0]["labels"].tolist() == [0, 1, 1]  # query 0 twice: class 0, then class 1
    torch.testing.assert_close(pairs[0]["boxes"][1], pairs[0]["boxes"][0])
    assert len(detections(out, [(10, 20), (40, 30)], pairs=True)[1]["scores"]) == 4  # every pair of 2 x 2


def test_detr_outputs_and_aux_losses():
    model = vitkit.create_model("detr_vit_canvas", num_classes=10, backbone_args={"img_size": 64, "patch_size": 8,
                                                                                    "depth": 1})  # fmt: skip
    out = model(torch.randn(2, 1, 64, 64))
    assert out["pred_logits"].shape == (2, 16, 11) and out["pred_boxes"].shape == (2, 16, 4)
    assert len(out["aux_outputs"]) == 2 and ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    target = [{"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}] * 2
    loss, _ = SetCriterion(10)(out, target)
    loss.backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.reference.grad.abs().sum() > 0  # the reference points learn


def test_detr_anchor_queries_start_on_a_grid_and_centre_boxes_on_them():
    model = vitkit.create_model("detr_vit_canvas", num_classes=3, num_queries=9,
                                backbone_args={"img_size": 48, "patch_size": 8, "depth": 1})  # fmt: skip
    points = model.reference.detach().sigmoid()
    grid = torch.tensor([1 / 6, 1 / 2, 5 / 6])
    torch.testing.assert_close(
        points, torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(9, 2)
    )
    # the query code is the patches' code: at a patch centre it equals that patch's row of pos_embed
    with torch.no_grad():
        model.reference[0] = torch.logit(torch.tensor([2.5 / 6, 0.5 / 6]))  # column 2, row 0 of the 6x6 grid
    torch.testing.assert_close(model.query_pos()[0, 0], model.pos_embed[0, 2], atol=1e-5, rtol=0)
    with torch.no_grad():  # a box head that outputs zeros puts every box centre on its reference point
        model.box_head.fc2.weight.zero_()
        model.box_head.fc2.bias.zero_()
    boxes = model(torch.randn(2, 1, 48, 48))["pred_boxes"]
    torch.testing.assert_close(boxes[..., :2], model.reference.sigmoid().expand(2, -1, -1))
    torch.testing.assert_close(boxes[..., 2:], torch.full((2, 9, 2), 0.5))
    plain = vitkit.create_model("detr_vit_canvas", num_classes=3, anchors=False)
    assert not hasattr(plain, "reference") and plain(torch.randn(1, 1, 64, 64))["pred_boxes"].shape == (
        1,
        16,
        4,
    )


def test_detr_patch_queries_sit_on_their_patches_and_start_from_them(tmp_path):
    model = vitkit.create_model("detr_vit_canvas", num_classes=3, queries="patches",
                                backbone_args={"img_size": 48, "patch_size": 16, "depth": 1}).eval()  # fmt: skip
    assert model.num_queries == 9 and model.config["num_queries"] == 9  # one query per patch of the 3x3 grid
    # each reference point is its patch's centre, in token order: its code is that patch's position embedding
    torch.testing.assert_close(model.query_pos(), model.pos_embed, atol=1e-5, rtol=0)
    # query i starts from patch token i (+ its learned embedding and, as every decoder layer, its position code)
    x = torch.randn(2, 1, 48, 48)
    seen = []
    model.decoder[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(x)
        expected = model.features(x) + model.query_embed + model.query_pos()
    torch.testing.assert_close(seen[0], expected)
    assert model(torch.randn(2, 1, 48, 48))["pred_boxes"].shape == (2, 9, 4)
    conv = vitkit.create_model("detr_vitc_canvas", num_classes=3, decoder_depth=1,
                               backbone_args={"img_size": 64, "patch_size": 8, "depth": 1, "stem_channels": [8, 16, 32]})  # fmt: skip
    conv.eval()
    loaded = vitkit.load(vitkit.save(conv, tmp_path / "detr.safetensors")).eval()
    x = torch.randn(1, 1, 64, 64)
    assert loaded.num_queries == 64 and torch.equal(loaded(x)["pred_boxes"], conv(x)["pred_boxes"])
    with pytest.raises(ValueError, match="needs anchors=True"):
        vitkit.create_model("detr_vit_canvas", queries="patches", anchors=False)
    with pytest.raises(ValueError, match="'learned' or 'patches'"):
        vitkit.create_model("detr_vit_canvas", queries="dense")


def test_canvases_are_deterministic_and_coco_loads(tmp_path):
    items = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    items[:, :, 6:22, 8:20] = 200  # solid 16x12 blobs
    labels = torch.tensor([0, 1, 2, 3])
    images, targets, masks = make_canvases(items, labels, num_images=6, canvas=64, seed=3)
    again = make_canvases(items, labels, num_images=6, canvas=64, seed=3)
    assert torch.equal(images, again[0]) and all(
        torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, again[1], strict=True)
    )
    for t, m in zip(targets, masks, strict=True):
        for box, label in zip(t["boxes"].long().tolist(), t["labels"].tolist(), strict=True):
            inside = m[box[1] : box[3], box[0] : box[2]] == label + 1
            assert (
                inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            )  # tight
    path = write_coco(tmp_path / "canvas", images, targets, ["a", "b", "c", "d"])
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) == sum(len(t["labels"]) for t in targets)
    ds = CocoDetection(tmp_path / "canvas")
    image, index = ds[0]
    assert image.shape == (1, 64, 64) and index == 0 and torch.equal(ds.raw[0], images[0])
    assert torch.equal(ds.annotations[0]["labels"], targets[0]["labels"])
    torch.testing.assert_close(ds.annotations[0]["boxes"], box_xyxy_to_cxcywh(targets[0]["boxes"]) / 64)
    empty = write_coco(
        tmp_path / "empty", images[:0], [], ["a", "b", "c", "d"], masks[:0]
    )  # a valid, empty set
    # distorted items: other pixels, deterministic per seed, boxes still tight around what shows; 0 = the same stream
    assert torch.equal(make_canvases(items, labels, num_images=6, canvas=64, seed=3, distort=0.0)[0], images)
    bent, bent_targets, bent_masks = make_canvases(
        items, labels, num_images=6, canvas=64, seed=3, distort=1.0
    )
    assert not torch.equal(bent, images)
    assert torch.equal(bent, make_canvases(items, labels, num_images=6, canvas=64, seed=3, distort=1.0)[0])
    for t, m in zip(bent_targets, bent_masks, strict=True):
        for box, label in zip(t["boxes"].long().tolist(), t["labels"].tolist(), strict=True):
            inside = m[box[1] : box[3], box[0] : box[2]] == label + 1  # tight: each edge shows the object
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    with pytest.raises(ValueError, match="distort must be >= 0"):
        make_canvases(items, labels, num_images=1, distort=-1.0)
    for bad in ({"canvas": 0}, {"objects": (3, 1)}, {"scale": (2.0, 1.0)}):
        with pytest.raises(ValueError, match=re.escape(f"got {next(iter(bad.values()))}")):
            make_canvases(items, labels, num_images=1, **bad)
    assert len(COCO(str(empty)).getImgIds()) == 0


@pytest.mark.slow  # 29 s of training (the suite keeps under 10 min); the run, CLI and resume are tested below
def test_a_tiny_detector_overfits_a_handful_of_images(tmp_path):
    from vitkit.train import train_detection

    torch.manual_seed(0)
    items = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    items[0, :, 4:24, 4:24] = 255  # a square
    items[1, :, 2:26, 11:17] = 255  # a bar
    items[2, :, 8:20, 2:26] = 160  # a dim slab
    labels = torch.tensor([0, 1, 2])
    images, targets, _ = make_canvases(
        items, labels, num_images=8, canvas=32, objects=(1, 2), scale=(0.4, 0.6)
    )
    for split in ("train", "val"):  # the same images: this checks the detector can fit, not generalise
        write_coco(tmp_path / "data" / split, images, targets, ["square", "bar", "slab"])
    summary = train_detection(
        dataset=f"coco:{tmp_path / 'data'}", model="detr_vit_canvas", epochs=150, batch_size=2, lr=2e-3,
        warmup_epochs=5, weight_decay=1e-4, drop_path=0.0, eval_every=50, threads=1, progress=False,
        model_args={"backbone_args": {"patch_size": 4, "depth": 2, "embed_dim": 64, "num_heads": 2},
                    "embed_dim": 64, "num_heads": 2, "num_queries": 6, "decoder_depth": 2, "drop_rate": 0.0},
        out_dir=str(tmp_path), name="det",
    )  # fmt: skip
    assert summary["val_AP50"] >= 0.9, summary
    assert (tmp_path / "det" / "predictions.png").stat().st_size > 0
    with pytest.raises(ValueError, match="task does not take hflip"):
        train_detection(dataset=f"coco:{tmp_path / 'data'}", model="detr_vit_canvas", hflip=True)


def test_detection_resumes_exactly_from_the_cli(tmp_path):
    """Resuming keeps the run's own model (not the CLI's default) and loads an optimizer that never saw the
    backbone's unused pooling norm; the resumed run ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    from vitkit.cli import main

    items = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    items[0, :, 4:24, 4:24], items[1, :, 2:26, 11:17] = 255, 255
    images, targets, _ = make_canvases(items, torch.tensor([0, 1]), num_images=8, canvas=32, scale=(0.4, 0.6))
    for split in ("train", "val"):
        write_coco(tmp_path / "data" / split, images, targets, ["square", "bar"])
    model_args = {
        "backbone_args": {
            "img_size": 32,
            "patch_size": 8,
            "depth": 1,
            "embed_dim": 32,
            "num_heads": 2,
            "stem_channels": [8, 16, 32],
        },
        "embed_dim": 32,
        "num_heads": 2,
        "decoder_depth": 1,
    }
    flags = ["--data", f"coco:{tmp_path / 'data'}", "--model", "detr_vitc_canvas", "--model-args",
             json.dumps(model_args), "--epochs", "2", "--batch-size", "4", "--threads", "1", "--no-progress",
             "--out-dir", str(tmp_path)]  # fmt: skip
    assert main(["detect", "train", *flags, "--name", "whole"]) == 0
    # the time limit stops the second run after its first epoch; the resume finishes it
    assert main(["detect", "train", *flags, "--name", "cut", "--time-limit-min", "0.0001"]) == 0
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    assert main(["detect", "train", "--resume", str(tmp_path / "cut"), "--time-limit-min", "100"]) == 0
    a, b = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "cut" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_make_canvas_writes_coco(tmp_path, capsys):
    from vitkit.cli import main

    rc = main(["detect", "make-canvas", "--source", "digits", "--out", str(tmp_path / "c"), "--train", "6", "--val",
               "3", "--canvas", "32", "--scale", "1.5", "2.5"])  # fmt: skip
    assert rc == 0 and "train: 6 canvases" in capsys.readouterr().out
    ds = CocoDetection(tmp_path / "c" / "val")
    assert len(ds) == 3 and ds.classes == [str(i) for i in range(10)] and ds.raw.shape[-1] == 32
    assert main(["detect", "train", "--data", "not-coco"]) == 2
    assert "coco:DIR" in capsys.readouterr().err
    # new training canvases beside the same held-out ones: --val-seed keeps them, --val 0 writes no split
    rc = main(["detect", "make-canvas", "--source", "digits", "--out", str(tmp_path / "d"), "--train", "6", "--val",
               "0", "--seed", "5", "--canvas", "32", "--scale", "1.5", "2.5"])  # fmt: skip
    assert (
        rc == 0 and "val: none written" in capsys.readouterr().out and not (tmp_path / "d" / "val").exists()
    )
    assert not torch.equal(
        CocoDetection(tmp_path / "d" / "train").raw, CocoDetection(tmp_path / "c" / "train").raw
    )
    rc = main(["detect", "make-canvas", "--source", "digits", "--out", str(tmp_path / "e"), "--train", "0", "--val",
               "3", "--seed", "5", "--val-seed", "1", "--canvas", "32", "--scale", "1.5", "2.5"])  # fmt: skip
    assert rc == 0 and torch.equal(CocoDetection(tmp_path / "e" / "val").raw, ds.raw)
    rc = main(["detect", "make-canvas", "--source", "digits", "--out", str(tmp_path / "g"), "--train", "6", "--val",
               "3", "--distort", "1", "--canvas", "32", "--scale", "1.5", "2.5"])  # fmt: skip
    assert rc == 0 and torch.equal(
        CocoDetection(tmp_path / "g" / "val").raw, ds.raw
    )  # held-out: never distorted
    assert not torch.equal(
        CocoDetection(tmp_path / "g" / "train").raw, CocoDetection(tmp_path / "c" / "train").raw
    )
    with pytest.raises(SystemExit):
        main(["detect", "make-canvas", "--out", str(tmp_path / "f"), "--val", "-1"])


def test_set_loss_box_terms_divide_by_the_given_object_count():
    """Data-parallel DETR passes the mean object count over ranks: the box terms scale with it, the class term not."""
    torch.manual_seed(0)
    crit = SetCriterion(3)
    outputs = {"pred_logits": torch.randn(2, 5, 4), "pred_boxes": torch.rand(2, 5, 4) * 0.5 + 0.25}
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.3]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.2]])}]  # fmt: skip
    _, own = crit(outputs, targets)  # 3 objects
    _, given = crit(outputs, targets, num_objects=6.0)  # as if the other ranks held more objects
    assert given["bbox"] == pytest.approx(own["bbox"] / 2) and given["giou"] == pytest.approx(own["giou"] / 2)
    assert given["class"] == pytest.approx(own["class"])
