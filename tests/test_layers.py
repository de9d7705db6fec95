"""Layer behaviour: attention paths and masks, position embeddings, patch embedding, blocks."""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.layers import (
    Attention,
    CrossAttention,
    DecoderBlock,
    DropPath,
    EncoderBlock,
    Mlp,
    PatchEmbed,
    resample_abs_pos_embed,
    scaled_dot_product,
    sincos_1d,
    sincos_2d,
)


def _qkv(B=2, H=3, Lq=5, Lk=7, d=8):
    return torch.randn(B, H, Lq, d), torch.randn(B, H, Lk, d), torch.randn(B, H, Lk, d)


@pytest.mark.parametrize("case", ["none", "bool", "float", "padding", "causal", "causal+padding"])
def test_fused_and_eager_agree(case):
    q, k, v = _qkv(Lq=6, Lk=6)
    kw = {}
    if case == "bool":
        kw["attn_mask"] = torch.rand(6, 6) > 0.3
        kw["attn_mask"][:, 0] = True  # no fully masked row
    elif case == "float":
        kw["attn_mask"] = torch.randn(2, 1, 6, 6)
    elif "padding" in case:
        kw["key_padding_mask"] = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    if "causal" in case:
        kw["is_causal"] = True
    fused, _ = scaled_dot_product(q, k, v, fused=True, **kw)
    eager, weights = scaled_dot_product(q, k, v, need_weights=True, **kw)
    assert weights is not None
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


def test_weights_sum_to_one_and_masked_keys_get_zero():
    q, k, v = _qkv()
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 5:] = True
    _, w = scaled_dot_product(q, k, v, key_padding_mask=pad, need_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
    assert w[0, :, :, 5:].abs().max() == 0
    assert (w[1] > 0).all()
    bool_mask = torch.ones(5, 7, dtype=torch.bool)
    bool_mask[:, 2] = False
    _, w = scaled_dot_product(q, k, v, attn_mask=bool_mask, need_weights=True)
    assert w[..., 2].abs().max() == 0


def test_causal_never_looks_ahead():
    attn = Attention(16, num_heads=4).eval()
    x = torch.randn(1, 6, 16, requires_grad=True)
    out = attn(x, is_causal=True)
    # the gradient of output position 2 w.r.t. inputs after position 2 must be exactly zero
    out[0, 2].sum().backward()
    assert x.grad[0, 3:].abs().max() == 0
    assert x.grad[0, :3].abs().max() > 0
    _, w = attn(x, is_causal=True, need_weights=True)
    assert torch.triu(w[0, 0], diagonal=1).abs().max() == 0


def test_attention_module_eager_equals_fused_and_returns_weights():
    attn = Attention(32, num_heads=4, qk_norm=True).eval()
    x = torch.randn(3, 10, 32)
    fused = attn(x)
    out, w = attn(x, need_weights=True)
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-5)
    assert w.shape == (3, 4, 10, 10)
    attn.fused_attn = False
    torch.testing.assert_close(attn(x), fused, atol=1e-5, rtol=1e-5)


def test_cross_attention_masks_memory():
    xattn = CrossAttention(16, num_heads=2, kv_dim=24).eval()
    x, mem = torch.randn(2, 4, 16), torch.randn(2, 9, 24)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[:, 6:] = True
    out = xattn(x, mem, key_padding_mask=pad)
    mem2 = mem.clone()
    mem2[:, 6:] = 100.0  # changing padded memory must not change the output
    torch.testing.assert_close(out, xattn(x, mem2, key_padding_mask=pad))
    _, w = xattn(x, mem, key_padding_mask=pad, need_weights=True)
    assert w.shape == (2, 2, 4, 9) and w[..., 6:].abs().max() == 0


