"""Low-rank factorisation: exact at full rank, energy-chosen ranks, smaller models that save and load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vitkit
from vitkit.compress import LowRankLinear, factorize_linear, low_rank, rank_for_energy


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
