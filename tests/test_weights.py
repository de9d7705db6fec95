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
    from vitkit.weights.hf_bert import convert_hf_bert

    bert = vitkit.create_model("bert_tiny", vocab_size=50).eval()
    sd = bert.state_dict()
    for prefix in ("module._orig_mod.", "_orig_mod.module.", "_fsdp_wrapped_module."):
        got = convert_hf_bert({"model": {prefix + k: v for k, v in sd.items()}})
        assert got.keys() == sd.keys()


def _rect_vit(img_size, **kw):
    return vitkit.create_model("vit_cifar", img_size=img_size, patch_size=16, depth=1, embed_dim=32, num_heads=2,
                               **kw)  # fmt: skip


def _true_resize(table, old_grid, new_grid, prefix=1):
    """A bicubic resize of the table's real (rows, cols) grid, written out independently of vitkit."""
    import torch.nn.functional as F

    D = table.shape[-1]
    grid = table[:, prefix:].reshape(1, *old_grid, D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True)
    return torch.cat([table[:, :prefix], grid.permute(0, 2, 3, 1).reshape(1, -1, D)], dim=1)


def test_rectangular_position_tables_resample_from_their_real_grid(tmp_path):
    src = _rect_vit((32, 128))  # grid 2x8: 16 patches, which a square guess would read as 4x4
    want = _true_resize(src.pos_embed.detach(), (2, 8), (4, 6))
    vitkit.save(src, tmp_path / "rect.safetensors")
    torch.save(src.state_dict(), tmp_path / "rect.pth")
    target = _rect_vit((64, 96))  # grid 4x6
    vitkit.load_pretrained(target, tmp_path / "rect.safetensors")  # the grid comes from the file's config
    torch.testing.assert_close(target.pos_embed.detach(), want, atol=1e-6, rtol=1e-5)
    target = vitkit.create_model("vit_cifar", pretrained=str(tmp_path / "rect.safetensors"), img_size=(64, 96),
                                 patch_size=16, depth=1, embed_dim=32, num_heads=2)  # fmt: skip
    torch.testing.assert_close(target.pos_embed.detach(), want, atol=1e-6, rtol=1e-5)
    # a state dict or .pth does not record its grid: rectangular targets need it passed, and say so
    for source in (src.state_dict(), tmp_path / "rect.pth"):
        target = _rect_vit((64, 96))
        with pytest.raises(CheckpointError, match=r"could be 1x16, 2x8, 4x4, 8x2, 16x1.*pass old_grid"):
            vitkit.load_pretrained(target, source)
        vitkit.load_pretrained(target, source, old_grid=(2, 8))
        torch.testing.assert_close(target.pos_embed.detach(), want, atol=1e-6, rtol=1e-5)
    target = vitkit.create_model("vit_cifar", pretrained=str(tmp_path / "rect.pth"), pretrained_grid=(2, 8),
                                 img_size=(64, 96), patch_size=16, depth=1, embed_dim=32, num_heads=2)  # fmt: skip
    torch.testing.assert_close(target.pos_embed.detach(), want, atol=1e-6, rtol=1e-5)
    # same patch count, other shape: 2x8 -> 4x4 is a resample, not a copy
    square = _rect_vit((64, 64))
    vitkit.load_pretrained(square, tmp_path / "rect.safetensors")
    torch.testing.assert_close(
        square.pos_embed.detach(), _true_resize(src.pos_embed.detach(), (2, 8), (4, 4))
    )
    with pytest.raises(CheckpointError, match="not a 3x5 grid"):
        vitkit.load_pretrained(_rect_vit((64, 96)), src.state_dict(), old_grid=(3, 5))


def test_non_square_patch_counts_load_with_their_grid(tmp_path):
    src = _rect_vit((32, 96))  # 2x6 = 12 patches: no square guess possible
    vitkit.save(src, tmp_path / "m.safetensors")
    want = _true_resize(src.pos_embed.detach(), (2, 6), (3, 3))
    with pytest.raises(CheckpointError, match=r"12 patch rows could be .*2x6.*pass old_grid"):
        vitkit.load_pretrained(_rect_vit((48, 48)), src.state_dict())
    target = _rect_vit((48, 48))
    vitkit.load_pretrained(target, tmp_path / "m.safetensors")
    torch.testing.assert_close(target.pos_embed.detach(), want, atol=1e-6, rtol=1e-5)
    mae_like = {"encoder": "vit_cifar", "encoder_args": {"img_size": [32, 96], "patch_size": [16, 16]}}
    from vitkit.weights.pretrained import recorded_grid

    assert recorded_grid(mae_like) == (2, 6)
    assert recorded_grid({"image_size": 224, "patch_size": 16}) == (14, 14)  # a HuggingFace config.json
    # square checkpoints into square models keep working without a grid (published ViTs)
    sq = _rect_vit((64, 64))
    big = _rect_vit((96, 96))
    vitkit.load_pretrained(big, sq.state_dict())
    torch.testing.assert_close(big.pos_embed.detach(), _true_resize(sq.pos_embed.detach(), (4, 4), (6, 6)))


def test_resample_abs_pos_embed_checks_old_size():
    from vitkit.layers import resample_abs_pos_embed

    table = torch.randn(1, 1 + 16, 8)
    with pytest.raises(ValueError, match="not a 3x5 grid"):
        resample_abs_pos_embed(table, (4, 6), old_size=(3, 5))
    with pytest.raises(ValueError, match="pass old_size"):
        resample_abs_pos_embed(torch.randn(1, 13, 8), (4, 6))
    torch.testing.assert_close(resample_abs_pos_embed(table, (4, 6), old_size=(2, 8)),
                               _true_resize(table, (2, 8), (4, 6)))  # fmt: skip


def test_finetune_from_a_rectangular_vitkit_file_resamples_its_real_grid(tmp_path):
    """``vitkit finetune --from`` a file recording img_size [32, 128] (grid 2x8) into 64x96 (grid 4x6): the table is
    a bicubic resize of the true 2x8 grid, also when the patch counts are equal (2x8 -> 4x4)."""
    from vitkit.tasks.finetune import build_from_pretrained

    src = _rect_vit((32, 128))
    vitkit.save(src, tmp_path / "rect.safetensors")
    for size, grid in (((64, 96), (4, 6)), ((64, 64), (4, 4))):
        target = build_from_pretrained(
            tmp_path / "rect.safetensors", 5, 3, model_args={"img_size": list(size)}
        )
        want = _true_resize(src.pos_embed.detach(), (2, 8), grid)
        torch.testing.assert_close(target.pos_embed.detach(), want, atol=1e-6, rtol=1e-5)
