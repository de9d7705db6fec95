"""Hostile files get one clear line naming the file and the problem, before anything is built or run (issue 23,
items 9 and 10)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.weights import CheckpointError


def _with_metadata(tmp_path: Path, **changes) -> Path:
    good = tmp_path / "good.safetensors"
    vitkit.save(vitkit.create_model("vit_digits"), good)
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    meta.update(changes)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(good), bad, metadata={k: v for k, v in meta.items() if v is not None})
    return bad


def test_a_file_claiming_a_huge_model_is_refused_before_it_is_built(tmp_path):
    """Width 65536 x depth 48 would be ~10 TB of weights: the header's shapes are checked against the config on
    the meta device first, so the refusal names the mismatch instead of trying to allocate."""
    config = vitkit.create_model("vit_digits").config | {"embed_dim": 65536, "depth": 48, "num_heads": 64}
    bad = _with_metadata(tmp_path, config=json.dumps(config))
    with pytest.raises(CheckpointError, match=r"bad.safetensors does not fit the model its metadata describes: "
                                              r"cls_token: \(1, 1, 64\) in the file, \(1, 1, 65536\) from its config"):  # fmt: skip
        vitkit.load(bad)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"config": json.dumps(vitkit.create_model("vit_digits").config | {"extra": 1})},
      "its metadata config has arguments the vit family does not take: extra"),
     ({"config": "[1, 2]"}, "its metadata config is a list, not a mapping of arguments"),
     ({"family": None}, r"its metadata names no model family \(key 'family'\)"),
     ({"family": "vit_nonexistent"}, "vit_nonexistent")],
)  # fmt: skip
def test_bad_metadata_is_named(tmp_path, changes, message):
    with pytest.raises(CheckpointError, match=message):
        vitkit.load(_with_metadata(tmp_path, **changes))


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_resuming_a_checkpoint_that_holds_code_is_refused_without_unsafe_advice(tmp_path, monkeypatch):
    from vitkit.engine.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    torch.save({"model": {}, "x": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "checkpoint.pt")
    text = str(err.value)
    assert "checkpoint.pt" in text and "refusing" in text and "never executed" in text
    assert "weights_only=False" not in text and not (tmp_path / "pwned.txt").exists()


def test_a_torch_file_with_an_unknown_suffix_is_read_as_torch(tmp_path, monkeypatch):
    """A torch.save zip named .weights: its refusal of pickled code is reported, not an .npz reader's error."""
    from vitkit.weights import read_checkpoint

    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.weights")
    assert torch.equal(read_checkpoint(tmp_path / "plain.weights")[0]["w"], torch.ones(2))
    torch.save({"x": Payload()}, tmp_path / "code.weights")
    with pytest.raises(CheckpointError, match="refusing to load .*code.weights: it holds pickled objects"):
        read_checkpoint(tmp_path / "code.weights")
    assert not (tmp_path / "pwned.txt").exists()


def test_a_cifar_batch_holding_code_is_refused_in_one_line(tmp_path, capsys):
    """The restricted unpickler's refusal reaches the user as one line from the CLI, not a traceback."""
    import pickle

    from vitkit.cli import main

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]:  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(Payload()))
    code = main(["train", "--data", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--no-progress",
                 "--out-dir", str(tmp_path / "runs")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "refusing to unpickle" in err and "posix.system" in err and "Traceback" not in err
    assert not (tmp_path / "pwned.txt").exists()
