"""Training: learning happens, resume is exact after kill -9, divergence stops cleanly, the CLI works."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.cli import main as cli_main
from vitkit.engine import TrainingDivergedError
from vitkit.engine.checkpoint import load_checkpoint
from vitkit.tasks import build_trainer
from vitkit.tasks import resolve_task_config as resolve_config

TINY = dict(model="vit_digits", dataset="digits", batch_size=64, lr=2e-3, warmup_epochs=1, progress=False, threads=1,
            model_args={"depth": 2, "embed_dim": 32, "num_heads": 2})  # fmt: skip


def test_a_short_run_learns(tmp_path):
    cfg = resolve_config(**TINY, epochs=8, out_dir=str(tmp_path), name="run")
    summary = build_trainer(cfg).fit()
    run = Path(summary["run_dir"])
    assert summary["val_acc"] > 0.5, summary  # chance is 0.1
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 8 and history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("config.yaml", "checkpoint.pt", "model.safetensors", "curves.png", "confusion_matrix.png",
                 "eval.json", "summary.json"):  # fmt: skip
        assert (run / name).stat().st_size > 0, name
    model = vitkit.load(run / "model.safetensors")
    assert model.data_config["classes"] == [str(i) for i in range(10)]


def _train_cmd(run_dir: Path, epochs: int) -> list[str]:
    # --save-every 1: the recipe checkpoints every 5 epochs
    return [sys.executable, "-m", "vitkit.cli", "train", "--recipe", "digits", "--epochs", str(epochs),
            "--out-dir", str(run_dir.parent), "--name", run_dir.name, "--no-progress", "--threads", "1",
            "--model-args", json.dumps({"depth": 2, "embed_dim": 32, "num_heads": 2}), "--ema-decay", "0.9",
            "--save-every", "1"]  # fmt: skip


def test_resume_after_kill_is_bit_exact(tmp_path):
    epochs = 5
    ref = tmp_path / "uninterrupted"
    subprocess.run(_train_cmd(ref, epochs), check=True, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    metrics = run / "metrics.jsonl"
    while time.time() < deadline:  # kill -9 once at least two epochs are checkpointed, mid-run
        if (
            metrics.exists()
            and len(metrics.read_text().splitlines()) >= 2
            and (run / "checkpoint.pt").exists()
        ):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.safetensors").exists(), "the run finished before it could be killed"
    # the kill may leave a temp file beside it, never a torn checkpoint: the checkpoint loads and is at an epoch end
    assert 1 <= load_checkpoint(run / "checkpoint.pt")["epoch"] < epochs  # killed mid-run: the resume trains
    subprocess.run([sys.executable, "-m", "vitkit.cli", "train", "--resume", str(run), "--no-progress"],
                   check=True, capture_output=True)  # fmt: skip
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    hist = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert hist == list(range(1, epochs + 1))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    cfg = resolve_config(**TINY, epochs=3, out_dir=str(tmp_path), name="nan")
    calls = {"n": 0}

    def loss_fn(logits, target, images):
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss * float("nan") if calls["n"] > 30 else loss  # diverge during epoch 2

    trainer = build_trainer(cfg, loss_fn=loss_fn)
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 2"):
        trainer.fit()
    state = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_gradient_accumulation_matches_a_big_batch():
    from vitkit.engine.optim import build_optimizer

    torch.manual_seed(0)
    model = vitkit.create_model("vit_digits", depth=1, drop_path_rate=0.0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    big = vitkit.create_model("vit_digits", depth=1, drop_path_rate=0.0)
    big.load_state_dict(model.state_dict())
    opt_a, opt_b = build_optimizer(model, 1e-3, 0.05), build_optimizer(big, 1e-3, 0.05)
    for chunk in (slice(0, 8), slice(8, 16)):
        (torch.nn.functional.cross_entropy(model(x[chunk]), y[chunk]) / 2).backward()
    torch.nn.functional.cross_entropy(big(x), y).backward()
    opt_a.step()
    opt_b.step()
    for (n, p), q in zip(model.named_parameters(), big.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)


def test_weight_decay_groups():
    from vitkit.engine import param_groups_weight_decay

    model = vitkit.create_model("vit_digits", depth=1)
    decay, no_decay = param_groups_weight_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert {"pos_embed", "cls_token"} <= {names[id(p)] for p in no_decay["params"]}


def test_schedule_warms_up_then_decays():
    from vitkit.engine import warmup_cosine_schedule

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = warmup_cosine_schedule(opt, warmup_steps=10, total_steps=100, min_lr_ratio=0.01)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[50] < lrs[20] and lrs[-1] == pytest.approx(0.01, abs=0.01)


def test_config_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown training option 'lrate'.*did you mean lr"):
        resolve_config(lrate=0.1)
    with pytest.raises(ValueError, match="unknown recipe 'imagenet'"):
        resolve_config("imagenet")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        resolve_config(epochs=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nbatchsize: 8\n")
    with pytest.raises(ValueError, match="unknown training option 'batchsize'"):
        resolve_config(config_file=bad)


def test_yaml_config_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("recipe: digits\nepochs: 7\nlr: 0.01\n")
    cfg = resolve_config(config_file=f, lr=0.02)
    assert cfg.recipe == "digits" and cfg.epochs == 7 and cfg.lr == 0.02 and cfg.model == "vit_digits"


def test_cli_train_eval_predict_end_to_end(tmp_path, capsys):
    args = ["train", "--epochs", "2", "--out-dir", str(tmp_path), "--name", "cli", "--no-progress",
            "--model-args", '{"depth": 1, "embed_dim": 32, "num_heads": 2}']  # fmt: skip
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "val top-1" in out and "run directory" in out
    run = tmp_path / "cli"
    files, following = out.strip().splitlines()[-2:]  # the run ends naming its files and the next commands
    for name in ("model.safetensors", "curves.png", "confusion_matrix.png", "eval.json", "metrics.jsonl"):
        assert name in files.split("files: ")[1].split(", ")
    assert following == f"next: vitkit eval {run} · vitkit predict {run} IMAGE · vitkit serve {run}"
    assert cli_main(["eval", str(run)]) == 0
    assert "top1" in capsys.readouterr().out.lower().replace("-", "")
    from PIL import Image

    Image.new("L", (8, 8), color=200).save(tmp_path / "x.png")
    assert cli_main(["predict", str(run), str(tmp_path / "x.png"), "--topk", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result[0]["top"]) == 3


def test_python_api_mirrors_the_cli(tmp_path):
    summary = vitkit.train(**TINY, epochs=2, out_dir=str(tmp_path), name="api")
    run = Path(summary["run_dir"])
    assert vitkit.train.train is vitkit.train.__dict__["train"]  # the module stays a module
    metrics = vitkit.evaluate(run)
    assert metrics["num_samples"] == 360 and metrics["top1"] == pytest.approx(summary["val_acc"], abs=1e-6)
    result = vitkit.predict(run, [np.full((8, 8), 0.5, dtype=np.float32)], topk=2)
    assert len(result) == 1 and len(result[0]["top"]) == 2


def test_channels_last_trains_like_contiguous(tmp_path):
    losses = []
    for cl in (False, True):  # each Trainer seeds the global RNG: build and run one after the other
        trainer = build_trainer(
            resolve_config(**TINY, epochs=1, channels_last=cl, out_dir=str(tmp_path), name=str(cl))
        )
        assert trainer.memory_format == (torch.channels_last if cl else torch.contiguous_format)
        losses.append(trainer.train_one_epoch()["train_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)  # same math, another memory layout


def test_cli_bad_flags_fail_clearly(tmp_path, capsys):
    assert cli_main(["train", "--model", "vit_digitz", "--out-dir", str(tmp_path), "--no-progress"]) == 2
    assert "did you mean 'vit_digits'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["train", "--epochs", "many"])
    assert "invalid" in capsys.readouterr().err
    assert cli_main(["train", "--dataset", "imagenet21k", "--out-dir", str(tmp_path), "--no-progress"]) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_compile_step(tmp_path):
    cfg = resolve_config(**TINY, epochs=8, device="cuda", compile=True, out_dir=str(tmp_path), name="gpu")
    trainer = build_trainer(cfg)
    assert trainer.use_bf16
    summary = trainer.fit()
    assert summary["val_acc"] > 0.5, summary


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_none_on_the_command_line_turns_an_option_off(tmp_path):
    """``--clip-grad none`` sets clip_grad to None (it used to be taken as "not given" and kept the default 1.0)."""
    import yaml

    assert cli_main(["train", "--clip-grad", "none", "--epochs", "1", "--model-args", '{"depth": 1}', "--threads",
                     "1", "--no-progress", "--out-dir", str(tmp_path), "--name", "off"]) == 0  # fmt: skip
    cfg = yaml.safe_load((tmp_path / "off" / "config.yaml").read_text())
    assert cfg["clip_grad"] is None and cfg["epochs"] == 1


def test_a_recipes_warmup_keeps_its_fraction_of_a_shortened_run(caplog):
    """`vitkit train --epochs 2` used to warm up for the digits recipe's 5 epochs (13.9% top-1: the lr never came up)."""
    import logging

    from vitkit.engine.config import resolve_config

    with caplog.at_level(logging.INFO, logger="vitkit.engine.config"):
        cfg = resolve_config("digits", epochs=2)
    assert cfg.warmup_epochs == pytest.approx(4 * 2 / 110)
    assert "warmup scaled to 0.0727 epochs: the recipe's 4 of 110 epochs" in caplog.text
    assert resolve_config("digits").warmup_epochs == 4  # the recipe as written
    assert resolve_config("digits", epochs=2, warmup_epochs=1).warmup_epochs == 1  # the user's own is kept
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitkit.engine.config"):
        assert (
            resolve_config(epochs=3).warmup_epochs == 5
        )  # the default, longer than the run: said, not hidden
    assert "warmup_epochs=5 is not shorter than the run (3 epochs)" in caplog.text


