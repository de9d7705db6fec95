"""Registry-wide checks (timm-style) and the uniform model API."""

from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.models import VisionTransformer


def _small(name: str) -> dict:
    """Overrides that shrink any registered model to a fast test size (depth 1, 4x4 patches)."""
    cfg = vitkit.model_config(name)
    if cfg["family"] == "resnet":
        return dict(depths=[1] * len(cfg["depths"]))
    patch = cfg["patch_size"]
    return dict(depth=1, img_size=patch * 4)


ALL_MODELS = vitkit.list_models()
CLASSIFIERS = [n for n in ALL_MODELS if vitkit.model_config(n)["family"] in ("vit", "resnet")]
OTHER_MODELS = [
    n for n in ALL_MODELS if n not in CLASSIFIERS
]  # MAE, BERT, seq2seq, DETR, Segmenter: own tests


def test_registry_covers_the_variant_table():
    for size in ("tiny", "small", "base", "large", "huge"):
        for patch in (32, 16, 14, 8):
            for img in (224, 384):
                assert f"vit_{size}_patch{patch}_{img}" in ALL_MODELS
    for size in ("tiny", "small", "base"):
        assert f"deit_{size}_patch16_224" in ALL_MODELS
        assert f"deit_{size}_distilled_patch16_224" in ALL_MODELS
    assert vitkit.list_models("deit_*_distilled_*") == sorted(n for n in ALL_MODELS if "distilled" in n)


@pytest.mark.parametrize("name", OTHER_MODELS)
def test_every_other_model_rebuilds_from_its_config(name):
    """What ``vitkit.load`` relies on: family + JSON config rebuild the same parameters."""
    import json

    with torch.device("meta"):  # shapes only: GPT-2 XL's 1.5B parameters cost no memory or init time
        model = vitkit.create_model(name)
        again = type(model)(**json.loads(json.dumps(model.config)))
    assert model.family == vitkit.model_config(name)["family"]
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in again.state_dict().items()
    }


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_model_builds_runs_and_gets_gradients(name):
    model = vitkit.create_model(name, **_small(name))
    cfg = model.config
    x = torch.randn(2, cfg["in_chans"], *cfg["img_size"])
    out = model(x)
    assert out.shape == (2, cfg["num_classes"])
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_mnist"])
def test_gradient_checkpointing_same_output_and_grads(name):
    model = vitkit.create_model(name, depth=2, drop_path_rate=0.0).train()
    cfg = model.config
    x = torch.randn(2, cfg["in_chans"], *cfg["img_size"])
    out = model(x)
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out2 = model(x)
    out2.sum().backward()
    torch.testing.assert_close(out, out2)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match="did you mean 'vit_tiny_patch16_224'"):
        vitkit.create_model("vit_tiny_patch16_22")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['embed_dims'\]"):
        vitkit.create_model("vit_tiny_patch16_224", embed_dims=3)


def test_wrong_input_is_named():
    model = vitkit.create_model("vit_mnist")
    with pytest.raises(ValueError, match="expected 1 input channels, got 3"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="input image size 32x32 does not match the model's 28x28"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        vitkit.create_model("vit_mnist", img_size=30)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, channels, height, width\)"):
        model(torch.randn(1, 28, 28))


def test_forward_head_pre_logits_and_reset_classifier():
    model = vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + 16, 192)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 192)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.config["num_classes"] == 7
    model.reset_classifier(0, global_pool="avg")
    assert model(x).shape == (2, 192)


def test_pooling_modes():
    x = torch.randn(2, 3, 32, 32)
    for pool in ("token", "avg"):
        m = vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8, global_pool=pool)
        assert m(x).shape == (2, 1000)
    m = vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8, global_pool="none",
                            num_classes=0)  # fmt: skip
    assert m(x).shape == (2, 17, 192)
    with pytest.raises(ValueError, match="global_pool"):
        vitkit.create_model("vit_tiny_patch16_224", global_pool="max")


