"""Resume that cannot go wrong (issue 23, items 1-4): the checkpoint carries the config a resume trains with, every
file a run writes is atomic, a resume may change only how long the run goes on, a new run never writes into an old
run's folder, stale temp files are removed, and a divergence says what is really on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vitkit.cli import main
from vitkit.engine import TrainingDivergedError
from vitkit.tasks import build_trainer, resolve_task_config
from vitkit.train import train

TINY = dict(model="vit_digits", dataset="digits", model_args={"depth": 1, "embed_dim": 32, "num_heads": 2},
            batch_size=128, lr=2e-3, warmup_epochs=1, threads=1, progress=False)  # fmt: skip


def test_a_kill_while_config_yaml_is_written_loses_nothing(tmp_path, monkeypatch):
    """The write of config.yaml fails half-way (as a kill would): the old file stays whole, no temp file is left,
    and a resume trains with the checkpoint's own config even when config.yaml is empty."""
    train(**TINY, epochs=1, out_dir=str(tmp_path), name="run")
    run = tmp_path / "run"
    before = (run / "config.yaml").read_text()
    real = Path.write_text

    def torn(self, text, *a, **kw):  # writes half the text, then dies
        real(self, text[: len(text) // 2], *a, **kw)
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(Path, "write_text", torn)
    from vitkit.engine.config import resolve_config, save_config

    with pytest.raises(KeyboardInterrupt):
        save_config(resolve_config(**TINY), run / "config.yaml")
    monkeypatch.setattr(Path, "write_text", real)
    assert (run / "config.yaml").read_text() == before and not list(run.glob(".*.tmp"))

    (run / "config.yaml").write_text("")  # what a non-atomic write left in 4 of 12 kills
    whole = train(
        **TINY, epochs=2, out_dir=str(tmp_path), name="whole"
    )  # epoch 1 is warmup in both schedules
    resumed = train(resume=str(run), epochs=2, progress=False)
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == TINY["lr"]  # not the built-in 1e-3
    a, b = load_file(Path(whole["run_dir"]) / "model.safetensors"), load_file(run / "model.safetensors")
    assert resumed["epochs"] == 2 and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_changes_only_what_it_may(tmp_path, capsys):
    train(**TINY, epochs=1, out_dir=str(tmp_path), name="run")
    run = str(tmp_path / "run")
    assert main(["train", "--resume", run, "--lr", "1e6"]) == 2
    err = capsys.readouterr().err
    assert "cannot change lr (the run has 0.002)" in err and "start a new run" in err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["lr"] == TINY["lr"]
    assert (
        main(["train", "--resume", run, "--lr", "0.002", "--epochs", "2", "--no-progress"]) == 0
    )  # same lr: fine
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["epochs"] == 2 and cfg["lr"] == TINY["lr"]


def test_a_resume_reads_given_paths_as_the_run_recorded_them(tmp_path, monkeypatch):
    """The run records its data and weights as absolute paths; the same paths given relative are no change."""
    from vitkit.engine.config import resume_config

    (tmp_path / "data").mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"")
    saved = {
        "dataset": f"folder:{tmp_path / 'data'}",
        "init_from": str(tmp_path / "w.safetensors"),
        "epochs": 1,
    }
    monkeypatch.chdir(tmp_path)
    cfg = resume_config(saved, dataset="folder:data", init_from="w.safetensors", epochs=2)
    assert cfg.dataset == saved["dataset"] and cfg.init_from == saved["init_from"] and cfg.epochs == 2
    with pytest.raises(ValueError, match="cannot change init_from"):
        resume_config(saved, init_from="other.safetensors")


def test_a_new_run_never_writes_into_an_old_runs_folder(tmp_path, capsys):
    train(**TINY, epochs=1, out_dir=str(tmp_path), name="run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(
        FileExistsError, match=r"already holds a run \(checkpoint.pt, metrics.jsonl, model.safetensors"
    ):
        train(**TINY, epochs=1, out_dir=str(tmp_path), name="run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == lines  # nothing appended


def test_stale_temp_files_of_a_killed_run_are_removed_when_it_resumes(tmp_path):
    train(**TINY, epochs=1, out_dir=str(tmp_path), name="run")
    run = tmp_path / "run"
    stale = run / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"\0" * 4096)  # what kill -9 during torch.save leaves
    train(resume=str(run), epochs=2, progress=False)
    assert not stale.exists()


@pytest.mark.parametrize(("bad_call", "on_disk"), [(3, "No checkpoint was written yet"),
                                                    (30, "The last good checkpoint (epoch 1) is kept at")])  # fmt: skip
def test_divergence_says_what_is_on_disk(tmp_path, bad_call, on_disk):
    cfg = resolve_task_config(
        **{**TINY, "batch_size": 64}, epochs=3, out_dir=str(tmp_path), name=f"nan{bad_call}"
    )
    calls = {"n": 0}

    def loss_fn(logits, target, images):
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss * float("nan") if calls["n"] > bad_call else loss

    with pytest.raises(TrainingDivergedError, match=on_disk.replace("(", r"\(").replace(")", r"\)")):
        build_trainer(cfg, loss_fn=loss_fn).fit()


def test_vitkit_train_resume_keeps_the_runs_own_task(tmp_path, capsys):
    """``vitkit train --resume RUN`` of an MAE run resumes MAE (the --task flag's default used to replace it)."""
    from vitkit.train import pretrain

    pretrain("mae", model="mae_vit_digits", dataset="digits", epochs=1, batch_size=256, threads=1, progress=False,
             out_dir=str(tmp_path), name="mae")  # fmt: skip
    assert main(["train", "--resume", str(tmp_path / "mae"), "--epochs", "2", "--no-progress"]) == 0
    assert "val mae loss" in capsys.readouterr().out


def test_accumulating_more_batches_than_an_epoch_holds_is_refused(tmp_path):
    with pytest.raises(ValueError, match="accum_steps=64 is more than the 11 batches of an epoch"):
        train(**TINY, accum_steps=64, epochs=1, out_dir=str(tmp_path), name="acc")
    # too little data for one batch (the last, incomplete one is dropped) names --batch-size, not accum_steps
    with pytest.raises(ValueError, match=r"128 training items make no full batch of batch_size=256 .* lower "
                                         r"--batch-size to 128 or less"):  # fmt: skip
        train(**{**TINY, "batch_size": 256}, train_subset=128, epochs=1, out_dir=str(tmp_path), name="few")


def test_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path, capsys, monkeypatch):
    from vitkit.engine.trainer import Trainer

    real = Trainer.train_one_epoch

    def interrupted(self, progress=None):
        if self.epoch == 1:  # Ctrl-C during epoch 2, after epoch 1's checkpoint
            raise KeyboardInterrupt
        return real(self, progress)

    monkeypatch.setattr(Trainer, "train_one_epoch", interrupted)
    args = ["train", "--dataset", "digits", "--model", "vit_digits", "--model-args", '{"depth": 1, "embed_dim": 32, '
            '"num_heads": 2}', "--batch-size", "128", "--threads", "1", "--no-progress", "--epochs", "2",
            "--warmup-epochs", "1", "--out-dir", str(tmp_path)]  # fmt: skip
    assert main([*args, "--name", "run"]) == 130
    err = capsys.readouterr().err
    run = tmp_path / "run"
    assert (
        f"interrupted during epoch 2. The last good checkpoint (epoch 1) is kept at {run / 'checkpoint.pt'}"
        in err
    )
    assert f"resume with: vitkit train --resume {run}" in err and "Traceback" not in err
    monkeypatch.setattr(Trainer, "train_one_epoch", real)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2
