"""Contrastive image-text training (issue 22): repeated captions in the losses, zero-shot classifiers, retrieval
recall, the ``contrastive`` task through the Trainer (LiT locks, the locked text tower's cache, resume) and
``vitkit zeroshot``, and the bad input each refuses by name."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vitkit.cli import main
from vitkit.models import clip_loss, siglip_loss
from vitkit.tasks.zeroshot import retrieval_recall, zeroshot_classifier, zeroshot_eval
from vitkit.train import train

# a CLIP small enough to train on the 8x8 digits in about a second an epoch
TINY = {"vision_args": {"img_size": 8, "patch_size": 2, "depth": 1, "embed_dim": 32, "num_heads": 2},
        "text_args": {"depth": 1, "embed_dim": 32, "num_heads": 2}, "embed_dim": 32}  # fmt: skip
RUN = dict(task="contrastive", dataset="digits", model_args=TINY, batch_size=128, lr=2e-3, warmup_epochs=1,
           threads=1, progress=False)  # fmt: skip


# ---------------------------------------------------------------- losses with caption ids
def test_distinct_caption_ids_give_exactly_the_plain_losses():
    g = torch.Generator().manual_seed(0)
    img, txt = (F.normalize(torch.randn(6, 4, generator=g), dim=-1) for _ in range(2))
    ids = torch.tensor([5, 0, 3, 9, 1, 2])
    assert torch.equal(clip_loss(img, txt, 7.0, caption_ids=ids), clip_loss(img, txt, 7.0))
    assert torch.equal(siglip_loss(img, txt, 7.0, -3.0, caption_ids=ids), siglip_loss(img, txt, 7.0, -3.0))


def test_repeated_captions_are_positives_with_unicl_soft_targets():
    """Pairs 0 and 1 share a caption: each image's target is split evenly between both texts (UniCL), and SigLIP
    labels both +1. Expected values written out by hand on the 3 x 3 logits."""
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    txt = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])
    ids, s = torch.tensor([4, 4, 7]), 2.0
    z = [[s * sum(a * b for a, b in zip(i, t, strict=True)) for t in txt.tolist()] for i in img.tolist()]
    positives = [[ids[i] == ids[j] for j in range(3)] for i in range(3)]

    def soft_ce(rows):
        total = 0.0
        for r, logits in enumerate(rows):
            log_z = math.log(sum(math.exp(v) for v in logits))
            pos = [j for j in range(3) if positives[r][j]]
            total += -sum(logits[j] - log_z for j in pos) / len(pos)
        return total / len(rows)

    columns = [[z[i][j] for i in range(3)] for j in range(3)]  # text j against every image
    expected = (soft_ce(z) + soft_ce(columns)) / 2
    assert clip_loss(img, txt, s, caption_ids=ids).item() == pytest.approx(expected, abs=1e-6)
    assert expected != pytest.approx(clip_loss(img, txt, s).item(), abs=1e-3)  # the duplicates do change it
    log_sigmoid = lambda v: -math.log1p(math.exp(-v))  # noqa: E731
    sig = (
        -sum(
            log_sigmoid((1 if positives[i][j] else -1) * (z[i][j] - 1.0)) for i in range(3) for j in range(3)
        )
        / 3
    )
    assert siglip_loss(img, txt, s, -1.0, caption_ids=ids).item() == pytest.approx(sig, abs=1e-6)
    with pytest.raises(ValueError, match=r"caption_ids must be one id per pair, shape \(3,\), got \(2,\)"):
        clip_loss(img, txt, s, caption_ids=ids[:2])


# ---------------------------------------------------------------- zero-shot and retrieval
class OneHot(nn.Module):
    """A CLIP-shaped stub: an image (B, C, 1, 1) holding a one-hot vector is its own embedding; a prompt's token id
    is its class, embedded one-hot plus a per-template offset (prompt ensembling averages the offsets away)."""

    def __init__(self, classes: int, templates: int) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        self.offsets = torch.randn(templates, classes, generator=torch.Generator().manual_seed(0)) * 0.2

    def encode_image(self, images, normalize=False):
        return F.normalize(images.flatten(1), dim=-1)

    def encode_text(self, ids, attention_mask=None, normalize=False):
        cls, tpl = ids[:, 0], ids[:, 1]
        return F.normalize(F.one_hot(cls, self.offsets.shape[1]).float() + self.offsets[tpl], dim=-1)


def test_a_zeroshot_classifier_from_exact_text_embeddings_of_one_hot_images_scores_100_percent():
    classes, templates = (
        ["cat", "dog", "bird", "fish", "frog", "newt"],
        ["a {label}.", "the {label}!", "{label}"],
    )
    model = OneHot(len(classes), len(templates))

    def tokenizer(texts):  # prompt -> (class, template): what a real tokenizer's ids would identify
        rows = []
        for t in texts:
            c = next(i for i, name in enumerate(classes) if name in t)
            rows.append([c, [tp.format(label=classes[c]) for tp in templates].index(t)])
        return {"input_ids": torch.tensor(rows), "attention_mask": torch.ones(len(rows), 2, dtype=torch.long)}

    weights = zeroshot_classifier(model, classes, templates, tokenizer)
    assert weights.shape == (6, 6) and torch.allclose(weights.norm(dim=0), torch.ones(6))
    labels = torch.arange(6).repeat(3)
    images = F.one_hot(labels, 6).float()[:, :, None, None]
    result = zeroshot_eval(model, [(images[:9], labels[:9]), (images[9:], labels[9:])], weights)
    assert result["top1"] == 1.0 and result["top5"] == 1.0 and result["num_samples"] == 18
    shuffled = zeroshot_classifier(model, classes[::-1], templates, tokenizer)  # the columns follow the names
    assert (
        zeroshot_eval(model, [(images, labels)], shuffled)["top1"] == 0.0
    )  # reversed: no class in its place


def test_retrieval_recall_on_a_hand_made_pair_set():
    texts = torch.eye(3)  # captions 0, 1, 2
    images = F.normalize(
        torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.5, 1.0], [0.0, 0.3, 1.0], [0.2, 0.0, 1.0]]), dim=-1
    )
    ids = torch.tensor([0, 1, 2, 2])
    r = retrieval_recall(images, texts, ids, ks=(1, 2))
    # image 1 is nearest caption 2, its own caption 1 second; the other images find theirs first
    assert r["i2t_recall@1"] == 0.75 and r["i2t_recall@2"] == 1.0
    # caption 1's nearest image is image 0 (0.51 > 0.45), its own image 1 second; captions 0 and 2 find theirs first
    assert r["t2i_recall@1"] == pytest.approx(2 / 3) and r["t2i_recall@2"] == 1.0
    with pytest.raises(ValueError, match=r"caption_ids must be 4 indices in \[0, 3\)"):
        retrieval_recall(images, texts, torch.tensor([0, 1, 2, 3]))


# ---------------------------------------------------------------- the task, end to end
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrastive")
    summary = train(**RUN, epochs=2, out_dir=str(root), name="run")
    return root / "run", summary


def test_a_contrastive_run_is_evaluated_by_vitkit_zeroshot(run, capsys):
    folder, summary = run
    assert {"tokenizer.json", "model.safetensors", "eval.json", "confusion_matrix.png"} <= {
        p.name for p in folder.iterdir()
    }
    assert main(["zeroshot", str(folder), "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "top-1 accuracy" in out and "top-5 accuracy" in out and "templates: 5" in out
    got = json.loads((folder / "zeroshot-digits.json").read_text())
    assert got["top1"] == pytest.approx(summary["val_zeroshot_top1"]) and got["num_classes"] == 10
    assert (
        main(["zeroshot", str(folder), "--data", "digits", "--classes", "3,8", "--templates", "{label}"]) == 0
    )
    got = json.loads((folder / "zeroshot-digits.json").read_text())
    assert got["num_samples"] == 72 and got["classes"] == ["3", "8"] and got["templates"] == ["{label}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--classes", ""], "an empty class list"),
     (["--classes", "cat,dog"], r"classes \['cat', 'dog'\] are not classes of the dataset .*one per class \(10\)"),
     (["--templates", "a photo of a cat"], "template 'a photo of a cat' must contain '{label}'")],
    ids=["empty-classes", "unknown-classes", "template-without-label"],
)  # fmt: skip
def test_vitkit_zeroshot_names_bad_input(run, args, message, capsys):
    assert main(["zeroshot", str(run[0]), "--data", "digits", *args]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_locked_text_tower_is_unchanged_and_its_cache_is_exact(tmp_path):
    from vitkit.tasks import build_trainer, resolve_task_config

    trainer = build_trainer(
        resolve_task_config(**RUN, epochs=1, lock="text", out_dir=str(tmp_path), name="lit")
    )
    model, task = trainer.model, trainer.task
    text = {k: v.clone() for k, v in model.text.state_dict().items()}
    image = {k: v.clone() for k, v in model.visual.state_dict().items()}
    trainer.fit()
    assert all(torch.equal(v, model.text.state_dict()[k]) for k, v in text.items())
    assert not all(torch.equal(v, model.visual.state_dict()[k]) for k, v in image.items())
    index = torch.tensor([3, 17, 3, 42, 0, 17])  # repeats, and captions first seen now and in training
    with torch.no_grad():
        direct = model.encode_text(*task._rows(index), normalize=True)
    assert torch.allclose(task.cached_text(model, index), direct, atol=1e-6)
    assert torch.allclose(task.cached_text(model, index), direct, atol=1e-6)  # now all from the cache


def test_a_resumed_contrastive_run_equals_an_uninterrupted_one(run, tmp_path):
    """Template draws come from the global RNG the checkpoint saves: one epoch, resumed for a second, gives the
    weights of two epochs in one go (a fixed vocabulary: WordPiece orders tied tokens differently per training)."""
    from safetensors.torch import load_file

    fixed = dict(RUN, tokenizer=str(run[0] / "tokenizer.json"), out_dir=str(tmp_path))
    whole = train(**fixed, epochs=2, name="whole")
    train(**fixed, epochs=1, name="part")
    train(resume=str(tmp_path / "part"), epochs=2, progress=False)
    a, b = (
        load_file(f"{whole['run_dir']}/model.safetensors"),
        load_file(tmp_path / "part" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def _pairs(folder, rows):
    from vitkit.data import build_dataset

    digits = build_dataset("digits", "test")
    lines = ["path,caption"]
    for i in range(rows):
        x, y = digits[i]
        Image.fromarray((x[0].numpy() * 255).astype(np.uint8)).save(folder / f"d{i}.png")
        lines.append(f"d{i}.png,a handwritten {['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'][y]}")  # fmt: skip
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return f"pairs:{folder / 'pairs.csv'}"


def test_pairs_train_with_siglip_and_report_retrieval_recall(tmp_path, capsys):
    data = _pairs(tmp_path, 40)
    summary = train(**{**RUN, "dataset": data, "batch_size": 16}, val_split="train", contrastive_loss="siglip",
                    epochs=1, out_dir=str(tmp_path), name="pairs")  # fmt: skip
    keys = [f"val_{w}_recall@{k}" for w in ("i2t", "t2i") for k in (1, 5, 10)]
    assert all(0 <= summary[k] <= 1 for k in keys) and "val_mean_recall@1" in summary
    assert main(["zeroshot", str(tmp_path / "pairs"), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "40 images, 10 captions" in out and "image->text  R@1" in out
    (tmp_path / "bad.csv").write_text("path,caption\nd0.png,a digit\nd1.png,\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: empty caption for image 'd1.png'"):
        train(
            **{**RUN, "dataset": f"pairs:{tmp_path / 'bad.csv'}"}, epochs=1, out_dir=str(tmp_path), name="bad"
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [({"caption_templates": ["a photo"]}, "template 'a photo' must contain '{label}'"),
     ({"train_classes": ["3", "eleven"]}, r"train_classes \['eleven'\] are not classes of the dataset"),
     ({"lock": "both"}, "lock must be 'none', 'image' or 'text', got 'both'"),
     ({"contrastive_loss": "triplet"}, "contrastive_loss must be 'clip' or 'siglip'"),
     ({"model": "vit_digits", "model_args": {}}, "trains a dual encoder .* got 'vit_digits' \\(family vit\\)")],
    ids=["template", "train-classes", "lock", "loss", "not-clip"],
)  # fmt: skip
def test_bad_training_options_are_named(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        train(**{**RUN, **options}, epochs=1, out_dir=str(tmp_path), name="bad")


def test_train_classes_keep_the_other_classes_for_zero_shot(tmp_path):
    summary = train(**RUN, epochs=1, train_classes=["0,1,2", "3"], out_dir=str(tmp_path), name="held-out")
    assert summary["train_samples"] == 576  # the digits of classes 0-3 in the training split
    data = json.loads((tmp_path / "held-out" / "eval.json").read_text())
    assert data["num_classes"] == 10 and data["zeroshot"]  # scored over every class of the validation split


@pytest.mark.slow  # two torchrun processes, ~20 s
@pytest.mark.parametrize("lock", ["none", "text"])
def test_a_contrastive_run_trains_under_fsdp_on_two_processes(tmp_path, lock):
    """``--distributed fsdp`` under torchrun: both towers sharded, the temperature kept whole; the locked text
    tower's caption cache and the zero-shot evaluation call the towers outside ``forward`` (gathered whole for
    it), and the saved model evaluates like the run's own last evaluation."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitkit",
           "train", "--task", "contrastive", "--dataset", "digits", "--model-args", json.dumps(TINY),
           "--batch-size", "128", "--lr", "2e-3", "--warmup-epochs", "1", "--epochs", "2", "--threads", "1",
           "--lock", lock, "--distributed", "fsdp", "--no-progress", "--out-dir", str(tmp_path), "--name", "fsdp"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert main(["zeroshot", str(tmp_path / "fsdp"), "--data", "digits"]) == 0
    got = json.loads((tmp_path / "fsdp" / "zeroshot-digits.json").read_text())
    assert got["top1"] == pytest.approx(summary["val_zeroshot_top1"])
