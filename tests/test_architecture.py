"""docs/architecture.md's walk-through: the toy task it adds (under 100 lines) trains through the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_the_toy_task_of_the_architecture_page_trains(tmp_path, monkeypatch, capsys):
    from vitkit.tasks import TASKS

    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(code.splitlines()) < 100
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(code, str(DOC), "exec"), {"__name__": "toy"})
        line = capsys.readouterr().out.strip().splitlines()[-1]
        mse = float(re.match(r"val mse ([\d.]+) after 30 epochs", line).group(1))
        assert mse < 1e-3  # learned w (the noise alone gives 1e-4); a model that learned nothing: ~200
        records = [
            json.loads(r) for r in (tmp_path / "runs" / "toy" / "metrics.jsonl").read_text().splitlines()
        ]
        assert len(records) == 30 and records[-1]["val_mse"] < records[0]["val_mse"] / 100
        assert "train_acc" not in records[-1]  # a task without accuracy logs none
        for name in ("checkpoint.pt", "model.safetensors", "curves.png", "summary.json", "config.yaml"):
            assert (tmp_path / "runs" / "toy" / name).stat().st_size > 0
    finally:
        TASKS.pop("toy-regression", None)
