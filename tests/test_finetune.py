"""Fine-tuning: backbone weights loaded by name, a new head, image-size change, frozen parts, probe, LLRD, subsets."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit.data import stratified_indices, stratified_subset
from vitkit.engine.optim import build_optimizer, layer_id
from vitkit.tasks import build_trainer
from vitkit.tasks import resolve_task_config as resolve_config
from vitkit.tasks.finetune import ProbeHead, apply_mode, build_from_pretrained
from vitkit.weights import CheckpointError

SMALL = {"depth": 2, "embed_dim": 32, "num_heads": 2}
TINY = dict(dataset="digits", batch_size=64, lr=2e-3, warmup_epochs=0.5, progress=False, threads=1)


@pytest.fixture()
def source(tmp_path):
    """A 'pre-trained' vit_digits with 7 classes saved as a vitkit model file (random weights suffice)."""
    model = vitkit.create_model("vit_digits", num_classes=7, **SMALL)
    path = tmp_path / "source.safetensors"
    vitkit.save(model, path, data_config={"mean": [0.5], "std": [0.5]})
    return model, path


def _backbone(state):
    return {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}


def test_finetune_loads_every_backbone_weight_and_reinitialises_the_head(source):
    src, path = source
    torch.manual_seed(1)
    model = build_from_pretrained(path, num_classes=10, in_chans=1)
    expected, got = _backbone(src.state_dict()), _backbone(model.state_dict())
    assert sorted(expected) == sorted(got) and len(got) > 10
    for name, tensor in expected.items():  # named check: every backbone tensor, bit for bit
        assert torch.equal(got[name], tensor), name
    assert model.head.weight.shape == (10, 32)
    assert (
        model.head.bias.abs().sum() == 0 and 0.005 < model.head.weight.std() < 0.05
    )  # fresh trunc-normal init


def test_finetune_at_a_new_image_size_resamples_the_position_table(source):
    src, path = source
    model = build_from_pretrained(path, num_classes=10, in_chans=1, model_args={"img_size": 16})
    assert model.pos_embed.shape == (1, 1 + 64, 32)  # class token + 8x8 patches (was 4x4)
    assert torch.equal(model.pos_embed[:, :1], src.pos_embed[:, :1])  # prefix rows kept as they were
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_finetune_from_an_external_checkpoint_needs_the_architecture(source, tmp_path):
    src, _ = source
    plain = tmp_path / "timm_style.safetensors"  # a timm-layout file: weights only, no vitkit metadata
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(plain))
    with pytest.raises(ValueError, match="name the architecture"):
        build_from_pretrained(plain, num_classes=10, in_chans=1)
    model = build_from_pretrained(plain, num_classes=10, in_chans=1, model="vit_digits", model_args=SMALL)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    with pytest.raises(CheckpointError, match="shape mismatches"):  # a different width: named, not silent
        build_from_pretrained(plain, num_classes=10, in_chans=1, model="vit_digits", model_args={"depth": 2})
    with pytest.raises(ValueError, match="3-channel|1-channel"):
        build_from_pretrained(source[1], num_classes=10, in_chans=3)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_from_pretrained(tmp_path / "nope.safetensors", num_classes=10, in_chans=1)


def test_linear_probe_leaves_the_backbone_bit_identical(tmp_path):
    pre = resolve_config(
        **TINY, model="vit_digits", model_args=SMALL, epochs=3, out_dir=str(tmp_path), name="pre"
    )
    build_trainer(pre).fit()  # a briefly trained backbone: features worth probing
    path = tmp_path / "pre" / "model.safetensors"
    src = vitkit.load(path)
    cfg = resolve_config(**{**TINY, "lr": 0.02}, epochs=3, init_from=str(path), finetune_mode="linear",
                         out_dir=str(tmp_path), name="probe", drop_path=0.1)  # fmt: skip
    trainer = build_trainer(cfg)
    assert isinstance(trainer.model.head, ProbeHead)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {"head.linear.weight", "head.linear.bias"}
    summary = trainer.fit()
    assert summary["val_acc"] > 0.3  # chance is 0.1
    trained = vitkit.load(tmp_path / "probe" / "model.safetensors")  # a plain ViT again: the probe was folded
    assert isinstance(trained.head, torch.nn.Linear)
    for name, tensor in _backbone(src.state_dict()).items():
        assert torch.equal(trained.state_dict()[name], tensor), name


def test_probe_head_folds_into_one_equal_linear_layer():
    head = ProbeHead(torch.nn.Linear(6, 3))
    head.train()
    for _ in range(5):
        head(torch.randn(32, 6) * 3 + 1)  # accumulate running statistics
    head.eval()
    x = torch.randn(8, 6)
    torch.testing.assert_close(head.fold()(x), head(x), atol=1e-5, rtol=1e-5)


def test_partial_freezing_trains_only_the_top_blocks(source, tmp_path):
    _, path = source
    cfg = resolve_config(**TINY, epochs=1, init_from=str(path), finetune_mode="partial", freeze_blocks=1,
                         out_dir=str(tmp_path), name="partial")  # fmt: skip
    trainer = build_trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    after = dict(trainer.model.named_parameters())
    for name, p in before.items():
        changed = not torch.equal(after[name], p)
        frozen = name.startswith(("patch_embed.", "blocks.0.", "cls_token", "pos_embed"))
        assert changed != frozen or "norm" in name and not frozen, name
    with pytest.raises(ValueError, match="freeze_blocks must be in"):
        apply_mode(vitkit.create_model("vit_digits", **SMALL), "partial", freeze_blocks=5)
    with pytest.raises(ValueError, match="needs init_from"):
        resolve_config(**TINY, finetune_mode="linear")


def test_layer_decay_scales_the_lr_by_depth():
    model = vitkit.create_model("vit_digits", depth=3)
    assert [layer_id(n, 3) for n in ("pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
                                     "blocks.2.mlp.fc1.bias", "fc_norm.weight", "head.weight")] == [0, 0, 1, 3, 4, 4]  # fmt: skip
    opt = build_optimizer(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.head.weight)] == 1.0
    assert lr_of[id(model.blocks[2].attn.qkv.weight)] == 0.5
    assert lr_of[id(model.blocks[0].attn.qkv.weight)] == 0.125
    assert lr_of[id(model.patch_embed.proj.weight)] == 0.0625
    assert wd_of[id(model.pos_embed)] == 0.0 and wd_of[id(model.blocks[0].norm1.weight)] == 0.0
    assert wd_of[id(model.blocks[0].attn.qkv.weight)] == 0.05
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_stratified_subset_is_balanced_and_reproducible():
    targets = torch.tensor([0] * 500 + [1] * 300 + [2] * 200)
    idx = stratified_indices(targets, 0.1, seed=3)
    assert torch.bincount(targets[idx]).tolist() == [50, 30, 20]
    assert torch.equal(idx, stratified_indices(targets, 100, seed=3))
    assert not torch.equal(idx, stratified_indices(targets, 100, seed=4))
    assert len(stratified_indices(targets, 7, seed=0)) == 7
    with pytest.raises(ValueError, match="subset size"):
        stratified_indices(targets, 2000)
    ds = vitkit.data.build_dataset("digits", "train")
    sub = stratified_subset(ds, 0.1, seed=0)
    assert len(sub) == round(0.1 * len(ds)) and sub.classes == ds.classes


def test_cli_finetune_from_a_run(source, tmp_path, capsys):
    from vitkit.cli import main

    _, path = source
    rc = main(["finetune", "--from", str(path), "--data", "digits", "--mode", "linear", "--epochs", "1",
               "--train-subset", "0.5", "--threads", "1", "--no-progress", "--out-dir", str(tmp_path),
               "--name", "cli"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "mode: linear" in out and "val top-1" in out
    assert main(["finetune", "--from", str(path), "--epochs", "1"]) == 2
    assert "name the data" in capsys.readouterr().err