def test_forward_intermediates():
    model = vitkit.create_model("vit_tiny_patch16_224", depth=4, img_size=64, reg_tokens=2).eval()
    x = torch.randn(2, 3, 64, 64)
    final, inter = model.forward_intermediates(x, indices=2)
    assert len(inter) == 2 and inter[0].shape == (2, 192, 4, 4)
    torch.testing.assert_close(final, model.forward_features(x))
    feats = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC", return_prefix_tokens=True,
                                        intermediates_only=True)  # fmt: skip
    (p0, pre0), (p3, pre3) = feats
    assert p0.shape == (2, 16, 192) and pre0.shape == (2, 3, 192)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[7])


def test_dynamic_img_size_and_set_input_size():
    model = vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=64, dynamic_img_size=True).eval()
    assert model(torch.randn(1, 3, 96, 48)).shape == (1, 1000)
    fixed = vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=64).eval()
    fixed.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 96, 96)
    expected = model(x)
    fixed.set_input_size(96)
    assert fixed.pos_embed.shape == (1, 1 + 36, 192)
    torch.testing.assert_close(fixed(x), expected)


def test_no_weight_decay_names_exist():
    model = vitkit.create_model("deit_tiny_distilled_patch16_224", depth=1)
    params = dict(model.named_parameters())
    assert {"pos_embed", "cls_token", "dist_token"} <= set(params) & model.no_weight_decay()


def test_distilled_heads():
    model = vitkit.create_model("deit_tiny_distilled_patch16_224", depth=1, img_size=32, num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    model.distilled_training = True
    cls_logits, dist_logits = model.train()(x)
    assert cls_logits.shape == dist_logits.shape == (2, 4)
    model.eval()
    feats = model.forward_features(x)
    expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
    torch.testing.assert_close(model(x), expected)


def test_sincos_position_embedding_model():
    model = vitkit.create_model("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=8, pos_embed="sincos",
                                no_embed_class=True)  # fmt: skip
    assert "pos_embed" not in dict(model.named_parameters())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_direct_construction_is_equivalent():
    a = vitkit.create_model("vit_mnist")
    b = VisionTransformer(**a.config)
    assert b.config == a.config


def test_conv_stem_keeps_the_token_grid_and_round_trips(tmp_path):
    plain = vitkit.create_model("vit_mnist")
    stem = vitkit.create_model("vit_mnist", stem_channels=(16, 32, 48))
    x = torch.randn(2, 1, 28, 28)
    assert plain.forward_features(x).shape == stem.forward_features(x).shape  # same tokens, same grid
    strides = [m.stride for m in stem.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(2, 2), (2, 2), (1, 1)] and stem.patch_embed.proj.kernel_size == (1, 1)
    stem(x).sum().backward()
    assert all(p.grad is not None for p in stem.parameters())
    from vitkit.models.vit import vit_flops

    assert vit_flops(stem) > vit_flops(plain)  # the stem's convolutions are counted
    stem.eval()
    vitkit.save(stem, tmp_path / "stem.safetensors")
    again = vitkit.load(tmp_path / "stem.safetensors").eval()
    torch.testing.assert_close(again(x), stem(x))  # BatchNorm statistics travel too


def test_conv_stem_strides_and_bad_strides():
    model = vitkit.create_model("vit_mnist", depth=1, stem_channels=(8, 16, 32), stem_strides=(1, 2, 2))
    convs = [m for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2)] and model.patch_embed.proj.kernel_size == (
        1,
        1,
    )
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="do not divide the patch size"):
        vitkit.create_model("vit_mnist", stem_channels=(8, 16), stem_strides=(2, 3))
    with pytest.raises(ValueError, match="one stride per stem stage"):
        vitkit.create_model("vit_mnist", stem_channels=(8, 16), stem_strides=(2,))
    with pytest.raises(ValueError, match="needs stem_channels"):
        vitkit.create_model("vit_mnist", stem_strides=(2,))


_RESET_CASES = {  # family -> (a small registered model, overrides, inputs)
    "vit": ("vit_mnist", dict(depth=1, distilled=True), lambda: torch.randn(2, 1, 28, 28)),
    "resnet": ("resnet_mnist", dict(depths=[1, 1, 1]), lambda: torch.randn(2, 1, 28, 28)),
    "bert": ("bert_tiny", dict(vocab_size=50, num_classes=3), lambda: torch.randint(1, 50, (2, 6))),
}


