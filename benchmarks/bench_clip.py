"""CLIP training speed against HuggingFace ``transformers`` ``CLIPModel``, same weights, in one run on one machine.

For each config a ``transformers.CLIPModel`` (sdpa attention, dropout off) is built with random weights, saved with
``save_pretrained`` and loaded into vitkit through :func:`vitkit.weights.clip_from_huggingface` (the path a user
takes); image and text embeddings and the loss are compared before anything is timed. Then a full contrastive
training step (both towers forward, CLIP's symmetric InfoNCE, backward, AdamW) is timed on the same random batch
of image-text pairs, interleaved round-robin between the libraries; the table reports pairs/s and the median of
the per-round ratios (vitkit/HF, > 1 = vitkit faster) with [min-max] after it.

"outside load" is how many CPU cores other processes used meanwhile (0 on a quiet machine).

    .venv/bin/python benchmarks/bench_clip.py                       # CPU: ~4 min on 2 quiet cores
    .venv/bin/python benchmarks/bench_clip.py --device cuda --batch-scale 16
    .venv/bin/python benchmarks/bench_clip.py --configs ViT-B/32 --lengths 8:24   # short captions, padded to 77
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_gpt import interleaved, machine_lines, peer_arguments  # noqa: E402

# name: (image size, patch, vision width/layers/heads, text width/layers/heads, context, embed dim, batch)
CONFIGS = {
    "tiny-32": (32, 4, 192, 6, 3, 128, 4, 4, 32, 128, 64),  # vitkit's clip_vit_tiny_patch4_32 shape
    "ViT-B/32": (224, 32, 768, 12, 12, 512, 12, 8, 77, 512, 16),  # OpenAI CLIP ViT-B/32
}


def build(name: str, device: str, folder: Path):
    from refs import import_transformers

    from vitkit.weights import clip_from_huggingface

    tr = import_transformers()
    size, patch, vw, vl, vh, tw, tl, th, ctx, dim, _ = CONFIGS[name]
    vision = dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl, num_attention_heads=vh,
                  image_size=size, patch_size=patch, attention_dropout=0.0)  # fmt: skip
    text = dict(hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=tl, num_attention_heads=th,
                max_position_embeddings=ctx, attention_dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    config = tr.CLIPConfig(text_config=text, vision_config=vision, projection_dim=dim)
    config._attn_implementation = "sdpa"
    hf = tr.CLIPModel(config)
    hf.save_pretrained(folder)
    ours = clip_from_huggingface(folder)
    return {"vitkit": ours.to(device), "HF": hf.to(device)}


def end_range(name: str, lengths: str | None) -> tuple[int, int]:
    """Where the captions' end-of-text tokens fall: ``LO:HI`` (positions LO..HI-1), default a quarter of the
    context to its end."""
    ctx = CONFIGS[name][8]
    try:
        lo, hi = (ctx // 4, ctx) if lengths is None else (int(v) for v in lengths.split(":"))
    except ValueError:
        raise SystemExit(f"--lengths {lengths}: expected LO:HI, two integers") from None
    if not 1 <= lo < hi <= ctx:
        raise SystemExit(f"--lengths {lengths}: need 1 <= LO < HI <= {ctx} (the context)")
    return lo, hi


def batch(name: str, device: str, scale: int, vocab: int, ends_in: tuple[int, int]):
    size, *_, ctx, _, b = CONFIGS[name]
    b *= scale
    g = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, size, size, generator=g)
    ids = torch.randint(1, vocab - 2, (b, ctx), generator=g)
    ends = torch.randint(*ends_in, (b,), generator=g)  # captions of different lengths, padded to the context
    mask = (torch.arange(ctx)[None] <= ends[:, None]).long()
    ids[torch.arange(b), ends] = vocab - 1  # the end-of-text id (HF pools at the largest id for this config)
    ids = ids * mask
    return images.to(device), ids.to(device), mask.to(device)


def losses(models, images, ids, mask) -> dict[str, torch.Tensor]:
    from vitkit.models import clip_loss

    out = models["vitkit"](images, ids, mask)
    ours = clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"], gather=False)
    ref = models["HF"](input_ids=ids, pixel_values=images, attention_mask=mask, return_loss=True).loss
    return {"vitkit": ours, "HF": ref}


def check_parity(models, images, ids, mask) -> str:
    for m in models.values():
        m.eval()
    with torch.no_grad():
        ours, ref = models["vitkit"], models["HF"]
        img = (
            (ours.encode_image(images) - ref.get_image_features(pixel_values=images).pooler_output)
            .abs()
            .max()
        )
        txt = (
            ours.encode_text(ids, mask)
            - ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        )
        loss = losses(models, images, ids, mask)
    return (f"max |image emb diff| {img.item():.1e}, |text emb diff| {txt.abs().max().item():.1e}, "
            f"|loss diff| {(loss['vitkit'] - loss['HF']).abs().item():.1e}")  # fmt: skip


def train_step(lib: str, model, images, ids, mask):
    from vitkit.models import clip_loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        if lib == "vitkit":
            out = model(images, ids, mask)
            loss = clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"], gather=False)
        else:
            loss = model(input_ids=ids, pixel_values=images, attention_mask=mask, return_loss=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench(name: str, args, log) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        models = build(name, args.device, Path(folder))
    vocab = models["HF"].config.text_config.vocab_size
    ends = end_range(name, args.lengths)
    images, ids, mask = batch(name, args.device, args.batch_scale, vocab, ends)
    parity = check_parity(models, images, ids, mask)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    steps = {lib: train_step(lib, m.train(), images, ids, mask) for lib, m in models.items()}
    seconds, ratios, load = interleaved(steps, sync, args)
    size, patch, vw, vl, vh, tw, tl, th, ctx, dim, _ = CONFIGS[name]
    pairs = images.shape[0]
    row = {
        "config": f"{name} (image {size}px/{patch}, {vl}L/{vw}; text {tl}L/{tw}, ctx {ctx}; embed {dim}; "
                  f"end-of-text at {ends[0]}-{ends[1] - 1})",
        "batch": pairs, "vitkit pairs/s": pairs / statistics.median(seconds["vitkit"]),
        "HF pairs/s": pairs / statistics.median(seconds["HF"]), "ratio": statistics.median(ratios),
        "min": min(ratios), "max": max(ratios), "load": load, "parity": parity,
    }  # fmt: skip
    log(f"{row['config']}: vitkit/HF {row['ratio']:.3f} [{row['min']:.3f}-{row['max']:.3f}]  {parity}")
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--lengths", default=None, metavar="LO:HI",
                   help="end-of-text positions drawn from LO..HI-1 (default: a quarter of the context to its end; "
                        "contexts: tiny-32 32, ViT-B/32 77); captions are padded to the context after it")  # fmt: skip
    peer_arguments(p)
    args = p.parse_args(argv)
    for name in args.configs:  # a bad --lengths is refused before minutes of work
        end_range(name, args.lengths)
    info = machine_lines(args)
    rows = [bench(name, args, lambda s: print(s, file=sys.stderr, flush=True)) for name in args.configs]
    print(info)
    print(
        "\n| config | batch (pairs) | vitkit pairs/s | HF pairs/s | vitkit/HF [min-max] | outside load | parity |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        load = "n/a" if r["load"] is None else f"{r['load']:.2f}"
        print(f"| {r['config']} | {r['batch']} | {r['vitkit pairs/s']:.1f} | {r['HF pairs/s']:.1f} | "
              f"{r['ratio']:.3f} [{r['min']:.3f}-{r['max']:.3f}] | {load} | {r['parity']} |")  # fmt: skip


if __name__ == "__main__":
    main()
