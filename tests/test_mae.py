"""MAE: masking, the loss on masked patches only, patch order, pre-training end to end with the Trainer."""

from __future__ import annotations

import json

import pytest
import torch

import vitkit
from vitkit.models.mae import MaskedAutoencoder, patchify, random_masking, unpatchify
from vitkit.weights import load


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_masking_keeps_exactly_the_requested_number_of_patches(ratio):
    x = torch.randn(3, 49, 8)
    kept, mask, ids_restore = random_masking(x, ratio)
    keep = int(49 * (1 - ratio))
    assert kept.shape == (3, keep, 8)
    assert mask.sum(1).tolist() == [49 - keep] * 3
    # the kept tokens are exactly the unmasked ones, in the order ids_restore undoes
    for b in range(3):
        visible = x[b, mask[b] == 0]
        assert torch.equal(kept[b].sort(0).values, visible.sort(0).values)
    full = torch.cat([kept, torch.zeros(3, 49 - keep, 8)], 1).gather(
        1, ids_restore[..., None].expand(-1, -1, 8)
    )
    assert torch.equal(full[mask == 0], x[mask == 0])
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(x, 1.0)


def test_patchify_follows_the_patch_embedding_token_order():
    model = vitkit.create_model("mae_vit_digits")
    images = torch.randn(2, 1, 8, 8)
    patches = patchify(images, (2, 2))
    assert torch.equal(unpatchify(patches, (2, 2), (4, 4), 1), images)
    # token t of the patch embedding sees exactly patch t: a conv with a one-hot kernel reads its first pixel
    conv = torch.nn.Conv2d(1, 1, 2, 2, bias=False)
    conv.weight.data.zero_()
    conv.weight.data[0, 0, 0, 0] = 1
    tokens = conv(images).flatten(2).transpose(1, 2)[..., 0]
    assert torch.equal(tokens, patches[..., 0])
    assert model.patch_size == (2, 2) and model.grid_size == (4, 4)


def test_loss_covers_only_the_masked_patches():
    model = vitkit.create_model("mae_vit_digits").eval()
    images = torch.randn(4, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    loss, pred, mask = model(images, generator=g)
    assert mask.sum(1).tolist() == [12] * 4  # 16 patches, 75% masked
    target = model.target(images)
    # hand-computed: mean over masked patches of the per-patch mean squared error
    expected = ((pred - target) ** 2).mean(-1)[mask == 1].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # changing predictions of visible patches leaves the loss unchanged; of a masked patch, changes it
    visible_changed = pred + (1 - mask)[..., None] * 100
    assert model.loss(images, visible_changed, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    masked_changed = pred + mask[..., None] * 0.5
    assert model.loss(images, masked_changed, mask).item() != pytest.approx(loss.item(), rel=1e-3)
    # norm_pix_loss: each target patch has mean 0 and unit variance
    assert target.mean(-1).abs().max() < 1e-5
    assert (target.var(-1) - 1).abs().max() < 1e-3


def test_mae_gradients_reach_encoder_and_decoder_and_round_trip_through_save(tmp_path):
    model = vitkit.create_model("mae_vit_digits")
    loss, _, _ = model(torch.randn(2, 1, 8, 8))
    loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.mask_token.grad.abs().sum() > 0
    vitkit.save(model, tmp_path / "mae.safetensors")
    again = load(tmp_path / "mae.safetensors")
    assert isinstance(again, MaskedAutoencoder)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model.eval()(x, generator=g1)[1], again.eval()(x, generator=g2)[1])


def test_mae_rejects_non_vit_encoders():
    with pytest.raises(ValueError, match="must be a ViT"):
        MaskedAutoencoder(encoder="resnet_mnist")


def test_pretrain_then_finetune_end_to_end_beats_chance(tmp_path):
    from vitkit.train import pretrain, train

    out = str(tmp_path)
    summary = pretrain(
        "mae", model="mae_vit_digits", dataset="digits", epochs=2, batch_size=64, lr=2e-3, warmup_epochs=0.5,
        drop_path=0.0, out_dir=out, name="mae", progress=False,
    )  # fmt: skip
    run = tmp_path / "mae"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_loss"] < records[0]["train_loss"]  # the reconstruction improves
    assert summary["val_loss"] > 0
    for name in ("encoder.safetensors", "model.safetensors", "reconstructions.png", "curves.png"):
        assert (run / name).stat().st_size > 0
    assert "classes" not in json.loads(
        vitkit.weights.read_metadata(run / "encoder.safetensors")["data_config"]
    )

    result = train(
        dataset="digits", init_from=str(run), epochs=8, batch_size=64, lr=2e-3, warmup_epochs=0.5,
        out_dir=out, name="ft", progress=False,
    )  # fmt: skip
    assert result["val_acc"] > 0.3  # 10 classes: chance is 0.1
    model = load(tmp_path / "ft" / "model.safetensors")
    assert model.config["pos_embed"] == "sincos" and model.num_classes == 10


def test_cli_pretrain_prints_the_next_step(tmp_path, capsys):
    from vitkit.cli import main

    rc = main(["pretrain", "--method", "mae", "--model", "mae_vit_digits", "--data", "digits", "--epochs", "1",
               "--threads", "1", "--no-progress", "--out-dir", str(tmp_path), "--name", "pt"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "val mae loss" in out and f"vitkit finetune --from {tmp_path / 'pt'}" in out
    assert main(["pretrain", "--method", "mae", "--model", "vit_digits", "--data", "digits"]) == 2
    assert "needs an MAE model" in capsys.readouterr().err
