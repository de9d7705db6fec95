"""Every task's saved model works with the generic commands: predict, eval, summary, export, serve, --help.

One short run of each task (the pinned scenarios of ``task_scenarios.py``) is trained once for the module; each
test then uses the run as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from task_scenarios import SCENARIOS

from vitkit.cli import main

FAMILIES = ("classification", "text_classification", "mae", "mlm", "translation", "detection", "segmentation",
            "lm", "contrastive")  # fmt: skip


def _lm(tmp: Path) -> dict:
    """A character GPT on a toy text (the lm task is newer than the pinned scenarios of task_scenarios.py)."""
    from vitkit.train import train

    tmp.mkdir(parents=True)
    (tmp / "toy.txt").write_text("".join("ab" * (1 + i % 5) + "c\n" for i in range(400)))
    return train(task="lm", dataset=str(tmp / "toy.txt"), model="gpt_nano", block_size=16, batch_size=8,
                 epoch_steps=10, lr=3e-3, warmup_epochs=0.2, out_dir=str(tmp), name="run", epochs=2, threads=1,
                 progress=False)  # fmt: skip


def _contrastive(tmp: Path) -> dict:
    """test_contrastive.py's tiny CLIP on the digits with caption templates (newer than the pinned scenarios)."""
    from test_contrastive import RUN

    from vitkit.train import train

    return train(**RUN, epochs=2, out_dir=str(tmp), name="run")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name in FAMILIES:
        torch.manual_seed(0)
        {"lm": _lm, "contrastive": _contrastive}.get(name, SCENARIOS.get(name))(root / name)
        out[name] = root / name / "run"
    digit = np.zeros((8, 8), dtype=np.uint8)
    digit[1:7, 3:5] = 255  # a "1", white on black as the digits are
    Image.fromarray(digit).save(root / "digit.png")
    out["digit"] = root / "digit.png"
    out["canvas"] = root / "detection" / "data" / "val" / "images" / "000000.png"
    return out


