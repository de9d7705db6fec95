"""Explanations: attention extraction leaves outputs alone, rollout math, and rollout finds what decides the class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main as cli_main
from vitkit.explain import AttentionRecorder, attention_maps, attention_rollout, explain, gradient_rollout

GRID, PATCH = 4, 4  # 16x16 images, 4x4 patches


def tiny_vit(**kw) -> torch.nn.Module:
    args = dict(img_size=16, patch_size=PATCH, in_chans=1, num_classes=2, embed_dim=32, depth=2, num_heads=2,
                mlp_ratio=2.0)  # fmt: skip
    return vitkit.create_model("vit_digits", **(args | kw))


def test_recording_leaves_logits_bit_identical():
    torch.manual_seed(0)
    model = tiny_vit(depth=3, qk_norm=True, reg_tokens=2).eval()
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        plain = model(x)
    logits, maps = attention_maps(model, x)
    assert torch.equal(logits, plain)
    assert len(maps) == 3 and maps[0].shape == (5, 2, 3 + GRID * GRID, 3 + GRID * GRID)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(5, 2, 19))
    with torch.no_grad():
        assert torch.equal(model(x), plain)  # hooks removed on exit

    with AttentionRecorder(model, mode="grad") as rec:
        eager = model(x)
        eager[:, 1].sum().backward()
    torch.testing.assert_close(eager.detach(), plain, atol=1e-5, rtol=1e-5)
    for hooked, kept in zip(maps, rec.maps, strict=True):
        torch.testing.assert_close(kept.detach(), hooked, atol=1e-6, rtol=1e-5)
        assert kept.grad is not None and kept.grad.abs().sum() > 0
    assert "forward" not in model.blocks[0].attn.__dict__  # the class's fused forward is back


def test_rollout_of_known_matrices():
    L = 5
    eye = torch.eye(L).expand(1, 2, L, L)
    torch.testing.assert_close(attention_rollout([eye, eye, eye]), torch.eye(L)[None])
    uniform = torch.full((1, 2, L, L), 1.0 / L)
    one = 0.5 * uniform[0, 0] + 0.5 * torch.eye(L)
    torch.testing.assert_close(attention_rollout([uniform, uniform])[0], one @ one)
    # head fusion: max/min pick per-entry extremes before renormalisation
    a = torch.softmax(torch.randn(1, 3, L, L), -1)
    fused = a.amax(1)[0]
    expect = 0.5 * fused + 0.5 * torch.eye(L)
    torch.testing.assert_close(attention_rollout([a], "max")[0], expect / expect.sum(-1, keepdim=True))
    # gradient rollout: R = I + (g*A)^+ averaged over heads
    g = torch.randn(1, 3, L, L)
    torch.testing.assert_close(gradient_rollout([a], [g])[0], torch.eye(L) + (g * a).clamp_min(0).mean(1)[0])


def test_bad_arguments_fail_clearly():
    maps = [torch.softmax(torch.randn(1, 2, 5, 5), -1)]
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(maps, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout(maps, discard_ratio=1.0)
    with pytest.raises(ValueError, match="unknown method"):
        explain(tiny_vit(), torch.randn(1, 1, 16, 16), method="lrp")
    with pytest.raises(ValueError, match="outside the model's 2 classes"):
        explain(tiny_vit(), torch.randn(1, 1, 16, 16), method="grad-rollout", target=7)
    with pytest.raises(ValueError, match="no vitkit Attention layers"):
        AttentionRecorder(torch.nn.Linear(2, 2))


def one_patch_images(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images where one random patch holds the class: horizontal (0) or vertical (1) stripes."""
    x = torch.rand(n, 1, 16, 16, generator=gen) * 0.3
    y = torch.randint(0, 2, (n,), generator=gen)
    where = torch.randint(0, GRID * GRID, (n,), generator=gen)
    stripes = torch.zeros(2, PATCH, PATCH)
    stripes[0, ::2, :] = 1.0
    stripes[1, :, ::2] = 1.0
    for i in range(n):
        r, c = divmod(int(where[i]), GRID)
        x[i, 0, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = stripes[y[i]]
    return (x - 0.5) / 0.5, y, where


@pytest.fixture(scope="module")
def one_patch_model():
    """A tiny class-token ViT trained (a few seconds) on images decided by one patch."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = tiny_vit()
    x, y, _ = one_patch_images(2048, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    for _epoch in range(8):
        for i in torch.randperm(len(x), generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.mark.parametrize("method", ["rollout", "grad-rollout"])
def test_rollout_points_at_the_deciding_patch(one_patch_model, method):
    x, y, where = one_patch_images(256, torch.Generator().manual_seed(1))
    out = explain(one_patch_model, x, method=method)
    accuracy = (out["logits"].argmax(-1) == y).float().mean().item()
    assert accuracy >= 0.95, f"the model did not learn the task ({accuracy:.3f})"
    assert out["relevance"].shape == (256, GRID, GRID) and out["layers"].shape == (256, 2, GRID, GRID)
    hit = (out["relevance"].flatten(1).argmax(-1) == where).float().mean().item()
    assert hit >= 0.9, f"{method}: maximum on the deciding patch for only {hit:.1%} of images"


def test_explain_cli_writes_png_and_npy(one_patch_model, tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    vitkit.save(one_patch_model, path, data_config={"classes": ["horizontal", "vertical"], "mean": [0.5],
                                                    "std": [0.5], "img_size": [16, 16], "in_chans": 1})  # fmt: skip
    x, _, _ = one_patch_images(1, torch.Generator().manual_seed(2))
    img = tmp_path / "sample.png"
    Image.fromarray(((x[0, 0] * 0.5 + 0.5) * 255).round().byte().numpy()).resize((64, 64)).save(img)
    out = tmp_path / "explained.png"
    assert cli_main(["explain", str(path), str(img), "-o", str(out), "--method", "grad-rollout"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert Image.open(out).size[0] > 200
    relevance = np.load(out.with_suffix(".npy"))
    assert relevance.shape == (16, 16) and 0 <= relevance.min() and relevance.max() <= 1.0 + 1e-6
    assert cli_main(["explain", str(path), str(tmp_path / "missing.png"), "-o", str(out)]) == 2


class _MaskedAttention(torch.nn.Module):
    def __init__(self, mask):
        super().__init__()
        from vitkit.layers import Attention

        self.attn, self.mask = Attention(16, num_heads=2), mask

    def forward(self, x):
        return self.attn(x, self.mask)


@pytest.mark.parametrize("mask_kind", ["bool", "-inf"])
def test_recorder_reports_the_weights_the_forward_used_with_fully_masked_rows(mask_kind):
    """A query left no key: the fused forward's output there is zero, and so are the recorded weights (no NaN, no
    mean of the values), in both modes; the recorded weights reproduce the forward's output."""
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[2] = False
    mask[:, 4] = False
    if mask_kind == "-inf":
        mask = torch.zeros(5, 5).masked_fill(~mask, float("-inf"))
    model = _MaskedAttention(mask).eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        fused = model(x)
    out, (hooked,) = attention_maps(model, x)
    assert torch.equal(out, fused)
    with AttentionRecorder(model, mode="grad") as rec:
        eager = model(x)
    torch.testing.assert_close(eager.detach(), fused, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rec.maps[0].detach(), hooked, atol=1e-6, rtol=1e-5)
    assert (
        torch.isfinite(hooked).all() and hooked[:, :, 2].abs().max() == 0 and hooked[..., 4].abs().max() == 0
    )
    a = model.attn
    v = a.qkv(x).reshape(3, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)[2]
    rebuilt = a.proj((hooked @ v).transpose(1, 2).reshape(3, 5, 16))
    torch.testing.assert_close(rebuilt, fused, atol=1e-6, rtol=1e-5)


def test_recorder_sees_the_cached_keys_of_incremental_decoding():
    from vitkit.models.seq2seq import greedy_decode

    model = vitkit.create_model("transformer_tiny", drop_rate=0.0).eval()
    src = torch.randint(4, 64, (2, 7))
    with AttentionRecorder(model) as hooked, torch.no_grad():
        greedy_decode(model, src, max_len=4)
    with AttentionRecorder(model, mode="grad") as kept, torch.no_grad():
        greedy_decode(model, src, max_len=4)
    assert len(hooked.maps) == len(kept.maps) > 0
    for h, k in zip(hooked.maps, kept.maps, strict=True):
        assert h.shape == k.shape  # a decoding step's query attends to all the cached keys
        torch.testing.assert_close(h, k, atol=1e-6, rtol=1e-5)
    assert any(m.shape[-2] == 1 and m.shape[-1] > 1 for m in hooked.maps)
