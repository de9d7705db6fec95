"""Same weights in, same logits out: vitkit against timm, HuggingFace and JAX-layout checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit.layers import resample_abs_pos_embed

# (vitkit name, overrides shared by both libraries, timm-only extra args, image size)
TIMM_CASES = [
    ("vit_tiny_patch16_224", dict(depth=2), {}, 224),
    ("vit_small_patch32_224", dict(depth=2, global_pool="avg"), {}, 224),
    ("deit_tiny_distilled_patch16_224", dict(depth=2), {}, 224),
    ("vit_tiny_patch16_224", dict(depth=2, reg_tokens=4, no_embed_class=True), {}, 224),
    ("vit_tiny_patch16_224", dict(depth=2, qk_norm=True, init_values=1e-2, qkv_bias=False), {}, 224),
    (
        "vit_tiny_patch16_224",
        dict(
            depth=3,
            img_size=32,
            patch_size=4,
            in_chans=1,
            num_classes=10,
            embed_dim=64,
            num_heads=4,
            mlp_ratio=2.0,
        ),
        {},
        32,
    ),  # fmt: skip
]


def _timm_model(timm, name, overrides):
    timm_name = name
    if "distilled" in name:
        return timm.create_model(timm_name, pretrained=False, **overrides)
    return timm.create_model(timm_name, pretrained=False, **overrides)


def _randomize(model):
    """Give every parameter non-trivial values (LayerNorm weights, biases, tokens) so the check is strict."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.mark.parametrize("name,overrides,_extra,size", TIMM_CASES)
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_parity(timm, tmp_path, name, overrides, _extra, size, fmt):
    ref = _randomize(_timm_model(timm, name, overrides))
    path = tmp_path / f"timm.{fmt}"
    if fmt == "pth":
        torch.save(ref.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    model = vitkit.create_model(name, pretrained=str(path), **overrides).eval()
    x = torch.randn(2, overrides.get("in_chans", 3), size, size)
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff <= 1e-5, f"max abs logit diff {diff}"


def test_timm_parity_full_size_vit_base(timm, tmp_path):
    ref = _randomize(timm.create_model("vit_base_patch16_224", pretrained=False))
    path = tmp_path / "vit_b16.pth"
    torch.save(ref.state_dict(), path)
    model = vitkit.create_model("vit_base_patch16_224", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff <= 1e-4, f"max abs logit diff {diff}"


def test_load_at_other_image_size_matches_timm_resample(timm, tmp_path):
    ref = _randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2))
    path = tmp_path / "ref.pth"
    torch.save(ref.state_dict(), path)
    model = vitkit.create_model("vit_tiny_patch16_224", pretrained=str(path), depth=2, img_size=160).eval()
    from timm.layers import resample_abs_pos_embed as timm_resample

    expected = timm_resample(ref.pos_embed.detach(), new_size=(10, 10), num_prefix_tokens=1)
    assert torch.allclose(model.pos_embed.detach(), expected, atol=1e-6)
    # the same model built by timm at 160 and loaded with timm's own resampling gives the same logits
    ref160 = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=160).eval()
    sd = dict(ref.state_dict())
    sd["pos_embed"] = expected
    ref160.load_state_dict(sd)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert (model(x) - ref160(x)).abs().max().item() <= 1e-5


def test_vitkit_resample_equals_timm(timm):
    from timm.layers import resample_abs_pos_embed as timm_resample

    table = torch.randn(1, 1 + 14 * 14, 32)
    for new in [(7, 7), (20, 20), (10, 16)]:
        ours = resample_abs_pos_embed(table, new, num_prefix_tokens=1)
        theirs = timm_resample(table, new_size=new, num_prefix_tokens=1)
        assert torch.allclose(ours, theirs, atol=1e-6)


# ------------------------------------------------------------------ HuggingFace
HF_VIT_CASES = [
    dict(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768, image_size=224,
         patch_size=16, num_labels=7),
    dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, image_size=32,
         patch_size=4, num_channels=1, num_labels=10, qkv_bias=False),
]  # fmt: skip


def _vitkit_kwargs_from_hf(cfg: dict) -> dict:
    return dict(
        embed_dim=cfg["hidden_size"], depth=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
        mlp_ratio=cfg["intermediate_size"] / cfg["hidden_size"], img_size=cfg["image_size"],
        patch_size=cfg["patch_size"], in_chans=cfg.get("num_channels", 3), num_classes=cfg["num_labels"],
        qkv_bias=cfg.get("qkv_bias", True),
    )  # fmt: skip


