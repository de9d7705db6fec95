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


def _wrapped_state_dicts(model, tmp_path):
    """name -> state dict of ``model`` as each wrapper order and container saves it (real wrappers where they
    run on one CPU process: torch.compile, DDP over a 1-process gloo group, activation checkpointing; FSDP's
    names are built, since FSDP needs an accelerator)."""
    import copy

    import torch.distributed as dist
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    sd = model.state_dict()
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        m = copy.deepcopy(model)
        out["compile(DDP)"] = torch.compile(DDP(m)).state_dict()
        out["DDP(compile)"] = DDP(torch.compile(copy.deepcopy(model))).state_dict()
        out["compile(DDP(compile))"] = torch.compile(DDP(torch.compile(copy.deepcopy(model)))).state_dict()
        ck = copy.deepcopy(model)
        ck.blocks = torch.nn.Sequential(*[checkpoint_wrapper(b) for b in ck.blocks])
        wrapped = DDP(
            torch.compile(ck)
        )  # its state_dict hides the checkpoint wrapper's name; its parameters don't
        out["DDP(compile(checkpointed blocks))"] = {
            k: v.detach() for k, v in [*wrapped.named_parameters(), *wrapped.named_buffers()]
        }
        assert len(out["DDP(compile(checkpointed blocks))"]) == len(sd)
    finally:
        if started:
            dist.destroy_process_group()
    assert any(k.startswith("_orig_mod.module.") for k in out["compile(DDP)"])
    assert any(k.startswith("module._orig_mod.") for k in out["DDP(compile)"])
    assert any("._checkpoint_wrapped_module." in k for k in out["DDP(compile(checkpointed blocks))"])

    def fsdp_name(k):  # FSDP(auto-wrapped, activation-checkpointed blocks) names
        if k.startswith("blocks."):
            i, rest = k.split(".", 2)[1:]
            return f"_fsdp_wrapped_module.blocks.{i}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"
        return f"_fsdp_wrapped_module.{k}"

    out["FSDP"] = {fsdp_name(k): v for k, v in sd.items()}
    out["compile(FSDP)"] = {f"_orig_mod.{fsdp_name(k)}": v for k, v in sd.items()}
    out["DDP(compile(FSDP))"] = {f"module._orig_mod.{fsdp_name(k)}": v for k, v in sd.items()}
    out["{'state_dict': compile(DDP)}"] = {"state_dict": out["compile(DDP)"], "epoch": 3}
    out["{'model': DDP(compile)}"] = {"model": out["DDP(compile)"], "optimizer": {"state": {}}}
    out["{'state_dict': {'model': FSDP}}"] = {"state_dict": {"model": out["FSDP"]}}
    out["{'model_ema': ModelEma(DDP)}"] = {"model_ema": {f"module.module.{k}": v for k, v in sd.items()}}
    out["{'state_dict_ema': compile}"] = {"state_dict_ema": {f"_orig_mod.{k}": v for k, v in sd.items()}}
    return out


def test_every_wrapper_order_and_container_loads_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    src = vitkit.create_model("vit_mnist", depth=2).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = src(x)
    for name, state in _wrapped_state_dicts(src, tmp_path).items():
        for via_file in (False, True):
            target = vitkit.create_model("vit_mnist", depth=2).eval()
            if via_file:
                torch.save(state, tmp_path / "ckpt.pth")
                vitkit.load_pretrained(target, tmp_path / "ckpt.pth")
            else:
                vitkit.load_pretrained(target, state)
            with torch.no_grad():
                assert torch.equal(target(x), want), name


def test_vitkit_files_of_wrapped_models_load(tmp_path):
    torch.manual_seed(0)
    src = vitkit.create_model("vit_mnist", depth=1).eval()
    x = torch.randn(2, 1, 28, 28)
    compiled = torch.compile(src)
    vitkit.save(src, tmp_path / "m.safetensors", state_dict=compiled.state_dict())
    with torch.no_grad():
        assert torch.equal(vitkit.load(tmp_path / "m.safetensors").eval()(x), src(x))
    from vitkit.weights.convert import unwrap_state_dict

    with pytest.raises(CheckpointError, match="two tensors load into"):
        unwrap_state_dict({"module.a": torch.zeros(1), "_orig_mod.a": torch.ones(1)})


def test_wrapped_bert_checkpoints_convert():
    from vitkit.models.bert import convert_hf_bert

    bert = vitkit.create_model("bert_tiny", vocab_size=50).eval()
    sd = bert.state_dict()
    for prefix in ("module._orig_mod.", "_orig_mod.module.", "_fsdp_wrapped_module."):
        got = convert_hf_bert({"model": {prefix + k: v for k, v in sd.items()}})
        assert got.keys() == sd.keys()
