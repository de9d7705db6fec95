"""Few-shot probes: class-balanced seeded sampling, the closed-form ridge solve, feature extraction per family and
the ``vitkit fewshot`` command end to end on a trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vitkit
from vitkit.cli import main as cli_main
from vitkit.data import build_dataset
from vitkit.fewshot import (
    BIAS_CONSTANT,
    feature_extractor,
    fewshot_eval,
    fewshot_probe,
    format_fewshot_table,
    ridge_probe,
    ridge_probes,
    sample_shots,
)

DIGITS_CONFIG = {"dataset": "digits", "classes": [str(i) for i in range(10)], "mean": [0.3054], "std": [0.3761],
                 "img_size": [8, 8], "in_chans": 1}  # fmt: skip


# --------------------------------------------------------------------------------------------- sampling
def test_sample_shots_is_class_balanced_seeded_and_nested():
    labels = torch.tensor([0] * 30 + [1] * 12 + [2] * 7)[
        torch.randperm(49, generator=torch.Generator().manual_seed(3))
    ]
    idx = sample_shots(labels, 5, seed=0)
    assert len(idx) == 15 and len(set(idx.tolist())) == 15
    assert labels[idx].tolist() == [0] * 5 + [1] * 5 + [2] * 5  # exactly k per class, class 0 first
    assert torch.equal(sample_shots(labels, 5, seed=0), idx)  # same seed, same images
    others = [sample_shots(labels, 5, seed=s) for s in range(1, 4)]
    assert all(not torch.equal(o, idx) for o in others)  # another seed, another sample
    small = sample_shots(labels, 2, seed=0)  # big_vision: the 2-shot sample is the start of the 5-shot one
    assert small.view(3, 2).tolist() == idx.view(3, 5)[:, :2].tolist()
    all_of_2 = sample_shots(labels, 7, seed=5)[14:]
    assert sorted(all_of_2.tolist()) == sorted((labels == 2).nonzero().flatten().tolist())


def test_sample_shots_errors_name_the_class():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 10)
    with pytest.raises(ValueError, match=r"class 1 \('shirt'\) has 3 examples.*fewer than 4"):
        sample_shots(labels, 4, seed=0, classes=["coat", "shirt", "bag"])
    with pytest.raises(ValueError, match="class 3 has 0 examples"):
        sample_shots(labels, 1, seed=0, num_classes=4)  # a class missing from the pool
    with pytest.raises(ValueError, match="positive integer"):
        sample_shots(labels, 0, seed=0)


# --------------------------------------------------------------------------------------------- ridge
def _design(feats: np.ndarray) -> np.ndarray:
    """big_vision's design matrix, by hand: standardised features and a constant 100 column."""
    x = (feats - feats.mean(0)) / (feats.std(0) + 1e-5)
    return np.concatenate([x, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)


@pytest.mark.parametrize("n, d", [(30, 6), (8, 40)])  # primal (N >= D + 1) and dual (N < D + 1) forms
def test_ridge_probe_equals_direct_solve_and_sklearn(n, d):
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(n)
    feats = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d) + rng.normal(size=d)
    labels = np.arange(n) % 3
    x, y = _design(feats), 2.0 * np.eye(3)[labels] - 1.0
    for l2 in (0.5, 1024.0):
        probe = ridge_probe(torch.tensor(feats, dtype=torch.float32), torch.tensor(labels), l2)
        by_hand = np.linalg.solve(x.T @ x + l2 * np.eye(d + 1), x.T @ y)
        np.testing.assert_allclose(probe.weight.numpy(), by_hand, rtol=1e-4, atol=1e-7)
        ref = Ridge(alpha=l2, fit_intercept=False, solver="cholesky").fit(x, y)
        np.testing.assert_allclose(probe.weight.numpy(), ref.coef_.T, rtol=1e-4, atol=1e-7)
        test = rng.normal(size=(5, d))
        np.testing.assert_allclose(
            probe.logits(torch.tensor(test)).numpy(), ref.predict(_apply(feats, test)), rtol=1e-4, atol=1e-6
        )
    many = ridge_probes(torch.tensor(feats), torch.tensor(labels), [0.5, 1024.0])  # one decomposition, two l2
    assert torch.allclose(
        many[1].weight, ridge_probe(torch.tensor(feats), torch.tensor(labels), 1024.0).weight
    )


