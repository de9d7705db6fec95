"""Metrics, plots, prediction and evaluation (vitkit.metrics / plots / predict / evaluate)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import vitkit
from vitkit.data.images import BadImageError
from vitkit.evaluate import evaluate
from vitkit.metrics import classification_metrics, format_metrics_table, roc_auc_ovr
from vitkit.plots import plot_confusion_matrix, plot_training_curves
from vitkit.predict import (
    MissingDataConfigError,
    format_predictions,
    load_for_inference,
    predict,
    preprocess,
)

METRIC_KEYS = {"num_samples", "num_classes", "top1", "top5", "top5_k", "loss", "macro_precision", "macro_recall",
               "macro_f1", "weighted_f1", "roc_auc", "classes", "per_class", "confusion_matrix"}  # fmt: skip
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# --------------------------------------------------------------------------------------------- metrics
def _six_sample_logits():
    # targets 0 0 1 1 2 2, predicted (argmax) 0 1 1 1 2 0
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.tensor(
        [[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 4.0, 1.0], [0.2, 1.0, 0.9], [0.0, 0.5, 2.0], [2.0, 0.0, 1.5]]
    )
    return logits, targets


def test_classification_metrics_match_hand_computed_values():
    logits, targets = _six_sample_logits()
    m = classification_metrics(logits, targets, ["cat", "dog", "bird"])
    assert METRIC_KEYS <= set(m)
    assert m["num_samples"] == 6 and m["num_classes"] == 3 and m["classes"] == ["cat", "dog", "bird"]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] == 1.0 and m["top5_k"] == 3  # top-5 capped at 3 classes

    # by hand from the confusion matrix: (tp, predicted, support) per class
    counts = [(1, 2, 2), (2, 3, 2), (1, 1, 2)]
    prec = [tp / p for tp, p, _ in counts]  # 1/2, 2/3, 1
    rec = [tp / s for tp, _, s in counts]  # 1/2, 1, 1/2
    f1 = [2 * p * r / (p + r) for p, r in zip(prec, rec, strict=True)]  # 1/2, 4/5, 2/3
    assert f1 == pytest.approx([0.5, 0.8, 2 / 3])
    assert m["macro_precision"] == pytest.approx(sum(prec) / 3)
    assert m["macro_recall"] == pytest.approx(sum(rec) / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx(m["macro_f1"])  # equal supports
    for i, row in enumerate(m["per_class"]):
        assert row["index"] == i and row["support"] == 2
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((prec[i], rec[i], f1[i]))
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, targets).item())

    # ROC-AUC of class 0 by hand: positives are samples 0, 1; count positive-over-negative score pairs
    p = logits.softmax(1)[:, 0].tolist()
    pairs = [(a, b) for a in p[:2] for b in p[2:]]
    auc0 = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert m["per_class"][0]["roc_auc"] == pytest.approx(auc0)
    json.dumps(m, allow_nan=False)  # plain JSON


def test_classification_metrics_agree_with_sklearn():
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score, top_k_accuracy_score

    g = torch.Generator().manual_seed(1)
    targets = torch.arange(200) % 7
    logits = torch.randn(200, 7, generator=g) + 1.5 * F.one_hot(targets, 7)
    logits[:20] = logits[:20].round()  # some tied scores
    m = classification_metrics(logits, targets)
    p, r, f, _ = precision_recall_fscore_support(targets, logits.argmax(1), average="macro", zero_division=0)
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((p, r, f))
    probs = logits.double().softmax(1).numpy()
    assert m["roc_auc"] == pytest.approx(roc_auc_score(targets, probs, multi_class="ovr"))
    assert m["top5"] == pytest.approx(top_k_accuracy_score(targets, logits.numpy(), k=5))
    ties = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])
    assert roc_auc_ovr(ties, torch.tensor([0, 1, 1, 0]))[0] == pytest.approx(
        roc_auc_score([1, 0, 0, 1], ties[:, 0])
    )


def test_classification_metrics_absent_class_and_bad_input():
    logits, targets = _six_sample_logits()
    wide = torch.cat([logits, torch.full((6, 1), -9.0)], dim=1)  # class 3: no samples, never predicted
    m = classification_metrics(wide, targets)
    absent = m["per_class"][3]
    assert absent["support"] == 0 and absent["precision"] is None and absent["roc_auc"] is None
    assert m["macro_f1"] == pytest.approx(classification_metrics(logits, targets)["macro_f1"])
    assert m["top5_k"] == 4
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(logits, targets, ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics(logits, torch.tensor([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ValueError, match="empty|no samples"):
        classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_format_metrics_table():
    logits, targets = _six_sample_logits()
    table = format_metrics_table(
        classification_metrics(logits, targets, ["cat", "dog", "a-very-long-class-name"])
    )
    assert "top-1 accuracy" in table and "0.6667" in table and "top-3 accuracy" in table
    assert "macro F1" in table and "ROC-AUC" in table
    rows = [ln for ln in table.splitlines() if ln.strip().startswith(("cat", "dog", "a-very"))]
    assert len(rows) == 3 and len({len(r) for r in rows}) == 1  # fixed width


# --------------------------------------------------------------------------------------------- plots
def _png_ok(path, min_w, min_h):
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
        assert w >= min_w and h >= min_h, img.size
        lo, hi = img.convert("L").getextrema()
        assert lo < 100 and hi > 200  # something drawn on a white background


def test_plot_training_curves(tmp_path):
    records = [
        {"epoch": e, "train_loss": 2 / e, "train_acc": 1 - 1 / (e + 1), "val_loss": 2.1 / e,
         "val_acc": 1 - 1.2 / (e + 1), "lr": 1e-3 * (1 - e / 8), "epoch_time": 1.0}
        for e in range(1, 7)
    ]  # fmt: skip
    jsonl = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in records] + [json.dumps(records[-1]), '{"epoch": 7, "train_lo']
    jsonl.write_text("\n".join(lines))  # a duplicated epoch (resume) and a half-written last line
    out = plot_training_curves(jsonl, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    _png_ok(out, 1200, 400)
    out2 = plot_training_curves(records[:1], tmp_path / "one_epoch.png")  # a single epoch, lists accepted
    _png_ok(out2, 1200, 400)


def test_plot_confusion_matrix(tmp_path):
    cm = [[5, 1, 0], [0, 6, 0], [2, 0, 4]]
    out = plot_confusion_matrix(cm, ["cat", "dog", "bird"], tmp_path / "cm.png")
    _png_ok(out, 500, 500)
    _png_ok(plot_confusion_matrix(np.array(cm), None, tmp_path / "counts.png", normalize=False), 500, 500)
    _png_ok(plot_confusion_matrix(np.eye(40, dtype=int), None, tmp_path / "big.png"), 800, 800)
    with pytest.raises(ValueError):
        plot_confusion_matrix(cm, ["a", "b"], tmp_path / "bad.png")


# --------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def mnist_model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = vitkit.create_model("vit_mnist", depth=1)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    data_config = {"dataset": "mnist", "classes": CLASSES, "mean": [0.1307], "std": [0.3081],
                   "img_size": [28, 28], "in_chans": 1}  # fmt: skip
    vitkit.save(model, path, data_config=data_config)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(gray, "L").save(d / "gray.png")
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(d / "deep16.png")  # 16-bit, same picture as gray.png
    Image.fromarray(rng.integers(0, 256, (50, 64, 3), dtype=np.uint8), "RGB").save(d / "wide.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "CMYK").save(d / "cmyk.jpg")
    (d / "notes.txt").write_text("this is not an image\n")
    return d


def test_predict_files_of_any_mode_and_size(mnist_model_file, images):
    with Image.open(images / "deep16.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit PNG
    files = [images / n for n in ("gray.png", "rgba.png", "deep16.png", "wide.jpg", "cmyk.jpg")]
    results = predict(mnist_model_file, files, topk=3, batch_size=2)
    assert len(results) == len(files)
    for path, r in zip(files, results, strict=True):
        assert r["path"] == str(path) and len(r["top"]) == 3
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6 and min(probs) >= 0
        assert all(t["label"] == CLASSES[t["index"]] for t in r["top"])
    # the 16-bit PNG holds the same picture as gray.png: same classes, same probabilities
    assert [t["index"] for t in results[0]["top"]] == [t["index"] for t in results[2]["top"]]
    assert [t["prob"] for t in results[0]["top"]] == pytest.approx([t["prob"] for t in results[2]["top"]])

    full = predict(mnist_model_file, images / "gray.png", topk=50)[0]["top"]  # capped at 10 classes
    assert len(full) == 10 and sum(t["prob"] for t in full) == pytest.approx(1.0, abs=1e-5)
    in_dir = predict(mnist_model_file, [images], topk=1)  # a directory: its image files, sorted
    assert [r["path"] for r in in_dir] == sorted(str(f) for f in files)
    text = format_predictions(results)
    assert "gray.png" in text and "%" in text
    json.dumps(results)


def test_predict_in_memory_inputs_match_files(mnist_model_file, images):
    model, dc = load_for_inference(mnist_model_file)
    assert not model.training and dc["classes"] == CLASSES and dc["img_size"] == [28, 28]
    from_file = preprocess([images / "rgba.png"], dc)
    assert from_file.shape == (1, 1, 28, 28)
    with Image.open(images / "rgba.png") as im:
        assert torch.allclose(preprocess(im, dc), from_file)
    gray = np.array(Image.open(images / "gray.png"))
    x = preprocess([gray, torch.from_numpy(gray)[None], gray.astype(np.float32) / 255], dc)
    assert torch.allclose(x[0], x[1]) and torch.allclose(x[0], x[2], atol=1e-6)
    assert torch.allclose(x[:1], preprocess(images / "gray.png", dc))
    results = predict(model, np.stack([gray, gray])[..., None], topk=2)  # a model; an (N, H, W, C) batch
    assert [r["path"] for r in results] == [None, None] and results[0]["top"] == results[1]["top"]


def test_predict_bad_inputs_fail_clearly(mnist_model_file, images, tmp_path):
    bad = images / "notes.txt"
    with pytest.raises(BadImageError, match="notes.txt"):
        predict(mnist_model_file, [images / "gray.png", bad])
    res = predict(mnist_model_file, [bad, images / "gray.png"], on_error="skip")
    assert "notes.txt" in res[0]["error"] and res[0]["top"] == [] and len(res[1]["top"]) == 5
    with pytest.raises(BadImageError, match="missing.png"):
        predict(mnist_model_file, [images / "missing.png"])
    with pytest.raises(ValueError, match="topk"):
        predict(mnist_model_file, [images / "gray.png"], topk=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preprocess(np.full((8, 8), 7.0, dtype=np.float32), load_for_inference(mnist_model_file)[1])
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_for_inference(tmp_path)  # an empty directory is not a run directory


def test_model_without_data_config(tmp_path, images):
    path = tmp_path / "bare.safetensors"
    vitkit.save(vitkit.create_model("vit_mnist", depth=1), path)
    with pytest.raises(MissingDataConfigError, match="no data config"):
        load_for_inference(path, strict=True)
    with pytest.warns(UserWarning, match="no data config"):
        _, dc = load_for_inference(path)
    assert dc["classes"] == [str(i) for i in range(10)] and dc["mean"] == [0.5] and dc["std"] == [0.5]
    assert dc["img_size"] == [28, 28] and dc["in_chans"] == 1
    with pytest.warns(UserWarning):
        r = predict(path, [images / "wide.jpg"], topk=3)
    assert {t["label"] for t in r[0]["top"]} <= set(dc["classes"])


# --------------------------------------------------------------------------------------------- evaluate
def test_evaluate_fake_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    model = vitkit.create_model("vit_digits")
    data_config = {"dataset": "digits", "classes": [str(i) for i in range(10)], "mean": [0.3054],
                   "std": [0.3761], "img_size": [8, 8], "in_chans": 1}  # fmt: skip
    vitkit.save(model, run / "model.safetensors", data_config=data_config)
    config = {"model": "vit_digits", "dataset": "digits", "data_dir": None, "batch_size": 64}
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    m = evaluate(run, batch_size=100)
    saved = json.loads((run / "eval.json").read_text())
    assert METRIC_KEYS <= set(saved) and saved["dataset"] == "digits" and saved["split"] == "test"
    assert saved["top1"] == m["top1"] and saved["confusion_matrix"] == m["confusion_matrix"]
    assert m["num_samples"] == 360 and sum(map(sum, m["confusion_matrix"])) == 360
    assert 0 <= m["top1"] <= m["top5"] <= 1 and math.isfinite(m["loss"])
    _png_ok(run / "confusion_matrix.png", 500, 500)
    assert "top-1 accuracy" in format_metrics_table(m)

    # the same model through a bare .safetensors file: dataset from its data_config, outputs beside it
    lone = tmp_path / "elsewhere" / "digits_vit.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((run / "model.safetensors").read_bytes())
    m2 = evaluate(lone, split="train", batch_size=512, plot=False)
    assert m2["num_samples"] == 1437 and m2["dataset"] == "digits" and m2["confusion_matrix_png"] is None
    assert m2["eval_json"] == str(lone.parent / "digits_vit.eval_train.json")
    assert json.loads((lone.parent / "digits_vit.eval_train.json").read_text())["split"] == "train"

    # a 3-class model on the 10-class digits fails with a clear message
    three = tmp_path / "three.safetensors"
    vitkit.save(vitkit.create_model("vit_digits", num_classes=3, depth=1), three,
                data_config={**data_config, "classes": ["a", "b", "c"]})  # fmt: skip
    with pytest.raises(ValueError, match="3 classes|predicts 3"):
        evaluate(three, out_json=tmp_path / "three.json")


def test_evaluate_another_dataset_of_another_size(tmp_path, capsys):
    """An 8x8 digits model on 28x28 MNIST: refused with both sizes and the flag; with --resize it runs and
    writes eval-mnist.json beside the run's own eval.json."""
    from test_data import write_fake_idx

    from vitkit.cli import main
    from vitkit.data import ImageSizeError

    write_fake_idx(tmp_path / "data" / "mnist", n_train=2, n_test=20)
    run = tmp_path / "run"
    run.mkdir()
    data_config = {"dataset": "digits", "classes": [str(i) for i in range(10)], "mean": [0.3054],
                   "std": [0.3761], "img_size": [8, 8], "in_chans": 1}  # fmt: skip
    vitkit.save(
        vitkit.create_model("vit_digits", depth=1), run / "model.safetensors", data_config=data_config
    )
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "vit_digits", "dataset": "digits"}))
    data = ["--data", "mnist", "--data-dir", str(tmp_path / "data")]
    with pytest.raises(ImageSizeError, match=r"28x28 images but the model takes 8x8; pass --resize"):
        evaluate(run, dataset="mnist", data_dir=tmp_path / "data")
    assert main(["eval", str(run), *data]) == 2
    err = capsys.readouterr().err
    assert "'mnist' has 28x28 images" in err and "--resize" in err and not (run / "eval-mnist.json").exists()

    assert main(["eval", str(run), *data, "--resize"]) == 0
    saved = json.loads((run / "eval-mnist.json").read_text())
    assert (
        saved["dataset"] == "mnist"
        and saved["num_samples"] == 20
        and (run / "confusion_matrix-mnist.png").is_file()
    )
    assert not (run / "eval.json").exists()  # the run's own results are not overwritten
    assert evaluate(run, plot=False)["dataset"] == "digits"  # its own dataset: no flag needed


def test_task_evaluate_another_dataset_of_another_size(tmp_path):
    """The same refusal for the other tasks' evaluation (an MAE of 8x8 digits on 28x28 MNIST)."""
    from test_data import write_fake_idx

    from vitkit.data import ImageSizeError
    from vitkit.tasks.inference import evaluate as evaluate_task

    write_fake_idx(tmp_path / "data" / "mnist", n_train=8, n_test=4)
    run = tmp_path / "mae"
    run.mkdir()
    data_config = {
        "task": "mae",
        "dataset": "digits",
        "mean": [0.3],
        "std": [0.4],
        "img_size": [8, 8],
        "in_chans": 1,
    }
    vitkit.save(vitkit.create_model("mae_vit_digits"), run / "model.safetensors", data_config=data_config)
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": "mae_vit_digits", "dataset": "digits", "batch_size": 4})
    )
    with pytest.raises(ImageSizeError, match="'mnist' has 28x28 images but the model takes 8x8"):
        evaluate_task(run, dataset="mnist", data_dir=tmp_path / "data")
    result = evaluate_task(run, dataset="mnist", data_dir=tmp_path / "data", resize=True)
    assert result["dataset"] == "mnist" and math.isfinite(result["val_loss"])
