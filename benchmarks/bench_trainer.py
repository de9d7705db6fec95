"""Does the training loop cost anything beyond the model's own step? Trainer vs bare step vs data pipeline.

For one model config and batch size, three things are timed in interleaved rounds (the order rotates each
round, so machine noise falls on all alike) and reported as images/s (median over rounds):

- ``bare step``: forward + cross-entropy + backward + ``AdamW.step()`` + ``zero_grad`` on one fixed batch that
  already sits on the device: exactly what ``benchmarks/bench_models.py`` calls a training step;
- ``trainer``: ``Trainer.train_one_epoch`` over an in-memory dataset of the same shape, with everything a real
  recipe switches on: batch loading, the recipe's kornia augmentation, normalisation, label smoothing (or
  mixup/cutmix), gradient clipping, the warmup-cosine scheduler, EMA when the recipe has it, loss and accuracy
  bookkeeping. Its images/s is what ``metrics.jsonl`` reports;
- ``data only``: the same loader + augmentation + normalisation with no model: how far data preparation is
  from being the bottleneck (it should be many times the step rate).

The ratio ``trainer / bare step`` is the loop's efficiency; the target is >= 0.95.

    .venv/bin/python benchmarks/bench_trainer.py                                # fashion-mnist recipe, CPU
    .venv/bin/python benchmarks/bench_trainer.py --recipe cifar10 --steps 20
    .venv/bin/python benchmarks/bench_trainer.py --recipe cifar10 --device cuda --batch-size 512 --steps 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # vitkit, also without an editable install

import vitkit  # noqa: E402
from vitkit.data import TensorImageDataset  # noqa: E402
from vitkit.tasks import build_trainer  # noqa: E402
from vitkit.tasks import resolve_task_config as resolve_config  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--recipe", default="fashion-mnist", help="training recipe whose model and augmentation to use"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per measurement")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = resolve_config(args.recipe, device=args.device, batch_size=args.batch_size, progress=False,
                         out_dir=str(ROOT / "runs" / "bench_trainer"), eval_every=10**6, save_every=10**6)  # fmt: skip
    model = vitkit.create_model(cfg.model, **cfg.model_args)
    c, (h, w) = model.config["in_chans"], model.config["img_size"]
    n = cfg.batch_size * args.steps
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, model.num_classes, (n,), generator=g)
    data = TensorImageDataset(images, targets, [str(i) for i in range(model.num_classes)])

    trainer = build_trainer(cfg, train_data=data, val_data=data)
    device = trainer.device
    bare = vitkit.create_model(cfg.model, drop_path_rate=cfg.drop_path, **cfg.model_args)
    bare = bare.to(device, memory_format=trainer.memory_format).train()
    bare.load_state_dict(trainer.model.state_dict())
    opt = torch.optim.AdamW(bare.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    first = trainer.task.eval_batch((images[: cfg.batch_size], targets[: cfg.batch_size]))
    x0, y0 = first["inputs"], first["labels"]  # normalised, in the trainer's memory format

    def bare_steps() -> float:
        _sync(device)
        t = time.perf_counter()
        for _ in range(args.steps):
            with trainer._autocast():
                loss = F.cross_entropy(bare(x0).float(), y0)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        return n / (time.perf_counter() - t)

    def trainer_epoch() -> float:
        return trainer.train_one_epoch()["images_per_s"]

    def data_only() -> float:
        _sync(device)
        t = time.perf_counter()
        for batch in trainer.train_loader:
            trainer.task.train_batch(batch)
        _sync(device)
        return n / (time.perf_counter() - t)

    fns = {"bare step": bare_steps, "trainer": trainer_epoch, "data only": data_only}
    for fn in fns.values():  # warm-up: allocator, AdamW state, kornia policies
        fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    ratios = []
    names = list(fns)
    for r in range(args.repeats):
        order = names[r % 3 :] + names[: r % 3]
        got = {k: fns[k]() for k in order}
        for k, v in got.items():
            rates[k].append(v)
        ratios.append(got["trainer"] / got["bare step"])
        print(
            f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v:.1f}" for k, v in got.items()),
            file=sys.stderr,
        )

    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"recipe {args.recipe}: model {cfg.model}, batch {cfg.batch_size}, {args.steps} steps per measurement, "
          f"{args.repeats} rounds, device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    print()
    print("| what | img/s (median) | range |")
    print("|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {med[k]:.1f} | {min(v):.1f}-{max(v):.1f} |")
    print()
    print(
        f"trainer / bare step: {statistics.median(ratios):.3f} (per-round ratios {min(ratios):.3f}-{max(ratios):.3f})"
    )
    print(f"data only / trainer: {med['data only'] / med['trainer']:.1f}x (data preparation headroom)")


if __name__ == "__main__":
    main()
