"""GPT speed against HuggingFace ``transformers`` GPT-2, same weights, in one run on one machine.

For each config a ``transformers.GPT2LMHeadModel`` (sdpa attention, dropout off) is built and its weights are loaded
into vitkit's :class:`~vitkit.models.gpt.GPT` through ``vitkit.load_pretrained``; logits and 32 greedy tokens are
compared before anything is timed. Two measurements per config, interleaved round-robin between the libraries
(the table reports the median of the per-round ratios, [min-max] after it):

- ``train``: training tokens/s of a full step (forward + next-token cross-entropy + backward + AdamW) on random
  windows of ``block`` tokens, batch ``batch``;
- ``generate``: KV-cached greedy generation tokens/s (new tokens over wall time, prompt of 16 tokens, every row
  runs to ``--new-tokens``): vitkit's ``generate`` against HF ``model.generate``.

"outside load" is how many CPU cores other processes used meanwhile (0 on a quiet machine).

    .venv/bin/python benchmarks/bench_gpt.py                       # CPU: ~4 min on 2 quiet cores
    .venv/bin/python benchmarks/bench_gpt.py --device cuda --configs gpt2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_models import OutsideLoad, machine_info  # noqa: E402

# name: (n_layer, n_head, n_embd, vocab, block, train batch, generate batch)
CONFIGS = {
    "char-micro": (4, 4, 128, 65, 64, 12, 4),  # nanoGPT's CPU Shakespeare model
    "char-small": (6, 6, 384, 65, 256, 8, 4),  # nanoGPT's shakespeare_char GPU model
    "gpt2": (12, 12, 768, 50257, 256, 2, 1),  # GPT-2 124M, context cut to 256 on CPU
}


def build(name: str, device: str, context: int):
    from refs import import_transformers

    import vitkit
    from vitkit.models.gpt import GPT
    from vitkit.weights.hf_gpt2 import gpt2_config_from_hf

    tr = import_transformers()
    layers, heads, dim, vocab, block, _, _ = CONFIGS[name]
    cfg = tr.GPT2Config(vocab_size=vocab, n_positions=max(block, context), n_embd=dim,
                        n_layer=layers, n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    cfg._attn_implementation = "sdpa"
    hf = tr.GPT2LMHeadModel(cfg).to(device)
    ours = GPT(**{**gpt2_config_from_hf(cfg.to_dict()), "drop_rate": 0.0, "attn_drop_rate": 0.0})
    vitkit.load_pretrained(ours, {k: v.cpu() for k, v in hf.state_dict().items()})
    return {"vitkit": ours.to(device), "HF": hf}


def check_parity(models, name: str, device: str) -> str:
    from vitkit.models.generation import generate

    vocab, block = CONFIGS[name][3], CONFIGS[name][4]
    x = torch.randint(0, vocab, (2, min(block, 64)), device=device)
    for m in models.values():
        m.eval()
    with torch.no_grad():
        diff = (models["vitkit"](x) - models["HF"](x).logits).abs().max().item()
    prompt = x[:1, :16]
    ours = generate(models["vitkit"], prompt, 32, do_sample=False)
    ref = models["HF"].generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False
    )
    return f"max |logit diff| {diff:.1e}, greedy 32 tokens {'equal' if ours.tolist() == ref.tolist() else 'DIFFER'}"


def train_step(lib: str, model, batch: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        x, y = batch[:, :-1], batch[:, 1:]
        if lib == "vitkit":
            _, loss = model(x, y)
        else:
            logits = model(x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def generate_step(lib: str, model, prompt: torch.Tensor, new_tokens: int):
    from vitkit.models.generation import generate

    def step() -> None:
        with torch.no_grad():
            if lib == "vitkit":
                out = generate(model, prompt, new_tokens, do_sample=False)
            else:
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False)  # fmt: skip
        assert out.shape[1] == prompt.shape[1] + new_tokens

    return step


def timed(fn, sync, calls: int = 1) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


def interleaved(steps: dict, sync, args) -> tuple[dict[str, list[float]], list[float], float | None]:
    """Seconds per call of each library's step over ``args.repeats`` round-robin rounds (each ~``args.min_time``,
    after a warm-up call that sizes it), the per-round ratios HF/vitkit (> 1: vitkit faster), and how many cores
    other processes used meanwhile."""
    calls = {lib: max(1, round(args.min_time / timed(fn, sync))) for lib, fn in steps.items()}  # warm-up too
    seconds = {lib: [] for lib in steps}
    load = OutsideLoad()
    for _ in range(args.repeats):
        for lib, fn in steps.items():
            seconds[lib].append(timed(fn, sync, calls[lib]))
    ratios = [h / v for v, h in zip(seconds["vitkit"], seconds["HF"], strict=True)]
    return seconds, ratios, load.cores()


def peer_arguments(p: argparse.ArgumentParser, repeats: int = 7) -> None:
    """The options every vitkit-against-a-peer speed script takes."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument(
        "--batch-scale", type=int, default=1, help="multiply the training batches (e.g. 16 on a GPU)"
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--min-time", type=float, default=1.5, help="seconds per measurement (calls are repeated)")