def _predict(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_works_for_every_family(runs, capsys, tmp_path):
    top = _predict(capsys, runs["classification"], runs["digit"], "--topk", "3")
    assert len(top[0]["top"]) == 3 and abs(sum(t["prob"] for t in top[0]["top"])) <= 1.0 + 1e-6
    text = _predict(capsys, runs["text_classification"], "a great film", "a dull mess")
    assert [len(r["top"]) for r in text] == [2, 2] and {t["label"] for t in text[0]["top"]} == {
        "negative",
        "positive",
    }
    filled = _predict(capsys, runs["mlm"], "a great [MASK]")[0]
    assert "[MASK]" not in filled["filled"] and len(filled["masks"][0]["top"]) == 5
    assert filled["filled"].endswith(filled["masks"][0]["top"][0]["token"])
    assert _predict(capsys, runs["translation"], "hund katze", "--beam", "1")[0]["translation"].strip()
    recon = _predict(capsys, runs["mae"], runs["digit"], "-o", tmp_path)[0]
    assert recon["loss"] > 0 and Path(recon["reconstruction"]).stat().st_size > 0
    boxes = _predict(capsys, runs["detection"], runs["canvas"], "--threshold", "0", "-o", tmp_path)[0]
    assert len(boxes["boxes"]) == 4 and Path(boxes["drawing"]).is_file()  # 4 queries, every one shown
    assert all(0 <= v <= 32 for b in boxes["boxes"] for v in b["box"])  # pixels of the 32x32 canvas
    seg = _predict(capsys, runs["segmentation"], runs["canvas"], "-o", tmp_path)[0]
    mask = np.asarray(Image.open(seg["mask"]))
    assert mask.shape == (32, 32) and abs(sum(seg["classes"].values()) - 1) < 1e-3
    assert set(np.unique(mask).tolist()) <= set(range(4))
    assert main(["predict", str(runs["mlm"]), "no mask here"]) == 2
    assert "has no [MASK] to fill" in capsys.readouterr().err
    story = _predict(capsys, runs["lm"], "abab")[0]
    assert story["prompt"] == "abab" and set(story["continuation"]) <= set("abc\n") and story["continuation"]
    top = _predict(capsys, runs["contrastive"], runs["digit"], "--topk", "3")[0]["top"]  # zero-shot, over 0-9
    assert len(top) == 3 and {t["label"] for t in top} <= set("0123456789")
    assert 0 < sum(t["prob"] for t in top) <= 1 + 1e-6


@pytest.mark.parametrize("name", FAMILIES)
def test_eval_reproduces_the_runs_own_validation(runs, name, capsys):
    """``vitkit eval RUN`` scores the saved model with the task's metrics; it matches the run's last evaluation
    (classification: the final model on the test split, as training scored it)."""
    run = runs[name]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    if name == "classification":
        got = json.loads((run / "eval.json").read_text())
        final = max(last["val_acc"], last.get("ema_val_acc", -1))  # the EMA weights are kept when as good
        assert got["top1"] == pytest.approx(final)
        return
    got = json.loads(next(run.glob("eval-*.json")).read_text())
    for key, value in last.items():
        if key.startswith("val_") and not isinstance(value, list):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize(
    "model", ["vit_digits", "resnet_cifar", "bert_tiny", "transformer_tiny", "detr_vit_canvas",
              "segmenter_vit_canvas", "mae_vit_digits", "gpt_nano"],
)  # fmt: skip
def test_summary_works_for_every_family(model, capsys):
    assert main(["summary", model]) == 0
    out = capsys.readouterr().out
    assert "GMACs" in out and "GFLOPs" in out and "output" in out and "params" in out


def test_summary_of_vit_b16_reports_gmacs_near_the_papers(capsys):
    main(["summary", "vit_base_patch16_224"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "GMACs" in ln)
    assert 16.5 < float(line.split()[1]) < 17.7  # timm / the paper: 17.6 (they also count norms and softmax)


@pytest.mark.parametrize(("name", "fmt"), [("detection", "onnx"), ("text_classification", "onnx"),
                                           ("translation", "torchscript"), ("segmentation", "torchscript"),
                                           ("lm", "onnx")])  # fmt: skip
def test_export_works_for_every_deterministic_family(runs, name, fmt, tmp_path, capsys):
    from vitkit.export import export_model

    report = export_model(runs[name], fmt, tmp_path / f"m.{fmt}", bench=False)
    assert max(report["max_abs_diff"].values()) <= 1e-4 and Path(report["out"]).stat().st_size > 0
    if (
        fmt == "onnx"
    ):  # an onnxruntime user needs nothing else: the task and how inputs are read are in the file
        import onnxruntime as ort

        meta = ort.InferenceSession(report["out"]).get_modelmeta().custom_metadata_map
        assert meta["vitkit_task"] == json.loads(meta["vitkit_data_config"])["task"] == name.replace("_", "-")
        assert json.loads(meta["vitkit_model_config"])


@pytest.mark.parametrize("name", ["mae", "mlm"])
def test_export_refuses_random_forward_passes_by_name(runs, name, capsys):
    assert main(["export", str(runs[name]), "--no-bench"]) == 2
    assert "at random in its forward pass" in capsys.readouterr().err


def test_serve_works_for_every_input_kind(runs):
    from fastapi.testclient import TestClient

    from vitkit.serve import create_app

    client = TestClient(create_app(runs["detection"]))
    assert client.get("/health").json()["task"] == "detection"
    with open(runs["canvas"], "rb") as f:
        r = client.post("/predict", files={"file": ("c.png", f, "image/png")})
    assert r.status_code == 200 and isinstance(r.json()["boxes"], list)
    assert client.post("/explain").json()["error"].startswith("explain applies to image classifiers")
    client = TestClient(create_app(runs["translation"]))
    r = client.post("/predict", json={"text": "hund katze"})
    assert r.status_code == 200 and isinstance(r.json()["translation"], str)  # (2 epochs: may be empty)
    r = client.post("/predict", json={"text": " "})
    assert r.status_code == 400 and "non-empty text" in r.json()["error"]
    client = TestClient(create_app(runs["contrastive"]))
    with open(runs["digit"], "rb") as f:
        r = client.post("/predict", files={"file": ("d.png", f, "image/png")})
    assert r.status_code == 200 and len(r.json()["top"]) == 5 and r.json()["top"][0]["label"] in "0123456789"
    client = TestClient(create_app(runs["lm"]))
    r = client.post("/predict", json={"text": "abab"})
    assert r.status_code == 200 and set(r.json()["continuation"]) <= set("abc\n")
    r = client.post("/predict", json={"text": "abz"})
    assert r.status_code == 400 and "character vocabulary: 'z'" in r.json()["error"]


def _commands() -> list[list[str]]:
    from vitkit.tasks import TASKS

    cmds = [[]] + [[c] for c in ("train", "finetune", "pretrain", "translate", "detect", "segment", "eval",
                                 "predict", "explain", "fewshot", "compress", "export", "serve", "models", "summary",
                                 "zeroshot")]  # fmt: skip
    cmds += [["train", "--task", t] for t in TASKS] + [["pretrain", "--method", "mlm"]]
    cmds += [["translate", "train"], ["detect", "train"], ["detect", "make-canvas"], ["detect", "make-penn-fudan"],
             ["segment", "train"], ["finetune", "--task", "text-classification"], ["lm"], ["lm", "train"],
             ["lm", "generate"], ["lm", "eval"]]  # fmt: skip
    return cmds


@pytest.mark.parametrize("cmd", _commands(), ids=lambda c: " ".join(c) or "vitkit")
def test_help_of_every_command_exits_0_and_lists_only_its_flags(cmd, capsys):
    from vitkit.engine.config import ENGINE_OPTIONS, config_field_types
    from vitkit.tasks import TASKS

    with pytest.raises(SystemExit) as stop:
        code = main([*cmd, "--help"])
        raise SystemExit(code)
    assert stop.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage:" in out
    task = {"detect": "detection", "segment": "segmentation", "translate": "translation", "lm": "lm"}.get(
        cmd[0] if cmd else ""
    )
    if "--task" in cmd:
        task = cmd[cmd.index("--task") + 1]
    elif cmd[:1] == ["pretrain"]:
        task = cmd[2] if len(cmd) > 2 else "mae"
    elif cmd[:1] in (["train"], ["finetune"]):
        task = "classification"
    if task is None or len(cmd) < 2 and cmd[:1] in (["detect"], ["segment"], ["translate"], ["lm"]):
        return
    if cmd[:2] in (["detect", "make-canvas"], ["detect", "make-penn-fudan"]):
        return
    refused = [n for n in config_field_types() if n not in ENGINE_OPTIONS and n not in TASKS[task].options]
    listed = [n for n in refused if f"--{n.replace('_', '-')} " in out or f"--{n.replace('_', '-')}\n" in out]
    assert not listed, f"{' '.join(cmd)} --help lists flags its task refuses: {listed}"


def test_a_flag_of_another_task_is_refused_by_name(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["detect", "train", "--data", f"coco:{tmp_path}", "--hflip"])
    assert "the detection task does not take --hflip" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--task", "mlm", "--mixup", "0.2"])
    assert "the mlm task does not take --mixup" in capsys.readouterr().err


def test_a_task_named_without_a_model_trains_its_default_model(runs, tmp_path, capsys):
    """``vitkit detect train --data coco:DIR`` trains the task's default model (DETR), not the classifier's."""
    data = runs["detection"].parent / "data"
    assert main(["detect", "train", "--data", f"coco:{data}", "--epochs", "1", "--batch-size", "4", "--threads", "1",
                 "--no-progress", "--out-dir", str(tmp_path), "--name", "det"]) == 0  # fmt: skip
    import yaml

    assert yaml.safe_load((tmp_path / "det" / "config.yaml").read_text())["model"] == "detr_vit_canvas"


def test_the_python_api_and_summary_take_a_saved_model_of_any_task(runs, capsys):
    from vitkit.tasks.inference import predict

    boxes = predict(runs["detection"], [str(runs["canvas"])])
    assert isinstance(boxes[0]["boxes"], list)
    assert predict(runs["text_classification"], ["a great film"])[0]["text"] == "a great film"
    assert main(["summary", str(runs["segmentation"])]) == 0 and "GMACs" in capsys.readouterr().out


def test_an_unknown_text_dataset_is_named(tmp_path, capsys):
    assert main(["train", "--task", "text-classification", "--data", "sst3", "--out-dir", str(tmp_path)]) == 2
    assert "unknown text dataset 'sst3'; known: sst2" in capsys.readouterr().err


def test_an_mae_runs_encoder_exports_as_the_refusal_suggests(runs, tmp_path):
    from vitkit.export import export_model

    report = export_model(runs["mae"] / "encoder.safetensors", "onnx", tmp_path / "enc.onnx", bench=False)
    assert max(report["max_abs_diff"].values()) <= 1e-4


@pytest.mark.parametrize("name", ["detection", "segmentation", "text_classification", "lm"])
def test_compress_names_the_task_it_does_not_apply_to(runs, name, capsys):
    """compress reports top-1 on images: any other task was a bare ``error: 'labels'`` (a KeyError) or worse."""
    assert main(["compress", str(runs[name]), "--method", "int8"]) == 2
    task = name.replace("_", "-")
    err = capsys.readouterr().err
    assert "compress applies to image classifiers" in err and f"holds a {task} model" in err
