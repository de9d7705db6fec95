"""Short, seeded runs of every task, for pinning the training behaviour across refactors.

``python tests/task_scenarios.py OUT.json`` runs each scenario (one thread, CPU) and writes, per scenario, the
per-epoch metrics (timings left out) and a fingerprint of the final weights: per tensor its float64 sum and sum of
absolute values, and a SHA-256 of all the bytes. ``tests/test_task_pins.py`` runs them again and compares with
``tests/data/task_pins.json``, which was written by the code *before* the task-engine refactor (commit 5018d6e).
The scenarios use only the public Python API that exists on both sides of that change.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TIMINGS = ("elapsed", "train_time", "images_per_s")
COMMON = dict(epochs=2, threads=1, progress=False)


def _sst2(root: Path) -> Path:
    good = ["a great film", "wonderful and moving", "truly great acting", "a joy to watch", "great fun"]
    bad = ["a dull mess", "boring and awful", "truly awful acting", "a waste of time", "dull fun"]
    rows = [(s, 1) for s in good] + [(s, 0) for s in bad]
    folder = root / "sst2"
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in (("train", rows * 4), ("dev", rows)):
        with gzip.open(folder / f"{split}.tsv.gz", "wt", encoding="utf-8") as f:
            f.write("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in items))
    return root


# WordPiece training in `tokenizers` orders tied tokens differently from run to run (a hash map), so the text
# scenarios read one vocabulary, trained once on these sentences and kept beside the pins.
SST2_TOKENIZER = str(Path(__file__).parent / "data" / "tiny_sst2_tokenizer.json")


def _multi30k(root: Path, sizes: tuple[int, int, int] = (96, 24, 24)) -> Path:
    """A word-for-word German -> English toy language in Multi30k's layout: (train, val, test) sentence counts."""
    rng = random.Random(0)
    words = ["hund", "katze", "mann", "frau", "kind", "ball", "haus", "baum"]
    english = dict(zip(words, ["dog", "cat", "man", "woman", "child", "ball", "house", "tree"], strict=True))
    folder = root / "multi30k" / "task1" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "val", "test_2016_flickr"), sizes, strict=True):
        de = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) for _ in range(n)]
        en = [" ".join(english[w] for w in line.split()) for line in de]
        for lang, lines in (("de", de), ("en", en)):
            with gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return root


def _canvases(root: Path, masks: bool) -> str:
    from vitkit.data.canvas import make_canvases, write_coco

    items = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    items[0, :, 4:24, 4:24] = 255
    items[1, :, 2:26, 11:17] = 255
    items[2, :, 8:20, 2:26] = 160
    images, targets, m = make_canvases(items, torch.tensor([0, 1, 2]), num_images=8, canvas=32, objects=(1, 2),
                                       scale=(0.4, 0.6), seed=0)  # fmt: skip
    for split in ("train", "val"):
        write_coco(root / split, images, targets, ["square", "bar", "slab"], m if masks else None)
    return f"coco:{root}"


def _classification(tmp: Path) -> dict:
    from vitkit.train import train

    return train(dataset="digits", model="vit_digits", model_args={"depth": 2}, batch_size=64, lr=2e-3,
                 warmup_epochs=1, pad_crop=1, mixup=0.2, cutmix=0.5, mix_prob=0.5, ema_decay=0.9, accum_steps=2,
                 out_dir=str(tmp), name="run", **COMMON)  # fmt: skip


def _finetune_distill(tmp: Path) -> dict:
    from vitkit.train import train

    train(dataset="digits", model="vit_digits", model_args={"depth": 1}, batch_size=128, out_dir=str(tmp),
          name="teacher", epochs=1, threads=1, progress=False)  # fmt: skip
    train(dataset="digits", init_from=str(tmp / "teacher"), finetune_mode="linear", batch_size=128,
          out_dir=str(tmp), name="probe", **COMMON)  # fmt: skip
    return train(dataset="digits", model="deit_tiny_distilled_patch16_224",
                 model_args={"img_size": 8, "patch_size": 2, "depth": 1, "embed_dim": 32, "num_heads": 2}, teacher=str(tmp / "teacher"), distill="soft", distill_alpha=0.5,
                 batch_size=128, out_dir=str(tmp), name="run", **COMMON)  # fmt: skip


