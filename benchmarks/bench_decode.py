"""Decoding speed and quality of the encoder-decoder: KV-cached against uncached greedy decoding, greedy against beam.

With a translation run (``--run``) it decodes Multi30k ``test_2016_flickr`` and reports BLEU too; without one it
times a freshly initialised model of ``--model`` on random source ids (every step runs to ``--max-len``). Cached and
uncached decoding must give the same tokens; the table prints the time ratio.

    .venv/bin/python benchmarks/bench_decode.py --model transformer_small
    .venv/bin/python benchmarks/bench_decode.py --run runs/de-en --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _timed(fn, repeats: int = 3):
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="a translation run directory")
    p.add_argument("--model", default="transformer_small")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--sentences", type=int, default=256, help="random sources when no --run")
    p.add_argument("--max-len", type=int, default=48)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import vitkit
    from vitkit.models.seq2seq import beam_search, greedy_decode

    torch.manual_seed(0)
    rows = []
    if args.run:
        from vitkit.data.translation import parse_pair, read_multi30k
        from vitkit.tasks.translation import corpus_bleu, load_translator

        model, tok = load_translator(args.run)
        _, src_lang, tgt_lang = parse_pair(model_data(args.run))
        sources, refs = read_multi30k(args.data_dir, "test", src_lang, tgt_lang)
        src = tok(sources, model.max_len)["input_ids"]
        what = f"{args.run} on test_2016_flickr ({len(sources)} sentences)"
    else:
        model = vitkit.create_model(args.model).eval()
        src = torch.randint(5, model.embed.num_embeddings, (args.sentences, 20))
        what = f"random {args.model}, {args.sentences} random 20-token sources, {args.max_len} steps"
    model.eval()
    t_cache, cached = _timed(lambda: greedy_decode(model, src, args.max_len))
    t_plain, plain = _timed(lambda: greedy_decode(model, src, args.max_len, use_cache=False), repeats=1)
    same = torch.equal(cached, plain)
    rows.append(("greedy, KV cache", f"{t_cache:.2f}", f"{len(src) / t_cache:.0f}", "1.00x", ""))
    rows.append(("greedy, no cache", f"{t_plain:.2f}", f"{len(src) / t_plain:.0f}", f"{t_plain / t_cache:.2f}x",
                 f"same tokens: {same}"))  # fmt: skip
    t_beam, beam = _timed(lambda: beam_search(model, src, args.beam, args.max_len), repeats=1)
    rows.append(
        (
            f"beam {args.beam}, KV cache",
            f"{t_beam:.2f}",
            f"{len(src) / t_beam:.0f}",
            f"{t_beam / t_cache:.2f}x",
            "",
        )
    )
    if args.run:
        for i, ids in ((0, cached), (2, beam)):
            hyps = [tok.decode(r) for r in ids.tolist()]
            rows[i] = rows[i][:4] + (f"BLEU {corpus_bleu(hyps, refs):.2f}",)
    print(
        f"# Decoding: {what}\n\ntorch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads\n"
    )
    print("| decoding | seconds | sentences/s | time vs cached greedy | note |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def model_data(run: str) -> str:
    import json

    from vitkit.weights import read_metadata

    return json.loads(read_metadata(Path(run) / "model.safetensors")["data_config"])["dataset"]


if __name__ == "__main__":
    main()
