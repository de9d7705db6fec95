"""The ``vitkit`` command: one module per group of commands, every task through the same training command.

- :mod:`.train`: ``train`` (any task: ``--task NAME``), ``finetune``, ``pretrain``
- :mod:`.tasks`: ``translate``, ``detect``, ``segment`` (their ``train`` is ``vitkit train --task ...``)
- :mod:`.inference`: ``eval``, ``predict``, ``explain``, ``fewshot``, ``zeroshot``
- :mod:`.tools`: ``compress``, ``export``, ``serve``, ``models``, ``summary``
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

OWN_PARSERS = ("train", "finetune", "pretrain", "translate", "detect", "segment", "lm")


def build_parser() -> argparse.ArgumentParser:
    from .inference import add_inference_commands
    from .lm import add_lm_command
    from .tasks import add_task_commands
    from .tools import add_tool_commands
    from .train import add_training_commands

    parser = argparse.ArgumentParser(
        prog="vitkit",
        description="Vision Transformers and the Transformer family: train any task, evaluate, predict, explain, "
        "compress, export, serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")
    add_training_commands(sub)
    add_task_commands(sub)
    add_lm_command(sub)
    add_inference_commands(sub)
    add_tool_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # commands that parse their own flags (one parser per task) get every argument after their name as it is
    # (argparse's REMAINDER would take an option placed first as one of vitkit's)
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] in OWN_PARSERS:
        args = parser.parse_args(argv[: first + 1])
        args.rest = argv[first + 1 :]
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        from ..engine.runtime import TrainingInterrupted  # here: `vitkit models` / `--help` import no PyTorch

        if not isinstance(e, TrainingInterrupted):
            raise
        print(f"vitkit {args.command}: {e}", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        if args.verbose:
            raise
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
