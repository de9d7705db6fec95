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


def _blob_canvases(n: int = 8, canvas: int = 32):
    from vitkit.data.canvas import make_canvases

    items = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    items[0, :, 4:24, 4:24] = 255  # a square
    items[1, :, 2:26, 11:17] = 255  # a bar
    items[2, :, 8:20, 2:26] = 160  # a dim slab
    return make_canvases(items, torch.tensor([0, 1, 2]), num_images=n, canvas=canvas, objects=(1, 2),
                         scale=(0.4, 0.6))  # fmt: skip


def test_masks_written_with_coco_read_back(tmp_path):
    from vitkit.data.canvas import write_coco
    from vitkit.data.segmentation import SegmentationDataset

    images, targets, masks = _blob_canvases(4)
    write_coco(tmp_path / "s", images, targets, ["square", "bar", "slab"], masks)
    ds = SegmentationDataset(tmp_path / "s")
    assert ds.classes == ["background", "square", "bar", "slab"] and ds.modality == "segmentation"
    assert torch.equal(ds.masks, masks) and torch.equal(ds.raw, images)
    image, index = ds[2]
    assert image.shape == (1, 32, 32) and index == 2
    small = SegmentationDataset(tmp_path / "s", image_size=16)  # nearest resize keeps class indices
    assert small.masks.shape == (4, 16, 16) and set(small.masks.unique().tolist()) <= {0, 1, 2, 3}
    (tmp_path / "s" / "masks" / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="no mask for images/000001.png"):
        SegmentationDataset(tmp_path / "s")
    with pytest.raises(ValueError, match="mask values run to"):
        write_coco(tmp_path / "t", images, targets, ["square"], masks)


