"""Compression: int8 quantization, low-rank factorisation, pruning, token merging -- models that stay close,
get smaller and save and load."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import vitkit
from vitkit.cli import main as cli_main
from vitkit.compress import (
    LowRankLinear,
    apply_tome,
    factorize_linear,
    low_rank,
    prune_by_importance,
    prune_heads,
    prune_mlp,
    quantize_int8,
    quantized_modules,
    rank_for_energy,
    remove_tome,
    unit_importance,
)
from vitkit.compress.run import parameter_count


def test_full_rank_factorisation_is_exact_and_truncation_is_optimal():
    torch.manual_seed(0)
    linear = nn.Linear(24, 16)
    x = torch.randn(8, 24)
    torch.testing.assert_close(factorize_linear(linear, 16)(x), linear(x), atol=1e-5, rtol=1e-5)
    # Eckart-Young: the rank-r error equals the norm of the dropped singular values
    s = torch.linalg.svdvals(linear.weight.detach())
    f = factorize_linear(linear, 5)
    w_r = f.up.weight @ f.down.weight
    err = torch.linalg.matrix_norm(linear.weight.detach() - w_r)
    torch.testing.assert_close(err, s[5:].square().sum().sqrt(), atol=1e-5, rtol=1e-4)


def test_rank_for_energy():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(s, 9 / 14) == 1
    assert rank_for_energy(s, 0.9) == 2  # 13/14 = 0.93 >= 0.9 > 9/14
    assert rank_for_energy(s, 1.0) == 3
    with pytest.raises(ValueError, match="energy"):
        rank_for_energy(s, 0.0)


def _low_rank_vit() -> nn.Module:
    """A small ViT whose block weights are rank 8 plus a little noise, as trained weights often nearly are."""
    torch.manual_seed(0)
    model = vitkit.create_model("vit_mnist", depth=2, num_classes=10).eval()
    with torch.no_grad():
        for m in model.blocks.modules():
            if isinstance(m, nn.Linear):
                out_f, in_f = m.weight.shape
                m.weight.copy_(
                    torch.randn(out_f, 8) @ torch.randn(8, in_f) / in_f**0.5 + 1e-3 * torch.randn(out_f, in_f)
                )
    return model


def test_low_rank_model_is_smaller_close_and_round_trips(tmp_path):
    model = _low_rank_vit()
    x = torch.randn(4, *model.patch_embed.proj.weight.shape[1:2], *model.patch_embed.img_size)
    with torch.no_grad():
        before = model(x)
    n_before = sum(p.numel() for p in model.parameters())
    report = low_rank(model, energy=0.999)
    n_after = sum(p.numel() for p in model.parameters())
    assert all(row["factorized"] and row["rank"] <= 9 for row in report)
    assert isinstance(model.blocks[0].mlp.fc1, LowRankLinear)
    assert isinstance(model.head, nn.Linear) and isinstance(model.patch_embed.proj, nn.Conv2d)  # kept exact
    assert n_after < 0.6 * n_before
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max() < 0.05 * before.abs().max()

    path = vitkit.save(model, tmp_path / "lowrank.safetensors")
    loaded = vitkit.load(path).eval()
    assert isinstance(loaded.blocks[1].attn.qkv, LowRankLinear)
    with torch.no_grad():
        assert torch.equal(loaded(x), after)


def test_low_rank_bad_requests_fail_clearly():
    model = vitkit.create_model("vit_digits")
    with pytest.raises(
        ValueError,
        match=r"rank 999 is larger than the layers allow: blocks.0.attn.proj \(max 64\).* and 13 more",
    ):
        low_rank(model, rank=999)
    with pytest.raises(ValueError, match="exactly one"):
        low_rank(model, energy=0.9, rank=4)
    with pytest.raises(ValueError, match="no linear layer matches"):
        low_rank(model, rank=2, include=("decoder.*",))
    with pytest.raises(ValueError, match="rank 0 is not possible"):
        factorize_linear(nn.Linear(4, 4), 0)
    report = low_rank(model, energy=1.0)  # full rank would be larger: every layer stays dense
    assert not any(row["factorized"] for row in report) and not hasattr(model, "structure_edits")


def _zeroed(model: nn.Module, block: int, where: str, idx: list[int], width: int) -> None:
    """Zero the given heads (where='heads', width=head_dim) or MLP units (width=1) of a dense model."""
    mask = torch.ones(
        model.blocks[block].attn.num_heads * width
        if where == "heads"
        else model.blocks[block].mlp.fc1.out_features
    )
    for i in idx:
        mask[i * width : (i + 1) * width] = 0
    layer = model.blocks[block].attn.proj if where == "heads" else model.blocks[block].mlp.fc2
    layer.register_forward_pre_hook(lambda m, args: (args[0] * mask,))


def test_pruned_model_equals_the_dense_one_with_those_units_silenced(tmp_path):
    torch.manual_seed(0)
    model = vitkit.create_model("vit_mnist", depth=2, num_classes=10, qk_norm=True).eval()
    ref = vitkit.create_model("vit_mnist", depth=2, num_classes=10, qk_norm=True).eval()
    ref.load_state_dict(model.state_dict())
    hd = model.blocks[0].attn.head_dim
    prune_heads(model, {0: [1], 1: [0, 3]})
    prune_mlp(model, {1: [5, 6, 100]})
    _zeroed(ref, 0, "heads", [1], hd)
    _zeroed(ref, 1, "heads", [0, 3], hd)
    _zeroed(ref, 1, "mlp", [5, 6, 100], 1)
    attn = model.blocks[1].attn
    assert (
        attn.num_heads == 2
        and attn.qkv.weight.shape == (3 * 2 * hd, 128)
        and attn.proj.weight.shape == (128, 2 * hd)
    )
    assert model.blocks[1].mlp.fc1.weight.shape == (253, 128) and model.blocks[1].mlp.fc2.weight.shape == (
        128,
        253,
    )
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)
    loaded = vitkit.load(vitkit.save(model, tmp_path / "pruned.safetensors")).eval()
    assert loaded.blocks[0].attn.num_heads == 3 and loaded.blocks[1].mlp.fc1.out_features == 253
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_importance_pruning_keeps_a_head_per_block_and_bad_plans_fail():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_digits", depth=3)
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(2)]
    scores = unit_importance(model, batches)
    assert [s.shape for s in scores["heads"]] == [(4,)] * 3 and all((s > 0).all() for s in scores["heads"])
    assert all(p.grad is None for p in model.parameters())  # weights' gradients untouched
    removed = prune_by_importance(model, scores, head_fraction=1 / 3, mlp_fraction=0.25)
    assert sum(len(v) for v in removed["heads"].values()) == 4
    assert (
        all(b.attn.num_heads >= 1 for b in model.blocks) and sum(b.attn.num_heads for b in model.blocks) == 8
    )
    assert sum(b.mlp.fc1.out_features for b in model.blocks) == 3 * 128 - 96
    with pytest.raises(ValueError, match="pruning all 4 heads of block 0"):
        prune_heads(vitkit.create_model("vit_digits"), {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match=r"block 1 has 4 heads \(0..3\); cannot prune \[7\]"):
        prune_heads(vitkit.create_model("vit_digits"), {1: [7]})
    lr = vitkit.create_model("vit_digits")
    low_rank(lr, rank=4)
    with pytest.raises(ValueError, match="prune heads before factorising"):
        prune_heads(lr, {0: [0]})


def test_compress_command_prunes_fine_tunes_and_reports(tmp_path, capsys):
    tiny = dict(model="vit_digits", dataset="digits", batch_size=64, lr=2e-3, warmup_epochs=1, progress=False,
                threads=1, model_args={"depth": 2, "embed_dim": 32, "num_heads": 2})  # fmt: skip
    run = vitkit.train(**tiny, epochs=4, out_dir=str(tmp_path), name="run")["run_dir"]
    out = tmp_path / "pruned"
    argv = ["compress", run, "--method", "prune", "--heads", "0.25", "--mlp", "0.25", "--finetune-epochs", "1",
            "-o", str(out), "--threads", "2"]  # fmt: skip
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| compressed |" in printed and "timed on 2 thread(s): as asked" in printed
    report = json.loads((out / "report.json").read_text())
    # the fine-tuning trainer ran on the run's 1 thread; both models were timed on the asked 2 (one policy)
    assert report["threads"] == 2 and report["threads_reason"] == "as asked"
    original, compressed = report["rows"]
    assert compressed["params"] < original["params"] and compressed["gflops"] < original["gflops"]
    assert compressed["file_mb"] < original["file_mb"] and 0 <= compressed["top1"] <= 1
    assert sum(len(v) for v in report["details"]["heads"].values()) == 1  # a quarter of 2 blocks x 2 heads
    loaded = vitkit.load(out / "model.safetensors")
    assert [b.attn.num_heads for b in loaded.blocks].count(1) == 1
    assert sum(b.mlp.fc1.out_features for b in loaded.blocks) == 96
    assert (out / "metrics.jsonl").is_file()  # the fine-tune ran through the Trainer

    out8 = tmp_path / "int8"
    assert cli_main(["compress", run, "--method", "int8", "--calib-batches", "2", "-o", str(out8)]) == 0
    report8 = json.loads((out8 / "report.json").read_text())
    original, int8 = report8["rows"]
    assert (
        report8["threads"] >= 1 and report8["threads_reason"]
    )  # the machine's allowance (or OMP_NUM_THREADS), said
    assert int8["file_mb"] < original["file_mb"] / 2 and int8["gflops"] == original["gflops"]
    assert abs(int8["params"] - original["params"]) < 0.02 * original["params"]  # int8 weights are counted
    assert abs(int8["top1"] - original["top1"]) < 0.1
    assert quantized_modules(vitkit.load(out8 / "model.safetensors"))

    assert cli_main(["compress", run, "--method", "lowrank", "--rank", "999"]) == 2
    assert "rank 999 is larger than the layers allow" in capsys.readouterr().err


def test_token_merging_is_exact_on_duplicate_tokens_and_round_trips(tmp_path):
    torch.manual_seed(0)
    # without position embeddings, a constant image gives identical patch tokens: merging them with
    # size-weighted averages, proportional attention and size-weighted pooling changes nothing
    for pool in ("avg", "token"):
        model = vitkit.create_model(
            "vit_mnist", depth=3, num_classes=10, pos_embed="none", global_pool=pool
        ).eval()
        x = torch.full((2, 1, 28, 28), 0.3)
        with torch.no_grad():
            plain = model(x)
        seen = []
        model.blocks[2].register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0].shape[1]))
        apply_tome(model, 8)
        with torch.no_grad():
            merged = model(x)
        assert seen == [1 + 49 - 16]  # 8 pairs merged in each of the first two blocks
        torch.testing.assert_close(merged, plain, atol=1e-5, rtol=1e-5)

    model = vitkit.create_model("vit_mnist", depth=2, num_classes=10).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        plain = model(x)
        apply_tome(model, 0)
        torch.testing.assert_close(model(x), plain, atol=1e-6, rtol=1e-6)  # r=0 merges nothing
        apply_tome(model, 12)
        merged = model(x)
        assert not torch.allclose(merged, plain, atol=1e-3)
        loaded = vitkit.load(vitkit.save(model, tmp_path / "tome.safetensors")).eval()
        assert loaded.tome_r == 12 and torch.equal(loaded(x), merged)
        remove_tome(model)
        assert torch.equal(model(x), plain) and not getattr(model, "structure_edits", [])
    with pytest.raises(ValueError, match="non-negative integer"):
        apply_tome(model, -1)


def _conv_stem_vit() -> nn.Module:
    torch.manual_seed(0)
    return vitkit.create_model(
        "vit_mnist", depth=2, embed_dim=64, num_heads=2, num_classes=10, stem_channels=[16, 32]
    ).eval()


def test_int8_model_is_close_smaller_and_round_trips_bit_exactly(tmp_path):
    model = _conv_stem_vit()
    calib = [torch.randn(16, 1, 28, 28) for _ in range(2)]
    q = vitkit.create_model("vit_mnist", depth=2, embed_dim=64, num_heads=2, num_classes=10,
                            stem_channels=[16, 32]).eval()  # fmt: skip
    q.load_state_dict(model.state_dict())
    report = quantize_int8(q, calib)
    assert report["static"] == ["patch_embed"] and report["calib_images"] == 32
    # every block linear is int8, the head stays float, the conv stem and projection run int8 kernels
    assert len(report["dynamic"]) == 2 * 4 and not any(n.startswith("head") for n in report["dynamic"])
    names = quantized_modules(q)
    assert "patch_embed.stem.proj" in names and "blocks.1.mlp.fc2" in names and "head" not in names
    assert "patch_embed.stem.body.0" in names  # fused conv + BN + ReLU
    assert abs(parameter_count(q) - parameter_count(model)) < 0.01 * parameter_count(model)
    assert type(q.head) is nn.Linear
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        ref, out = model(x), q(x)
    # int8 error stays a small fraction of the logits' spread (stated tolerance: 10% of their std)
    assert (out - ref).abs().max() < 0.1 * ref.std()
    float_file = vitkit.save(model, tmp_path / "float.safetensors")
    int8_file = vitkit.save(q, tmp_path / "int8.safetensors")
    assert float_file.stat().st_size > 2.5 * int8_file.stat().st_size
    loaded = vitkit.load(int8_file)
    assert quantized_modules(loaded) == names
    with pytest.raises(ValueError, match="int8 model: PyTorch's quantized kernels run on the CPU only"):
        vitkit.load(int8_file, device="cuda")
    with torch.no_grad():
        assert torch.equal(loaded(x), out)


def test_int8_options_and_bad_requests():
    model = _conv_stem_vit()
    dyn = quantize_int8(model, static=False, keep_float=["head", "blocks.0.*"])
    expected = sorted(f"blocks.1.{n}" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    assert dyn["static"] == [] and sorted(dyn["dynamic"]) == expected
    assert type(model.patch_embed.proj) is nn.Conv2d and type(model.blocks[0].attn.qkv) is nn.Linear
    with pytest.raises(ValueError, match="static int8 needs calibration images"):
        quantize_int8(_conv_stem_vit())
    with pytest.raises(ValueError, match="nothing to quantize"):
        quantize_int8(_conv_stem_vit(), dynamic=False, static=False)


def test_quantized_state_survives_plain_tensors():
    from vitkit.weights.qstate import from_plain, is_plain, to_plain

    per_channel = torch.quantize_per_channel(torch.randn(4, 3), torch.rand(4) + 0.01, torch.zeros(4).long(),
                                             0, torch.qint8)  # fmt: skip
    state = {"w": per_channel, "t": torch.quantize_per_tensor(torch.randn(5), 0.1, 3, torch.quint8),
             "packed": (per_channel, None), "dtype": torch.qint8, "x": torch.ones(2)}  # fmt: skip
    plain = to_plain(state)
    assert is_plain(plain) and not is_plain(state)
    assert plain["w"].dtype == torch.int8 and plain["t.q_axis"].item() == -1 and "packed.1" not in plain
    back = from_plain(state, plain)
    for key in ("w", "t"):
        assert torch.equal(back[key].int_repr(), state[key].int_repr())
        assert torch.equal(back[key].dequantize(), state[key].dequantize())
    assert back["packed"][1] is None and back["dtype"] is torch.qint8 and torch.equal(back["x"], state["x"])