def _text(tmp: Path) -> dict:
    from vitkit.train import train

    data = _sst2(tmp / "data")
    return train(dataset="sst2", data_dir=str(data), model="bert_tiny", model_args={"depth": 1}, batch_size=8,
                 tokenizer=SST2_TOKENIZER, lr=3e-3, warmup_epochs=1, out_dir=str(tmp), name="run", **COMMON)  # fmt: skip


def _mae(tmp: Path) -> dict:
    from vitkit.train import pretrain

    return pretrain("mae", model="mae_vit_digits", dataset="digits", batch_size=128, lr=2e-3, warmup_epochs=0.5,
                    drop_path=0.0, out_dir=str(tmp), name="run", **COMMON)  # fmt: skip


def _mlm(tmp: Path) -> dict:
    from vitkit.train import pretrain

    data = _sst2(tmp / "data")
    return pretrain("mlm", dataset="sst2", data_dir=str(data), model="bert_tiny", model_args={"depth": 1},
                    tokenizer=SST2_TOKENIZER, batch_size=8, lr=3e-3, warmup_epochs=1, out_dir=str(tmp), name="run", **COMMON)  # fmt: skip


def _translation(tmp: Path) -> dict:
    from vitkit.train import train_translation

    data = _multi30k(tmp / "data")
    return train_translation(dataset="multi30k-de-en", data_dir=str(data), model="transformer_tiny",
                             model_args={"vocab_size": 60}, batch_size=16, lr=3e-3, warmup_epochs=1,
                             schedule="inverse_sqrt", out_dir=str(tmp), name="run", **COMMON)  # fmt: skip


def _detection(tmp: Path) -> dict:
    from vitkit.train import train_detection

    return train_detection(dataset=_canvases(tmp / "data", masks=False), model="detr_vit_canvas", batch_size=4,
                           lr=2e-3, warmup_epochs=1, weight_decay=1e-4, drop_path=0.0,
                           model_args={"backbone_args": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
                                       "embed_dim": 32, "num_heads": 2, "num_queries": 4, "decoder_depth": 1},
                           out_dir=str(tmp), name="run", **COMMON)  # fmt: skip


def _segmentation(tmp: Path) -> dict:
    from vitkit.train import train_segmentation

    args = {"backbone_args": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}, "decoder_dim": 32,
            "decoder_depth": 1, "decoder_heads": 2}  # fmt: skip
    return train_segmentation(dataset=_canvases(tmp / "data", masks=True), model="segmenter_vit_canvas",
                              batch_size=4, lr=3e-3, warmup_epochs=1, model_args=args, out_dir=str(tmp),
                              name="run", **COMMON)  # fmt: skip


SCENARIOS: dict[str, Callable[[Path], dict]] = {
    "classification": _classification,
    "finetune_distill": _finetune_distill,
    "text_classification": _text,
    "mae": _mae,
    "mlm": _mlm,
    "translation": _translation,
    "detection": _detection,
    "segmentation": _segmentation,
}


def fingerprint(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = load_file(path)
    digest = hashlib.sha256()
    sums = {}
    for key in sorted(state):
        t = state[key]
        digest.update(key.encode() + t.contiguous().view(torch.uint8).numpy().tobytes())
        sums[key] = [float(t.double().sum()), float(t.double().abs().sum())]
    return {"sha256": digest.hexdigest(), "sums": sums}


def run_scenario(name: str, tmp: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    SCENARIOS[name](tmp)
    run = tmp / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    metrics = [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]
    return {"metrics": metrics, "weights": fingerprint(run / "model.safetensors")}


if __name__ == "__main__":
    import tempfile

    out = {}
    for name in sys.argv[2:] or SCENARIOS:
        with tempfile.TemporaryDirectory() as d:
            out[name] = run_scenario(name, Path(d))
            print(name, out[name]["weights"]["sha256"][:16], out[name]["metrics"][-1], flush=True)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