def _apply(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    x = (test - train.mean(0)) / (train.std(0) + 1e-5)
    return np.concatenate([x, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)


def test_ridge_probe_separates_a_separable_problem_and_checks_inputs():
    g = torch.Generator().manual_seed(0)
    centers = 6 * torch.randn(4, 16, generator=g)
    labels = torch.arange(400) % 4
    feats = centers[labels] + torch.randn(400, 16, generator=g)
    idx = sample_shots(labels[:200], 5, seed=0)
    probe = ridge_probe(feats[idx], labels[idx], l2=1.0)
    assert torch.equal(probe.predict(feats[200:]), labels[200:])  # 100% on held-out points
    with pytest.raises(ValueError, match="l2 must be positive"):
        ridge_probe(feats, labels, l2=0.0)
    with pytest.raises(ValueError, match=r"labels \(N,\)"):
        ridge_probe(feats, labels[:10])


def test_fewshot_probe_reports_every_shot_and_seed():
    g = torch.Generator().manual_seed(1)
    centers = 2 * torch.randn(3, 8, generator=g)
    train_y, test_y = torch.arange(90) % 3, torch.arange(60) % 3
    train_x = centers[train_y] + torch.randn(90, 8, generator=g)
    test_x = centers[test_y] + torch.randn(60, 8, generator=g)
    r = fewshot_probe(train_x, train_y, test_x, test_y, shots=(1, 4, 10), seeds=3, l2=[1.0, 1024.0])
    assert r["shots"] == [1, 4, 10] and r["seeds"] == [0, 1, 2] and r["l2"] == 1.0 and r["chance"] == 1 / 3
    for k in ("1", "4", "10"):
        a = r["accuracy"][k]
        assert len(a["per_seed"]) == 3 and all(0 <= v <= 1 for v in a["per_seed"])
        assert a["mean"] == pytest.approx(np.mean(a["per_seed"])) and a["std"] == pytest.approx(
            np.std(a["per_seed"], ddof=1)
        )
        assert r["l2_sweep"]["1"][k] == a["mean"]
    assert r["accuracy"]["10"]["mean"] > r["accuracy"]["1"]["mean"] > 1 / 3
    assert list(r["l2_sweep"]) == ["1", "1024"]
    table = format_fewshot_table(r)
    assert "| 10 |" in table and "3 seeds" in table and "chance | 33.33%" in table and "| 1024 |" in table
    with pytest.raises(ValueError, match="class 0 .* fewer than 40"):
        fewshot_probe(train_x, train_y, test_x, test_y, shots=[40], seeds=1)


# --------------------------------------------------------------------------------------------- features
def test_feature_extractor_gives_pre_logits_per_family():
    x = torch.randn(3, 1, 8, 8)
    vit = vitkit.create_model("vit_digits", depth=1).eval()
    backbone, fn = feature_extractor(vit)
    with torch.no_grad():
        assert backbone is vit and torch.equal(
            fn(x), vit.forward_head(vit.forward_features(x), pre_logits=True)
        )
        assert fn(x).shape == (3, 64)
        mae = vitkit.create_model("mae_vit_digits").eval()
        backbone, fn = feature_extractor(mae)
        assert backbone is mae.encoder and fn(x).shape == (3, mae.encoder.embed_dim)
        assert torch.equal(fn(x), fn(x))  # no random masking: the whole image
        resnet = vitkit.create_model("resnet_mnist").eval()
        backbone, fn = feature_extractor(resnet)
        assert fn(torch.randn(2, 1, 28, 28)).shape == (2, resnet.num_features)
    for name in ("bert_tiny", "gpt_nano"):
        with pytest.raises(ValueError, match="no pooled image features"):
            feature_extractor(vitkit.create_model(name))


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A run directory of a tiny ViT trained for a few seconds on digits, and one of the same ViT untrained."""
    torch.manual_seed(0)
    data = build_dataset("digits", "train")
    mean, std = DIGITS_CONFIG["mean"][0], DIGITS_CONFIG["std"][0]
    x, y = (data.data - mean) / std, data.targets
    runs = tmp_path_factory.mktemp("runs")
    for name, epochs in (("untrained", 0), ("trained", 6)):
        torch.manual_seed(0)
        model = vitkit.create_model("vit_digits", depth=1, embed_dim=32, num_heads=2)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(epochs):
            for i in torch.randperm(len(x)).split(64):
                loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
        (runs / name).mkdir()
        vitkit.save(model.eval(), runs / name / "model.safetensors", data_config=DIGITS_CONFIG)
        (runs / name / "config.yaml").write_text(yaml.safe_dump({"model": "vit_digits", "dataset": "digits"}))
    return runs / "trained", runs / "untrained"


def test_fewshot_cli_writes_table_json_and_png(digits_run, tmp_path, capsys):
    trained, untrained = digits_run
    out = tmp_path / "out"
    assert cli_main(["fewshot", str(trained), "--data", "digits", "--shots", "1,5,10", "--seeds", "3",
                     "--out", str(out), "--test-limit", "200"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "32-d ViT pre-logits of 8x8 1-channel images; pool 1437, test 200" in printed
    assert "| 5 |" in printed and "chance | 10.00% (1/10)" in printed
    r = json.loads((out / "fewshot.json").read_text())
    assert r["shots"] == [1, 5, 10] and r["seeds"] == [0, 1, 2] and r["l2"] == 1024.0
    assert r["pool_size"] == 1437 and r["test_size"] == 200 and r["feature_dim"] == 32
    for k in ("1", "5", "10"):
        assert len(r["accuracy"][k]["per_seed"]) == 3 and all(
            0 <= a <= 1 for a in r["accuracy"][k]["per_seed"]
        )
    assert r["accuracy"]["10"]["mean"] > 0.4  # chance is 0.1
    with Image.open(out / "fewshot.png") as im:
        assert im.size[0] >= 600 and im.size[1] >= 400
    assert "| 10 |" in (out / "fewshot.md").read_text()

    # the Python API, outputs beside the model by default; the untrained ViT's features are worse
    base = fewshot_eval(untrained, "digits", shots=[10], seeds=3, test_limit=200, plot=False)
    assert Path(base["fewshot_json"]) == untrained / "fewshot-digits" / "fewshot.json"
    assert base["accuracy"]["10"]["mean"] < r["accuracy"]["10"]["mean"] - 0.1


def test_fewshot_cli_errors(digits_run, tmp_path, capsys):
    trained, _ = digits_run
    assert (
        cli_main(["fewshot", str(trained), "--data", "digits", "--shots", "200", "--out", str(tmp_path)]) == 2
    )
    assert "fewer than 200 shots" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["fewshot", str(trained), "--data", "digits", "--shots", "1,0"])
    assert "positive integers" in capsys.readouterr().err
    assert cli_main(["fewshot", str(tmp_path / "nothing"), "--data", "digits"]) == 2
    assert "no model at" in capsys.readouterr().err


def test_a_dual_encoder_run_is_probed_through_its_image_tower(tmp_path):
    """A contrastive run's model (CLIP / LiT: no classifier, its data config lists the classes it was trained on)
    is probed on its image embeddings; it used to stop at 'no class names ... and no num_classes'."""
    torch.manual_seed(0)
    model = vitkit.create_model(
        "clip_vit_tiny_patch4_32", embed_dim=16,
        vision_args=dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, in_chans=1),
        text_args=dict(vocab_size=40, block_size=8, embed_dim=24, depth=1, num_heads=2),
    ).eval()  # fmt: skip
    config = {"task": "contrastive", "dataset": "digits", "mean": [0.3], "std": [0.4], "img_size": [16, 16],
              "in_chans": 1, "classes": ["zero", "one"], "templates": ["a {label}"]}  # fmt: skip
    vitkit.save(model, tmp_path / "model.safetensors", data_config=config)
    r = fewshot_eval(tmp_path, "digits", shots=[2], seeds=2, pool_limit=200, test_limit=50, plot=False)
    assert r["feature_dim"] == 16 and len(r["classes"]) == 10  # the dataset's classes, not the run's
    assert len(r["accuracy"]["2"]["per_seed"]) == 2