def test_a_tiny_segmenter_fits_canvases_and_draws_overlays(tmp_path):
    from vitkit.data.canvas import write_coco
    from vitkit.train import train_segmentation

    images, targets, masks = _blob_canvases(8)
    for split in ("train", "val"):  # the same images: this checks the model can fit, not generalise
        write_coco(tmp_path / "data" / split, images, targets, ["square", "bar", "slab"], masks)
    args = {"backbone_args": {"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}, "decoder_dim": 32,
            "decoder_depth": 1, "decoder_heads": 2}  # fmt: skip
    summary = train_segmentation(
        dataset=f"coco:{tmp_path / 'data'}", model="segmenter_vit_canvas", epochs=60, batch_size=4, lr=3e-3,
        warmup_epochs=2, weight_decay=1e-4, eval_every=30, threads=1, progress=False, model_args=args,
        out_dir=str(tmp_path), name="seg",
    )  # fmt: skip
    assert summary["val_mIoU"] >= 0.6 and summary["val_pixel_acc"] >= 0.9, summary
    assert set(summary["val_iou"]) == {"background", "square", "bar", "slab"}
    run = tmp_path / "seg"
    assert (run / "overlays.png").stat().st_size > 0 and (run / "curves.png").exists()
    model = vitkit.load(run / "model.safetensors")
    assert isinstance(model, Segmenter) and model.decoder_type == "mask"
    with pytest.raises(ValueError, match="task does not take hflip"):
        train_segmentation(dataset=f"coco:{tmp_path / 'data'}", hflip=True)
    with pytest.raises(ValueError, match="needs a Segmenter"):
        train_segmentation(dataset=f"coco:{tmp_path / 'data'}", model="vit_tiny_patch16_224", epochs=1)


@pytest.mark.parametrize("family", ["segmenter_vit_canvas", "detr_vit_canvas"])
def test_backbone_starts_from_a_vitkit_vit(tmp_path, family):
    """``init_from``: the backbone takes the source ViT's architecture and weights (positions resampled)."""
    from vitkit.data.canvas import write_coco
    from vitkit.engine.config import resolve_config
    from vitkit.tasks import build_trainer

    images, targets, masks = _blob_canvases(4)
    for split in ("train", "val"):
        write_coco(tmp_path / "data" / split, images, targets, ["square", "bar", "slab"], masks)
    source = vitkit.create_model("vit_mnist", depth=2, num_classes=10)  # 28x28, patch 4
    vitkit.save(source, tmp_path / "vit.safetensors")
    task = "segmentation" if family.startswith("segmenter") else "detection"
    cfg = resolve_config(None, None, task=task, dataset=f"coco:{tmp_path / 'data'}", model=family, epochs=1, threads=1,
                         init_from=str(tmp_path / "vit.safetensors"), out_dir=str(tmp_path), progress=False)  # fmt: skip
    trainer = build_trainer(cfg)
    backbone = trainer.model.backbone
    assert len(backbone.blocks) == 2 and backbone.patch_embed.grid_size == (8, 8)  # 32 px canvases, patch 4
    torch.testing.assert_close(backbone.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    from vitkit.layers import resample_abs_pos_embed

    prefix = 0 if source.no_embed_class else source.num_prefix_tokens
    expected = resample_abs_pos_embed(source.pos_embed.detach(), (8, 8), num_prefix_tokens=prefix)
    torch.testing.assert_close(backbone.pos_embed.detach(), expected)
    rgb = vitkit.create_model("vit_cifar", depth=1)
    vitkit.save(rgb, tmp_path / "rgb.safetensors")
    cfg.init_from = str(tmp_path / "rgb.safetensors")
    with pytest.raises(ValueError, match="3-channel images, the data has 1"):
        build_trainer(cfg)


@pytest.mark.parametrize("family", ["segmenter_vit_canvas", "detr_vit_canvas"])
def test_a_dense_model_continues_from_a_run_of_its_own_task(tmp_path, monkeypatch, family):
    """``init_from`` a detector (detection) or a segmenter (segmentation): every weight, the architecture and the
    normalisation come from it; other classes, sizes or architecture-changing model_args are refused by name."""
    from vitkit.data.canvas import write_coco
    from vitkit.engine.config import resolve_config
    from vitkit.tasks import build_trainer

    images, targets, masks = _blob_canvases(4)
    for split in ("train", "val"):
        write_coco(tmp_path / "data" / split, images, targets, ["square", "bar", "slab"], masks)
    task = "segmentation" if family.startswith("segmenter") else "detection"
    base = dict(task=task, dataset=f"coco:{tmp_path / 'data'}", model=family, epochs=1, threads=1,
                out_dir=str(tmp_path), progress=False)  # fmt: skip
    first = build_trainer(resolve_config(None, None, **base, model_args={"decoder_depth": 1}))
    source, classes = first.model, first.task.classes
    torch.manual_seed(1)
    for p in source.parameters():  # weights no fresh model has
        p.data.normal_()
    source.data_config = {
        "classes": classes,
        "mean": [0.25],
        "std": [0.5],
        "img_size": [32, 32],
        "in_chans": 1,
    }
    vitkit.save(source, tmp_path / "trained.safetensors")
    extra = {"cls_loss_coef": 2.0} if task == "detection" else {}  # DETR's class term, weighted
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(None, None, **base, **extra, init_from="trained.safetensors")
    assert cfg.init_from == str(tmp_path / "trained.safetensors")  # resumable from another folder
    trainer = build_trainer(cfg)
    model = trainer.model
    if extra:
        assert trainer.task.criterion.weights == {"class": 2.0, "bbox": 5.0, "giou": 2.0}
    else:
        with pytest.raises(ValueError, match="does not take cls_loss_coef"):
            build_trainer(resolve_config(None, None, **base, cls_loss_coef=2.0))
    assert model.config["decoder_depth"] == 1  # the file's architecture, not the registry default
    assert trainer.task.images.mean == [0.25] and trainer.task.images.std == [
        0.5
    ]  # not this data's statistics
    mine, theirs = model.state_dict(), source.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    again = build_trainer(
        resolve_config(None, None, **base, init_from=cfg.init_from, model_args={"drop_rate": 0.3})
    )
    assert again.model.config["drop_rate"] == 0.3 and torch.equal(
        again.model.state_dict()[next(iter(mine))], mine[next(iter(mine))]
    )
    heads = "num_heads" if task == "detection" else "decoder_heads"  # same tensor shapes, another model
    for change in ({"decoder_depth": 2}, {heads: source.config[heads] // 2}):
        with pytest.raises(
            ValueError, match=rf"model_args \['{next(iter(change))}'\] would change the architecture"
        ):
            build_trainer(resolve_config(None, None, **base, init_from=cfg.init_from, model_args=change))
    wider = vitkit.create_model(family, num_classes=source.config["num_classes"] + 2, in_chans=1, img_size=32)
    vitkit.save(wider, tmp_path / "wider.safetensors")
    with pytest.raises(ValueError, match=r"trained for classes \d+; .* has \d+"):
        build_trainer(resolve_config(None, None, **base, init_from=str(tmp_path / "wider.safetensors")))
    source.data_config = {**source.data_config, "classes": classes[::-1]}  # same number, other order
    vitkit.save(source, tmp_path / "reordered.safetensors")
    with pytest.raises(ValueError, match=r"trained for classes \[.*\]; .* has \["):
        build_trainer(resolve_config(None, None, **base, init_from=str(tmp_path / "reordered.safetensors")))