def test_every_family_with_reset_classifier_is_covered():
    from vitkit import registry

    have = {name for name, cls in registry._FAMILIES.items() if hasattr(cls, "reset_classifier")}
    assert have == set(_RESET_CASES)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("family", sorted(_RESET_CASES))
def test_reset_classifier_keeps_the_model_dtype(family, dtype):
    name, overrides, inputs = _RESET_CASES[family]
    model = vitkit.create_model(name, **overrides).to(dtype).eval()
    x = inputs()
    x = x.to(dtype) if x.is_floating_point() else x
    model.reset_classifier(5)
    heads = [model.get_classifier()] + ([model.head_dist] if getattr(model, "head_dist", None) else [])
    for head in heads:
        assert head.weight.dtype == dtype and head.weight.device == x.device
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5) and out.dtype == dtype and torch.isfinite(out.float()).all()
    assert model.config["num_classes"] == 5
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).dtype == dtype


def test_set_input_size_keeps_a_sincos_table_in_the_model_dtype():
    model = vitkit.create_model("vit_mnist", depth=1, pos_embed="sincos", no_embed_class=True).double().eval()
    model.set_input_size(32)
    assert model.pos_embed.dtype == torch.float64
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("global_pool", ["token", "avg", "map"])
def test_forward_pooled_equals_the_pre_logits_of_the_full_pass(global_pool):
    """``forward_pooled`` (CLIP's image tower: with class-token pooling the last block computes the class token
    only) gives ``forward_head(forward_features(x), pre_logits=True)`` and the same gradients."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5,
                              global_pool=global_pool, pre_norm=True, class_token=global_pool == "token")  # fmt: skip
    x, weights = torch.randn(3, 3, 16, 16), torch.randn(3, 32)
    want = model.forward_head(model.forward_features(x), pre_logits=True)
    (want * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    got = model.forward_pooled(x)
    (got * weights).sum().backward()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    for g, w in zip([p.grad for p in model.parameters() if p.grad is not None], grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


class _Call(torch.nn.Module):
    """A module whose forward is ``call(model, *inputs)`` (what torch.jit.trace records)."""

    def __init__(self, model, call):
        super().__init__()
        self.model, self.call = model, call

    def forward(self, *inputs):
        return self.call(self.model, *inputs)


def _traced_case(case: str):
    """(module, example inputs without padding, the same with padding) of a model that drops an unneeded mask."""
    ids = torch.randint(5, 90, (2, 8))
    if case == "bert":
        bert = vitkit.create_model("bert_tiny", vocab_size=100).eval()
        padded = ids.clone()
        padded[1, 5:] = bert.pad_token_id
        return _Call(bert, lambda m, x: m.forward_features(x)), (ids,), (padded,)
    if case == "seq2seq":
        seq = vitkit.create_model("transformer_tiny", vocab_size=100).eval()
        tgt = ids.clone()
        tgt[1, 5:] = seq.pad_id
        return _Call(seq, lambda m, s, t: m(s, t)), (ids, ids), (ids, tgt)
    clip = vitkit.create_model("clip_vit_tiny_patch4_32", text_args=dict(vocab_size=100, block_size=8)).eval()
    ids[:, -1] = 99  # the end-of-text token (the largest id) last; row 1 padded on the left
    mask = torch.ones_like(ids)
    mask[1, :3], ids[1, :3] = 0, 0
    return _Call(clip, lambda m, x, k: m.encode_text(x, k)), (ids, torch.ones_like(ids)), (ids, mask)


@pytest.mark.parametrize("case", ["bert", "seq2seq", "clip"])
def test_a_traced_model_keeps_the_masks_its_example_did_not_need(case):
    """Dropping a padding mask that masks nothing is a branch on values: torch.jit.trace must not record it (a
    model traced on unpadded ids would then ignore the padding of every later input)."""
    import warnings

    module, example, padded = _traced_case(case)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.testing.assert_close(traced(*padded), module(*padded), atol=1e-5, rtol=0)