def machine_lines(args) -> str:
    """Sets ``--threads``; the markdown lines that say what machine and software measured."""
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype, args.compile, args.warmup = "float32", "off", 1
    info = machine_info(args, None)
    return "\n".join(f"- {k}: {v}" for k, v in info.items() if k not in ("timm", "peak TFLOP/s for MFU"))


def bench(name: str, mode: str, args, log) -> dict:
    layers, heads, dim, vocab, block, train_batch, gen_batch = CONFIGS[name]
    models = build(name, args.device, 16 + args.new_tokens)
    parity = check_parity(models, name, args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    if mode == "train":
        batch = torch.randint(0, vocab, (train_batch * args.batch_scale, block + 1), device=args.device)
        steps = {lib: train_step(lib, m.train(), batch) for lib, m in models.items()}
        work = batch.shape[0] * block
    else:
        prompt = torch.randint(0, vocab, (gen_batch, 16), device=args.device)
        steps = {lib: generate_step(lib, m.eval(), prompt, args.new_tokens) for lib, m in models.items()}
        work = gen_batch * args.new_tokens
    seconds, ratios, load = interleaved(steps, sync, args)
    row = {
        "config": f"{name} ({layers}L/{heads}H/{dim}, vocab {vocab}, ctx {block})",
        "mode": mode, "batch": (train_batch * args.batch_scale) if mode == "train" else gen_batch,
        "vitkit tok/s": work / statistics.median(seconds["vitkit"]), "HF tok/s": work / statistics.median(seconds["HF"]),
        "ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "load": load,
        "parity": parity,
    }  # fmt: skip
    log(f"{row['config']} {mode}: vitkit/HF {row['ratio']:.3f} [{row['min']:.3f}-{row['max']:.3f}]  {parity}")
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--modes", nargs="+", default=["train", "generate"], choices=["train", "generate"])
    p.add_argument("--new-tokens", type=int, default=64)
    peer_arguments(p)
    args = p.parse_args(argv)
    info = machine_lines(args)
    rows = [bench(name, mode, args, lambda s: print(s, file=sys.stderr, flush=True))
            for name in args.configs for mode in args.modes]  # fmt: skip
    print(info)
    print(
        "\n| config | mode | batch | vitkit tok/s | HF tok/s | vitkit/HF [min-max] | outside load | parity |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        load = "n/a" if r["load"] is None else f"{r['load']:.2f}"
        print(f"| {r['config']} | {r['mode']} | {r['batch']} | {r['vitkit tok/s']:.0f} | {r['HF tok/s']:.0f} | "
              f"{r['ratio']:.3f} [{r['min']:.3f}-{r['max']:.3f}] | {load} | {r['parity']} |")  # fmt: skip


if __name__ == "__main__":
    main()
