"""Constructors refuse bad arguments by name; degenerate but valid settings give finite answers."""

from __future__ import annotations

import math

import pytest
import torch

import vitkit
from vitkit.detection import HungarianMatcher, SetCriterion
from vitkit.layers import DropPath
from vitkit.models.bert import MaskedLanguageModel

# --------------------------------------------------------------------------- MAE with nothing masked


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mae_with_mask_ratio_zero_gives_the_loss_over_all_patches(norm_pix_loss):
    model = vitkit.create_model("mae_vit_digits", mask_ratio=0.0, norm_pix_loss=norm_pix_loss).eval()
    images = torch.randn(3, 1, 8, 8)
    loss, pred, mask = model(images)
    assert mask.sum() == 0 and torch.isfinite(loss)
    expected = ((pred.float() - model.target(images)) ** 2).mean()  # every patch counts
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # a forward-time ratio of 0 on a model built with 0.75 too
    other = vitkit.create_model("mae_vit_digits").eval()
    loss, _, mask = other(images, mask_ratio=0.0)
    assert mask.sum() == 0 and torch.isfinite(loss)


def test_mae_with_one_value_patches_is_finite():
    """norm_pix_loss over a patch of one pixel: its variance is 0 (not NaN from an unbiased estimate of n=1)."""
    model = vitkit.create_model("mae_vit_digits", encoder_args={"patch_size": 1, "img_size": 4}, decoder_dim=16,
                                decoder_heads=2).eval()  # fmt: skip
    loss, pred, mask = model(torch.randn(2, 1, 4, 4))
    assert (
        torch.isfinite(loss)
        and torch.isfinite(model.reconstruct(torch.randn(2, 1, 4, 4), pred, mask)[1]).all()
    )


def test_mae_refuses_a_ratio_that_hides_every_patch():
    with pytest.raises(ValueError, match=r"MaskedAutoencoder: mask_ratio must be in \[0, 1\), got 1.0"):
        vitkit.create_model("mae_vit_digits", mask_ratio=1.0)
    with pytest.raises(ValueError, match="hides all 16 patches"):
        vitkit.create_model("mae_vit_digits", mask_ratio=0.97)  # int(16 * 0.03) = 0 kept


# --------------------------------------------------------------------------- constructors name the bad argument

BAD_ARGS = [
    ("vit_mnist", {"depth": -1}, "VisionTransformer: depth must be >= 0"),
    ("vit_mnist", {"embed_dim": 0}, "VisionTransformer: embed_dim must be > 0"),
    (
        "vit_mnist",
        {"num_heads": 5},
        r"VisionTransformer: embed_dim \(\d+\) must be divisible by num_heads \(5\)",
    ),
    ("vit_mnist", {"mlp_ratio": 0}, "VisionTransformer: mlp_ratio must be > 0"),
    ("vit_mnist", {"drop_path_rate": 1.0}, r"VisionTransformer: drop_path_rate must be in \[0, 1\)"),
    ("vit_mnist", {"attn_drop_rate": -0.1}, r"VisionTransformer: attn_drop_rate must be in \[0, 1\)"),
    ("vit_mnist", {"num_classes": -2}, "VisionTransformer: num_classes must be >= 0"),
    ("vit_mnist", {"patch_size": 0}, "VisionTransformer: patch_size must be > 0"),
    ("vit_mnist", {"img_size": (28, 0)}, r"VisionTransformer: img_size\[1\] must be > 0"),
    ("vit_mnist", {"depth": 1.5}, "VisionTransformer: depth must be a whole number"),
    ("vit_mnist", {"drop_rate": float("nan")}, "VisionTransformer: drop_rate must be a number"),
    ("mae_vit_digits", {"decoder_heads": 3}, r"MaskedAutoencoder: decoder_dim \(\d+\) must be divisible by"),
    ("mae_vit_digits", {"decoder_depth": -1}, "MaskedAutoencoder: decoder_depth must be >= 0"),
    ("mae_vit_digits", {"mask_ratio": -0.1}, r"MaskedAutoencoder: mask_ratio must be in \[0, 1\)"),
    ("detr_vit_canvas", {"num_queries": 0}, "DETR: num_queries must be > 0"),
    ("detr_vit_canvas", {"decoder_depth": 0}, "DETR: decoder_depth must be > 0"),
    ("detr_vit_canvas", {"num_heads": 3}, r"DETR: embed_dim \(128\) must be divisible by num_heads \(3\)"),
    ("detr_vit_canvas", {"drop_rate": 1.0}, r"DETR: drop_rate must be in \[0, 1\)"),
    ("segmenter_vit_canvas", {"num_classes": 0}, "Segmenter: num_classes must be > 0"),
    ("segmenter_vit_canvas", {"decoder_heads": 0}, "Segmenter: decoder_heads must be > 0"),
    ("bert_tiny", {"vocab_size": 0}, "BertEncoder: vocab_size must be > 0"),
    ("gpt_nano", {"depth": -1}, "GPT: depth must be >= 0"),
    ("gpt_nano", {"block_size": 0}, "GPT: block_size must be > 0"),
    ("gpt_nano", {"num_heads": 3}, r"GPT: embed_dim \(64\) must be divisible by num_heads \(3\)"),
    ("gpt_nano", {"drop_rate": 1.0}, r"GPT: drop_rate must be in \[0, 1\)"),
    ("gpt_nano", {"pos_embed": "alibi"}, "GPT: pos_embed must be 'learned' or 'rope'"),
    (
        "bert_tiny",
        {"vocab_size": 50, "pad_token_id": 50},
        r"BertEncoder: pad_token_id \(50\) must be < vocab_size",
    ),
    ("bert_tiny", {"drop_rate": 1.5}, r"BertEncoder: drop_rate must be in \[0, 1\)"),
    ("bert_tiny", {"num_heads": 0}, "BertEncoder: num_heads must be > 0"),
    ("transformer_tiny", {"max_len": 0}, "Seq2SeqTransformer: max_len must be > 0"),
    ("transformer_tiny", {"eos_id": 64}, r"Seq2SeqTransformer: eos_id \(64\) must be < vocab_size \(64\)"),
    ("transformer_tiny", {"embed_dim": 63, "num_heads": 1}, r"embed_dim \(63\) must be divisible by 2"),
    ("resnet_mnist", {"widths": (16, 0, 64)}, r"ResNet: widths\[1\] must be > 0"),
    ("resnet_mnist", {"drop_path_rate": 1.0}, r"ResNet: drop_path_rate must be in \[0, 1\)"),
    ("resnet_mnist", {"num_classes": -1}, "ResNet: num_classes must be >= 0"),
    ("clip_vit_tiny_patch4_32", {"embed_dim": 0}, "CLIP: embed_dim must be > 0"),
    ("clip_vit_tiny_patch4_32", {"text_pool": "cls"}, "CLIP: text_pool must be one of"),
    (
        "clip_vit_tiny_patch4_32",
        {"vision_proj": False},
        r"CLIP: the vision tower's width \(192\) differs from embed_dim",
    ),
]