def test_a_run_records_its_data_as_absolute_paths_and_names_its_folder_without_them(tmp_path, monkeypatch):
    from vitkit.engine.config import resolve_config
    from vitkit.tasks.base import dataset_label

    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "book.txt").write_text("some text\n")
    assert resolve_config(data_dir="data").data_dir == str(tmp_path / "data")
    assert resolve_config(dataset="folder:imgs").dataset == f"folder:{tmp_path / 'imgs'}"
    assert resolve_config(task="lm", dataset="book.txt", model="gpt_nano").dataset == str(
        tmp_path / "book.txt"
    )
    assert resolve_config(dataset="digits").dataset == "digits"  # a name stays a name
    assert dataset_label(f"folder:{tmp_path / 'imgs'}") == "folder-imgs"
    assert (
        dataset_label(str(tmp_path / "book.txt")) == "book"
        and dataset_label("multi30k-de-en") == "multi30k-de-en"
    )


def test_off_a_terminal_a_run_prints_a_line_per_epoch_and_a_heartbeat_not_bars(caplog):
    import io
    import logging

    from vitkit.engine.progress import RunProgress

    def run(enabled: bool) -> str:
        caplog.clear()
        progress = RunProgress(enabled, True, 0, 2, 3, heartbeat_s=0.0, stream=io.StringIO())  # a log file
        assert not progress.bars
        with caplog.at_level(logging.INFO, logger="vitkit.engine.trainer"):
            for epoch in progress:
                progress.start_epoch(epoch)
                for i in range(3):
                    progress.step(i, torch.tensor(1.25), 1e-3, (i + 1) * 8, "tokens")
                progress.end_epoch({"epoch": epoch + 1, "train_loss": 1.25, "val_loss": 1.5, "tokens_per_s": 80.0,
                                    "lr": 1e-3, "elapsed": 3.0}, "val_loss")  # fmt: skip
            progress.close()
        return caplog.text

    text = run(enabled=True)
    assert "epoch 2/2  train_loss 1.2500  val_loss 1.5000  80 tokens/s  lr 1.00e-03  3 s" in text
    assert "epoch 1: step 3/3  loss 1.2500" in text and "tokens/s" in text
    quiet = run(enabled=False)  # --no-progress: the epoch lines, no heartbeat
    assert "epoch 1/2" in quiet and "step" not in quiet


def test_curves_plot_each_tasks_own_figure_or_none(tmp_path):
    from PIL import Image

    from vitkit.plots import plot_training_curves
    from vitkit.tasks import get_task

    records = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "val_perplexity": 8.0 / e, "lr": 1e-3}
               for e in (1, 2, 3)]  # fmt: skip
    lm = get_task("lm").quality_curve
    assert lm == ("Perplexity", "validation perplexity", "perplexity", "min")
    three = plot_training_curves(records, tmp_path / "lm.png", quality=lm)
    two = plot_training_curves(records, tmp_path / "mae.png", quality=get_task("mae").quality_curve)
    assert get_task("mae").quality_curve is None
    assert Image.open(two).width < 0.75 * Image.open(three).width  # no empty accuracy panel