def test_bad_masks_are_named():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        scaled_dot_product(q, k, v, key_padding_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        scaled_dot_product(q, k, v, key_padding_mask=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Attention(10, num_heads=3)


def test_sincos_1d_matches_the_paper_formula():
    pe = sincos_1d(50, 16)
    pos, i = 7, 3
    assert math.isclose(pe[pos, 2 * i].item(), math.sin(pos / 10000 ** (2 * i / 16)), abs_tol=1e-6)
    assert math.isclose(pe[pos, 2 * i + 1].item(), math.cos(pos / 10000 ** (2 * i / 16)), abs_tol=1e-6)


def test_sincos_2d_shape_and_rows():
    pe = sincos_2d((3, 4), 16)
    assert pe.shape == (12, 16)
    # tokens in the same grid row share the row half of the embedding
    assert torch.equal(pe[0, :8], pe[3, :8]) and not torch.equal(pe[0, 8:], pe[3, 8:])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d((2, 2), 10)


def test_resample_keeps_prefix_and_identity():
    table = torch.randn(1, 2 + 16, 8)
    assert resample_abs_pos_embed(table, (4, 4), num_prefix_tokens=2) is table
    out = resample_abs_pos_embed(table, (6, 5), num_prefix_tokens=2)
    assert out.shape == (1, 2 + 30, 8)
    assert torch.equal(out[:, :2], table[:, :2])


def test_patch_embed_errors_name_the_problem():
    pe = PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=16)
    assert pe(torch.randn(2, 3, 32, 32)).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        pe(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="does not match the model's 32x32"):
        pe(torch.randn(2, 3, 40, 40))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        PatchEmbed(img_size=30, patch_size=8)
    dyn = PatchEmbed(img_size=32, patch_size=8, embed_dim=16, strict_img_size=False)
    assert dyn(torch.randn(1, 3, 48, 16)).shape == (1, 12, 16)
    with pytest.raises(ValueError, match="not divisible"):
        dyn(torch.randn(1, 3, 33, 32))


def test_drop_path_is_identity_in_eval_and_drops_samples_in_train():
    dp = DropPath(0.5)
    x = torch.ones(1000, 4)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    kept = (y[:, 0] > 0).float().mean().item()
    assert 0.4 < kept < 0.6 and set(y.unique().tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_block_shapes_and_padding(norm_first):
    blk = EncoderBlock(16, 4, init_values=1e-3, norm_first=norm_first).eval()
    x = torch.randn(2, 5, 16)
    assert blk(x).shape == x.shape
    pad = torch.tensor([[False] * 3 + [True] * 2] * 2)
    x2 = x.clone()
    x2[:, 3:] = 50.0  # real tokens must ignore padded ones
    torch.testing.assert_close(blk(x, key_padding_mask=pad)[:, :3], blk(x2, key_padding_mask=pad)[:, :3])


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_block_is_causal(norm_first):
    blk = DecoderBlock(16, 2, memory_dim=12, norm_first=norm_first).eval()
    tgt, mem = torch.randn(1, 6, 16), torch.randn(1, 4, 12)
    out = blk(tgt, mem)
    tgt2 = tgt.clone()
    tgt2[:, 4:] = torch.randn(1, 2, 16)  # changing future tokens leaves earlier outputs unchanged
    torch.testing.assert_close(out[:, :4], blk(tgt2, mem)[:, :4])
    assert not torch.allclose(out[:, 4:], blk(tgt2, mem)[:, 4:])


def test_mlp_rejects_unknown_activation():
    assert Mlp(4, 8, act_layer="gelu_tanh")(torch.randn(2, 4)).shape == (2, 4)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Mlp(4, 8, act_layer="swish")


def _mask_case(case, B=2, Lq=6, Lk=6):
    """Keyword masks for scaled_dot_product; every case with 'dead' leaves some query no key at all."""
    kw = {}
    if "bool" in case:
        m = torch.rand(Lq, Lk) > 0.4
        m[:, 0] = True
        if "dead" in case:
            m[1] = False
        kw["attn_mask"] = m
    if "float" in case:
        m = torch.randn(B, 1, Lq, Lk)
        if "inf" in case:
            m[:, :, :, 2] = float("-inf")  # a partly masked column...
        if "dead" in case:
            m[0, 0, 3] = float("-inf")  # ...and one fully masked row
        kw["attn_mask"] = m
    if "padding" in case:
        pad = torch.zeros(B, Lk, dtype=torch.bool)
        pad[0, -2:] = True
        if "dead" in case:
            pad[1] = True  # a sequence that is all padding
        kw["key_padding_mask"] = pad
    if "causal" in case:
        kw["is_causal"] = True
    return kw


ATTN_CASES = [
    "none", "bool", "bool-dead", "float", "float-inf", "float-inf-dead", "padding", "padding-dead", "causal",
    "causal+padding", "causal+padding-dead", "bool+padding", "bool+padding-dead", "float-inf+causal",
    "float-inf-dead+padding", "bool-dead+causal+padding",
]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 6), (4, 7), (7, 4)])
@pytest.mark.parametrize("case", ATTN_CASES)
def test_fused_and_eager_agree_for_every_mask(case, shape, dtype):
    Lq, Lk = shape
    q, k, v = (t.to(dtype) for t in _qkv(Lq=Lq, Lk=Lk))
    kw = _mask_case(case, Lq=Lq, Lk=Lk)
    if "float" in case:
        kw["attn_mask"] = kw["attn_mask"].to(dtype)
    q.requires_grad_(True)
    fused, _ = scaled_dot_product(q, k, v, fused=True, **kw)
    eager, weights = scaled_dot_product(q, k, v, need_weights=True, **kw)
    plain, _ = scaled_dot_product(q, k, v, fused=False, **kw)
    assert torch.isfinite(fused).all() and torch.isfinite(eager).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(fused, eager, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(plain, eager, atol=0, rtol=0)
    torch.testing.assert_close(weights @ v, eager, atol=1e-6, rtol=1e-5)  # the weights the output used
    dead = weights.sum(-1) == 0  # queries that see no key: zero output, rows sum to 1 otherwise
    torch.testing.assert_close(weights.sum(-1)[~dead], torch.ones_like(weights.sum(-1)[~dead]))
    assert (fused * dead[..., None]).abs().max() == 0
    if "dead" in case or Lq > Lk and "causal" in case:
        assert dead.any()
    (grad,) = torch.autograd.grad((fused + eager).sum(), q)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("mask", ["bool", "-inf"])
def test_fully_masked_rows_give_what_sdpa_gives(mask):
    """On this torch, SDPA returns zeros for a query whose boolean / -inf mask row is all masked: so do both paths."""
    import torch.nn.functional as F

    q, k, v = _qkv(Lq=3, Lk=4)
    m = torch.ones(3, 4, dtype=torch.bool)
    m[1] = False
    if mask == "-inf":
        m = torch.zeros(3, 4).masked_fill(~m, float("-inf"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert ref[:, :, 1].abs().max() == 0
    for fused in (True, False):
        out, _ = scaled_dot_product(q, k, v, attn_mask=m, fused=fused)
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    layer = Attention(12, num_heads=3).eval()
    x = torch.randn(2, 4, 12)
    m4 = torch.ones(4, 4, dtype=torch.bool)
    m4[2] = False
    a = layer(x, attn_mask=m4)
    b, w = layer(x, attn_mask=m4, need_weights=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)  # need_weights no longer changes the output
    assert w[:, :, 2].abs().max() == 0


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("case", ["plain", "causal", "causal+padding", "padding", "rope", "qk_norm"])
def test_a_block_at_one_position_per_row_is_forward_there_with_the_same_gradients(norm_first, case):
    """``EncoderBlock(..., at=index)`` (the last block of a model pooled at one token) gives the rows of ``forward`` at
    the chosen positions, and the same gradients for the input and every parameter."""
    from vitkit.layers.rope import RotaryEmbedding

    torch.manual_seed(0)
    B, L, C = 3, 7, 16
    block = EncoderBlock(C, 4, norm_first=norm_first, qk_norm=case == "qk_norm", init_values=0.5)
    x = torch.randn(B, L, C, requires_grad=True)
    index = torch.tensor([6, 0, 3])
    is_causal = case.startswith("causal") or case == "rope"
    padding = None
    if "padding" in case:
        padding = torch.zeros(B, L, dtype=torch.bool)
        # left padding in row 0, padding after the chosen token in row 2
        padding[0, :2] = padding[2, 5:] = True
    rope = RotaryEmbedding(C // 4, L)(torch.arange(L)) if case == "rope" else None
    weights = torch.randn(B, 1, C)

    full = block(x, None, padding, is_causal, None, rope)[torch.arange(B), index][:, None]
    (full * weights).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad()
    at = block(x, None, padding, is_causal, None, rope, at=index)
    (at * weights).sum().backward()
    assert at.shape == (B, 1, C)
    torch.testing.assert_close(at, full, atol=1e-6, rtol=1e-5)
    for got, want in zip([x.grad] + [p.grad for p in block.parameters()], grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="at= takes no attn_mask"):
        block.attn(x, torch.ones(L, L, dtype=torch.bool), at=index)