@pytest.mark.parametrize("cfg", HF_VIT_CASES)
@pytest.mark.parametrize("as_dir", [True, False])
def test_hf_vit_parity(transformers, tmp_path, cfg, as_dir):
    from transformers import ViTConfig, ViTForImageClassification

    ref = _randomize(ViTForImageClassification(ViTConfig(**cfg)))
    if as_dir:
        ref.save_pretrained(tmp_path / "hf")
        source = str(tmp_path / "hf")
    else:
        source = tmp_path / "hf.bin"
        torch.save(ref.state_dict(), source)
        source = str(source)
    model = vitkit.create_model("vit_tiny_patch16_224", **_vitkit_kwargs_from_hf(cfg))
    if not as_dir:  # a bare state dict carries no config: use HF's eps explicitly
        model = vitkit.create_model("vit_tiny_patch16_224", norm_eps=1e-12, **_vitkit_kwargs_from_hf(cfg))
    vitkit.load_pretrained(model, source)
    model.eval()
    x = torch.randn(2, cfg.get("num_channels", 3), cfg["image_size"], cfg["image_size"])
    with torch.no_grad():
        diff = (model(x) - ref(pixel_values=x).logits).abs().max().item()
    assert diff <= 1e-5, f"max abs logit diff {diff}"


def test_hf_deit_distilled_parity(transformers, tmp_path):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    cfg = dict(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
               image_size=224, patch_size=16, num_labels=5)  # fmt: skip
    ref = _randomize(DeiTForImageClassificationWithTeacher(DeiTConfig(**cfg)))
    ref.save_pretrained(tmp_path / "deit")
    model = vitkit.create_model("deit_tiny_distilled_patch16_224", depth=2, num_classes=5)
    vitkit.load_pretrained(model, tmp_path / "deit")
    model.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - ref(pixel_values=x).logits).abs().max().item()
    assert diff <= 1e-5, f"max abs logit diff {diff}"


# ------------------------------------------------------------------ JAX .npz (written here from a timm model)
def timm_to_jax_npz(state: dict[str, torch.Tensor], num_heads: int, path) -> None:
    """The original vit_jax layout, written independently of vitkit's reader."""
    a = {k: v.detach().numpy() for k, v in state.items()}
    D = a["cls_token"].shape[-1]
    hd = D // num_heads
    out = {
        "embedding/kernel": a["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": a["patch_embed.proj.bias"],
        "cls": a["cls_token"],
        "Transformer/posembed_input/pos_embedding": a["pos_embed"],
        "Transformer/encoder_norm/scale": a["norm.weight"],
        "Transformer/encoder_norm/bias": a["norm.bias"],
        "head/kernel": a["head.weight"].T,
        "head/bias": a["head.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in a if k.startswith("blocks."))
    for i in range(depth):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = a[b + "norm1.weight"], a[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = a[b + "norm2.weight"], a[b + "norm2.bias"]
        w, bias = a[b + "attn.qkv.weight"], a[b + "attn.qkv.bias"]
        for j, part in enumerate(("query", "key", "value")):
            out[p + f"MultiHeadDotProductAttention_1/{part}/kernel"] = w[j * D : (j + 1) * D].T.reshape(
                D, num_heads, hd
            )
            out[p + f"MultiHeadDotProductAttention_1/{part}/bias"] = bias[j * D : (j + 1) * D].reshape(
                num_heads, hd
            )
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = a[b + "attn.proj.weight"].T.reshape(
            num_heads, hd, D
        )
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = a[b + "attn.proj.bias"]
        out[p + "MlpBlock_3/Dense_0/kernel"] = a[b + "mlp.fc1.weight"].T
        out[p + "MlpBlock_3/Dense_0/bias"] = a[b + "mlp.fc1.bias"]
        out[p + "MlpBlock_3/Dense_1/kernel"] = a[b + "mlp.fc2.weight"].T
        out[p + "MlpBlock_3/Dense_1/bias"] = a[b + "mlp.fc2.bias"]
    np.savez(path, **out)


@pytest.mark.parametrize("img_size", [224, 192])
def test_jax_npz_parity(timm, tmp_path, img_size):
    ref = _randomize(timm.create_model("vit_small_patch16_224", pretrained=False, depth=2, num_classes=11))
    timm_to_jax_npz(ref.state_dict(), num_heads=6, path=tmp_path / "vit.npz")
    model = vitkit.create_model(
        "vit_small_patch16_224",
        depth=2,
        num_classes=11,
        img_size=img_size,
        pretrained=str(tmp_path / "vit.npz"),
    ).eval()
    if img_size != 224:  # compare with timm's own resampling of the same table
        ref.set_input_size(img_size=img_size)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff <= 1e-5, f"max abs logit diff {diff}"