@pytest.mark.parametrize(
    ("name", "args", "message"), BAD_ARGS, ids=[f"{n}-{next(iter(a))}" for n, a, _ in BAD_ARGS]
)
def test_constructors_name_the_bad_argument(name, args, message):
    with pytest.raises((ValueError, TypeError), match=message):
        vitkit.create_model(name, **args)


def test_an_argument_of_the_wrong_type_is_named_on_the_command_line(tmp_path, capsys):
    """``true`` or a string for a size was a TypeError traceback from ``vitkit train`` (the CLI reports ValueErrors)."""
    from vitkit.cli import main

    with pytest.raises(TypeError, match="DETR: num_queries must be a number, got True"):  # still a TypeError
        vitkit.create_model("detr_vit_canvas", num_queries=True)
    argv = ["train", "--model", "vit_digits", "--model-args", '{"depth": "six"}', "--epochs", "1",
            "--out-dir", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "VisionTransformer: depth must be a number, got 'six'" in capsys.readouterr().err


def test_every_model_family_checks_its_arguments():
    """Each registered family refuses a negative size at construction (not at its first forward)."""
    from vitkit import registry

    tried = {vitkit.model_config(n)["family"] for n, _, _ in BAD_ARGS} | {"bert_mlm"}
    assert set(registry.list_families()) <= tried
    with pytest.raises(ValueError, match=r"MaskedLanguageModel: mask_prob must be in \(0, 1\)"):
        MaskedLanguageModel(mask_prob=0.0)
    with pytest.raises(ValueError, match=r"mask_token_id \(99\) is not in the 50-token table"):
        MaskedLanguageModel(encoder_args={"vocab_size": 50}, mask_token_id=99)


def test_losses_check_their_arguments_and_stay_finite():
    with pytest.raises(ValueError, match="SetCriterion: eos_coef must be >= 0"):
        SetCriterion(3, eos_coef=-0.1)
    with pytest.raises(ValueError, match="SetCriterion: all loss weights are zero"):
        SetCriterion(3, weight_class=0, weight_bbox=0, weight_giou=0)
    with pytest.raises(ValueError, match="HungarianMatcher: cost_bbox must be >= 0"):
        HungarianMatcher(cost_bbox=-1)
    with pytest.raises(ValueError, match="DropPath: drop_prob must be in"):
        DropPath(1.0)
    # eos_coef=0 and a batch without objects: every query's class weight is 0 -> a finite 0, not 0/0
    crit = SetCriterion(3, eos_coef=0.0)
    outputs = {"pred_logits": torch.randn(2, 5, 4, requires_grad=True), "pred_boxes": torch.rand(2, 5, 4)}
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    total, parts = crit(outputs, empty)
    assert torch.isfinite(total) and math.isfinite(parts["class"])
    total.backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all()
    # the weighted mean equals cross_entropy(weight=...) when some weight is non-zero
    crit = SetCriterion(3, eos_coef=0.1)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    _, parts = crit({k: v.detach() for k, v in outputs.items()}, targets)
    assert math.isfinite(parts["class"]) and parts["class"] > 0


@pytest.mark.parametrize(
    "name, call",
    [
        ("bert_tiny", lambda m, ids: m(ids)),
        ("gpt_nano", lambda m, ids: m(ids)),
        ("transformer_tiny", lambda m, ids: m(ids, ids)),
    ],
)
def test_token_ids_outside_the_vocabulary_are_named(name, call):
    """A tokenizer larger than the model's vocabulary: a ValueError with the ids' range and the table's size, not
    torch's bare ``IndexError: index out of range in self``; in-range ids are untouched."""
    model = vitkit.create_model(name, vocab_size=50).eval()
    ids = torch.tensor([[1, 2, 49]])
    with torch.no_grad():
        assert torch.isfinite(call(model, ids)).all()
        with pytest.raises(ValueError, match=r"token ids run from 1 to 50; the model has 50 \(ids 0 to 49\)"):
            call(model, torch.tensor([[1, 2, 50]]))
        with pytest.raises(ValueError, match="token ids run from -1 to 2"):
            call(model, torch.tensor([[-1, 2, 2]]))
    if name == "bert_tiny":
        with pytest.raises(ValueError, match=r"token type ids run from 0 to 2; the model has 2"):
            model(ids, token_type_ids=torch.tensor([[0, 1, 2]]))
