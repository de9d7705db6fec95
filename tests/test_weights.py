"""Saving, loading and rejecting checkpoints."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit import CheckpointError


def test_save_load_roundtrip_rebuilds_the_model(tmp_path):
    model = vitkit.create_model("vit_mnist", depth=2, reg_tokens=1).eval()
    path = vitkit.save(model, tmp_path / "m.safetensors")
    loaded = vitkit.load(path).eval()
    assert loaded.config == model.config and loaded.model_name == "vit_mnist"
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    cfg = {"classes": ["a", "b"], "mean": [0.5], "std": [0.25]}
    assert vitkit.load(vitkit.save(model, tmp_path / "d.safetensors", data_config=cfg)).data_config == cfg


def test_load_rejects_files_without_vitkit_config(tmp_path):
    model = vitkit.create_model("vit_mnist", depth=1)
    save_file(model.state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="no vitkit config"):
        vitkit.load(tmp_path / "plain.safetensors")


def test_corrupt_and_truncated_files(tmp_path):
    model = vitkit.create_model("vit_mnist", depth=1)
    good = vitkit.save(model, tmp_path / "m.safetensors")
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        vitkit.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        vitkit.load_pretrained(model, tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        vitkit.load_pretrained(model, tmp_path / "missing.pth")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_never_executed(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, tmp_path / "evil.pth")
    model = vitkit.create_model("vit_mnist", depth=1)
    with pytest.raises(CheckpointError, match="refusing to load"):
        vitkit.load_pretrained(model, tmp_path / "evil.pth")


def test_checkpoint_from_another_architecture_is_named(tmp_path):
    resnet_like = {
        "conv1.weight": torch.randn(8, 3, 7, 7),
        "bn1.weight": torch.ones(8),
        "fc.weight": torch.randn(10, 8),
    }
    torch.save(resnet_like, tmp_path / "resnet.pth")
    model = vitkit.create_model("vit_mnist", depth=1)
    with pytest.raises(CheckpointError, match="not a Vision Transformer checkpoint"):
        vitkit.load_pretrained(model, tmp_path / "resnet.pth")


def test_mismatched_keys_are_listed(tmp_path):
    src = vitkit.create_model("vit_mnist", depth=2)
    torch.save({"model": src.state_dict()}, tmp_path / "ckpt.pth")  # wrapped like a training checkpoint
    deeper = vitkit.create_model("vit_mnist", depth=3)
    with pytest.raises(CheckpointError, match=r"missing keys \(12\): blocks\.2\.norm1\.weight"):
        vitkit.load_pretrained(deeper, tmp_path / "ckpt.pth")
    wider = vitkit.create_model("vit_mnist", depth=2, embed_dim=64)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        vitkit.load_pretrained(wider, tmp_path / "ckpt.pth")


def test_new_head_for_fine_tuning(tmp_path):
    src = vitkit.create_model("vit_mnist", depth=2)
    path = vitkit.save(src, tmp_path / "src.safetensors")
    target = vitkit.create_model("vit_mnist", depth=2, num_classes=3)
    with pytest.raises(CheckpointError, match="ignore_head=True"):
        vitkit.load_pretrained(target, path)
    head_before = target.head.weight.clone()
    vitkit.load_pretrained(target, path, ignore_head=True)
    assert torch.equal(target.head.weight, head_before)
    assert torch.equal(target.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)


def test_ddp_and_compile_prefixes_are_stripped(tmp_path):
    src = vitkit.create_model("vit_mnist", depth=1)
    sd = {f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / "ddp.pth")
    target = vitkit.create_model("vit_mnist", depth=1)
    vitkit.load_pretrained(target, tmp_path / "ddp.pth")
    assert torch.equal(target.pos_embed, src.pos_embed)
