"""``vitkit lm``: train a GPT on a text, generate with it, score a text.

``vitkit lm train [flags]`` is ``vitkit train --task lm`` (default recipe ``shakespeare-char``);
``vitkit lm generate RUN --prompt TEXT`` samples continuations, streaming them to the terminal;
``vitkit lm eval RUN --data FILE`` prints the model's loss and perplexity on a whole text file.
"""

from __future__ import annotations

import argparse
import sys

from .options import add_own_parser
from .train import run_training, train_parser

__all__ = ["add_lm_command"]

_ACTIONS = [
    "train [flags]                    train a GPT (recipe shakespeare-char's settings; --data FILE.txt for any text)",
    'generate RUN --prompt "ROMEO:"   sample continuations, streamed (--temperature, --top-k, --top-p, --seed)',
    "eval RUN --data FILE             loss and perplexity of the model on a text file",
]


def _generate(rest: list[str]) -> int:
    from ..tasks.language_modeling import generate_text, load_lm

    p = argparse.ArgumentParser(
        prog="vitkit lm generate", description="sample text from a trained language model"
    )
    p.add_argument("run", help="a language-model run directory (model.safetensors + tokenizer.json)")
    p.add_argument("--prompt", default="\n", help="the text to continue (default: a line break)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="> 0; lower is more conservative")
    p.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens (0: all)")
    p.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling: the smallest set with this mass"
    )
    p.add_argument("--greedy", action="store_true", help="always the most likely token (no sampling)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--stop", action="append", default=None,
                   help="a string that ends a sample (repeatable; escapes such as \\n are read: --stop '\\n\\n')")  # fmt: skip
    a = p.parse_args(rest)
    if a.num_samples < 1:
        p.error(f"--num-samples must be >= 1, got {a.num_samples}")
    if a.top_k < 0:
        p.error(f"--top-k must be >= 0 (0: every token), got {a.top_k}")
    if a.max_new_tokens < 0:
        p.error(f"--max-new-tokens must be >= 0, got {a.max_new_tokens}")
    stops = [s.encode("latin-1", "backslashreplace").decode("unicode_escape") for s in a.stop or []]
    from ..models.generation import check_sampling

    check_sampling(not a.greedy, a.temperature, a.top_k or None, a.top_p)
    model, tokenizer = load_lm(a.run)
    ids = tokenizer.encode(
        a.prompt
    )  # characters outside a character vocabulary are refused before anything prints
    if len(ids) > model.block_size:
        raise ValueError(
            f"the prompt has {len(ids)} tokens, more than the model's context of {model.block_size}"
        )
    for i in range(a.num_samples):
        if a.num_samples > 1:
            print(f"----- sample {i + 1}")
        sys.stdout.write(a.prompt)

        def stream(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        generate_text(model, tokenizer, [a.prompt], a.max_new_tokens, do_sample=not a.greedy,
                      temperature=a.temperature, top_k=a.top_k or None, top_p=a.top_p, seed=a.seed + i,
                      stop=stops, stream=stream)  # fmt: skip
        print()
    return 0


def _eval(rest: list[str]) -> int:
    from ..tasks.language_modeling import load_lm, perplexity_of_text

    p = argparse.ArgumentParser(prog="vitkit lm eval", description="loss and perplexity of a language model")
    p.add_argument("run", help="a language-model run directory")
    p.add_argument("--data", required=True, help="a UTF-8 text file (scored whole)")
    p.add_argument(
        "--batch-size", type=int, default=8, help="windows per forward pass (logits: batch x context x vocab)"
    )
    a = p.parse_args(rest)
    model, tokenizer = load_lm(a.run)
    result = perplexity_of_text(model, tokenizer, a.data, a.batch_size)
    print(
        f"{a.data}: {result['tokens']} tokens  loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}"
    )
    return 0


def _train(rest: list[str]) -> int:
    p = train_parser("lm", "vitkit lm train", "train a GPT language model (next-token prediction)")
    argv = rest  # the language-model recipe's settings unless another recipe, a config or a resume is named;
    if not any(a in argv for a in ("--recipe", "--config", "--resume")):  # --data / --model replace its own
        argv = ["--recipe", "shakespeare-char", *argv]
    return run_training(p, argv)


def cmd_lm(args: argparse.Namespace) -> int:
    actions = {"train": _train, "generate": _generate, "eval": _eval}
    if not args.rest or args.rest[0] in ("-h", "--help"):
        print("usage: vitkit lm ACTION ...\n\nactions:")
        for line in _ACTIONS:
            print(f"  {line}")
        print("\n'vitkit lm ACTION --help' lists an action's flags.")
        return 0
    action, *rest = args.rest
    if action not in actions:
        raise ValueError(f"unknown lm action {action!r}: {', '.join(actions)}")
    return actions[action](rest)


def add_lm_command(sub) -> None:
    add_own_parser(sub, "lm", cmd_lm, "'lm train' trains a GPT on a text; 'lm generate RUN' samples from it")
