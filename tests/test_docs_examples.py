"""Every shell and Python example in README.md and docs/*.md runs, so a command that stops working fails the tests.

How a page runs (this is the one place that says it; docs/writing-docs.md points here):

- Each page runs in a fresh temporary folder ``T``: its examples' working directory is ``T/work`` and
  ``T/shared/data`` links to the datasets (``$VITKIT_DATA``, else ``../shared/data`` beside the repository), so
  ``--data-dir ../shared/data`` resolves as it does beside this checkout. ``$VITKIT_DATA`` is unset (an example
  must name its data) and ``$HOME`` is ``T/home``. A page's blocks run in order: a block may use what earlier
  ones wrote.
- ```` ```bash ````/```` ```sh ```` blocks: a block made only of plain ``vitkit ...`` lines runs each line in this
  process through ``vitkit.cli.main`` (what the ``vitkit`` script calls: it spares a new interpreter and 4-5 s of
  imports per line); any other block runs as one bash script (``set -euo pipefail``) with this environment's
  scripts (``vitkit``, ``python``, ``torchrun``) first on ``PATH``, as after ``source .venv/bin/activate``.
  ```` ```console ```` blocks: their ``$ `` lines, the same way. A non-zero exit status fails the page.
- ```` ```python ```` blocks run in this process, in one namespace per page.
- ```` ```text ````, ```` ```yaml ```` and other blocks are output or file contents and do not run.
- Short settings: a command that trains gets ``SHORT[task]`` appended (argparse keeps a flag's last value), and
  the commands in ``SHORT_TOOLS`` get theirs; ``--resume`` lines get nothing (they continue a shortened run).
- A comment on the line before a block changes how it runs:
  ``<!-- docs-test: skip (REASON) -->`` (not run; the reason is reported), ``<!-- docs-test: slow -->`` (runs
  only in the ``slow`` test of the page, e.g. anything on real datasets) and ``<!-- docs-test: file NAME -->``
  (the block's text is written to ``NAME``, e.g. a YAML config a later command reads).

``test_page_examples`` runs the fast blocks of every page (CI); ``test_page_examples_slow`` (``-m slow``) runs
every block that is not skipped.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL = ("bash", "sh", "console")
RUN = (*SHELL, "python")
DATA = "../shared/data"

# What a training command gets appended, per task: one epoch; where the task takes --train-subset, a
# class-balanced 256 training items (at least one batch of every recipe); for a language model five batches.
SHORT = {
    "classification": ["--epochs", "1", "--train-subset", "256"],
    "text-classification": ["--epochs", "1", "--train-subset", "256"],
    "translation": ["--epochs", "1", "--train-subset", "256"],
    "mae": ["--epochs", "1"],
    "mlm": ["--epochs", "1"],
    "detection": ["--epochs", "1"],
    "segmentation": ["--epochs", "1"],
    "lm": ["--epochs", "1", "--epoch-steps", "5"],
    "contrastive": ["--epochs", "1", "--train-subset", "256"],
}
# Other commands whose full settings take minutes: the words that start them, and what they get appended.
SHORT_TOOLS = {
    ("detect", "make-canvas"): ["--train", "64", "--val", "16"],
    ("lm", "generate"): ["--max-new-tokens", "20"],
    ("export",): ["--no-bench"],
}
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<kind>\w+)\s*(?P<arg>.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    directive: str = ""  # skip / slow / file
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def runs(self) -> bool:
        return (self.lang in RUN and self.directive != "skip") or self.directive == "file"


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` with the directive on the line before each (blank lines between allowed)."""
    lines, blocks, i = page.read_text().splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        indent = len(m["indent"])
        text = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        d = DIRECTIVE.search(before)
        blocks.append(Block(page, i + 1, m["lang"], text, d["kind"] if d else "", d["arg"] if d else ""))
        i = end + 1
    return blocks


def commands(block: Block) -> list[str]:
    """The command lines of a shell block: continuations joined, comments and blank lines dropped."""
    text = block.text
    if block.lang == "console":
        text = "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ "))
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = strip_comment(line).strip()
        if line:
            out.append(line)
    return out


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` outside quotes, at the start or after a blank)."""
    outside = unquoted(line)
    for i, c in enumerate(outside):
        if c == "#" and (i == 0 or outside[i - 1].isspace()):
            return line[:i]
    return line


def unquoted(line: str) -> str:
    """``line`` with the text inside quotes blanked out, but for what the shell expands inside double quotes
    (``$``, backquotes)."""
    out, quote = [], None
    for c in line:
        if quote:
            quote = None if c == quote else quote
            out.append(c if quote is None or (quote == '"' and c in "$`") else " ")
        else:
            quote = c if c in "'\"" else None
            out.append(c)
    return "".join(out)


def plain_vitkit(line: str) -> list[str] | None:
    """The arguments of a ``vitkit ...`` line that needs no shell (no expansions or operators), else None."""
    if not line.startswith("vitkit ") or any(c in unquoted(line) for c in "$`~|&;<>()*?[\\"):
        return None
    return shlex.split(line)[1:]


def short_settings(argv: list[str]) -> list[str]:
    """What the command with arguments ``argv`` (after ``vitkit``) gets appended to run briefly."""
    if "--help" in argv or "-h" in argv or "--resume" in argv:
        return []
    for words, extra in SHORT_TOOLS.items():
        if tuple(argv[: len(words)]) == words:
            return extra
    task = training_task(argv)
    return SHORT[task] if task else []


def training_task(argv: list[str]) -> str | None:
    """The task a training command line trains, as the CLI decides it; None for any other command."""
    from vitkit.cli.train import _task_from_argv

    fixed = {("translate", "train"): "translation", ("detect", "train"): "detection",
             ("segment", "train"): "segmentation", ("lm", "train"): "lm"}  # fmt: skip
    if tuple(argv[:2]) in fixed:
        return fixed[tuple(argv[:2])]
    if argv[:1] == ["pretrain"]:
        return "mlm" if "--method" in argv and argv[argv.index("--method") + 1 :][:1] == ["mlm"] else "mae"
    if argv[:1] in (["train"], ["finetune"]):
        return _task_from_argv(argv[1:]) or "classification"
    return None


def shortened(line: str) -> str:
    """``line`` with its short settings appended (a ``vitkit`` or ``torchrun ... -m vitkit`` command)."""
    try:
        words = shlex.split(line)
    except ValueError:
        return line
    if words[:1] == ["vitkit"]:
        argv = words[1:]
    elif words[:1] == ["torchrun"] and "-m" in words and words[words.index("-m") + 1 :][:1] == ["vitkit"]:
        argv = words[words.index("-m") + 2 :]
    else:
        return line
    if any(c in unquoted(line) for c in "|&;<>"):
        return line
    return " ".join([line, *map(shlex.quote, short_settings(argv))])


class Page:
    """Runs one page's blocks in order in a fresh folder (see the module docstring)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, data: Path | None) -> None:
        self.work, self.namespace = root / "work", {"__name__": "__docs__"}
        self.work.mkdir()
        (root / "home").mkdir()
        if data is not None:
            (root / "shared").mkdir()
            (root / "shared" / "data").symlink_to(data)
        monkeypatch.chdir(self.work)
        monkeypatch.delenv("VITKIT_DATA", raising=False)
        monkeypatch.setenv("HOME", str(root / "home"))
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}  # fmt: skip

    def run(self, block: Block) -> None:
        if block.directive == "file":
            (self.work / block.arg).parent.mkdir(parents=True, exist_ok=True)
            (self.work / block.arg).write_text(block.text)
        elif block.lang == "python":
            self.python(block)
        else:
            lines = commands(block)
            if all(plain_vitkit(line) is not None for line in lines):
                for line in lines:
                    self.vitkit(block, line)
            else:
                self.bash(block, lines)

    def python(self, block: Block) -> None:
        out = io.StringIO()
        threads = torch.get_num_threads()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block.text, block.where, "exec"), self.namespace)
        except Exception as e:
            raise AssertionError(
                f"{block.where}: the Python example failed: {e!r}\n{out.getvalue()[-3000:]}"
            ) from e
        finally:
            torch.set_num_threads(threads)

    def vitkit(self, block: Block, line: str) -> None:
        from vitkit.cli import main

        argv = shlex.split(shortened(line))[1:]
        out, threads = io.StringIO(), torch.get_num_threads()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    status = main(argv)
                except SystemExit as e:  # argparse's errors and --help
                    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            torch.set_num_threads(threads)
        assert status == 0, f"{block.where}: `{line}` exited with {status}:\n{out.getvalue()[-3000:]}"

    def bash(self, block: Block, lines: list[str]) -> None:
        script = "set -euo pipefail\n" + "\n".join(map(shortened, lines)) + "\n"
        proc = subprocess.run(["bash", "-c", script], cwd=self.work, env=self.env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert proc.returncode == 0, (
            f"{block.where}: the shell example exited with {proc.returncode}:\n{script}\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )


def data_root() -> Path | None:
    root = Path(os.environ.get("VITKIT_DATA", REPO.parent / "shared" / "data"))
    return root if root.is_dir() else None


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def run_page(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: bool) -> None:
    blocks = [b for b in read_blocks(page) if b.runs and (slow or b.directive != "slow")]
    if not any(b.lang in RUN for b in blocks):
        pytest.skip(
            f"{page_id(page)}: no example to run here ({'all skipped' if slow else 'slow or skipped'})"
        )
    needs_data = any(DATA in b.text for b in blocks)
    if needs_data and data_root() is None:
        pytest.skip(f"{page_id(page)}: its examples read the datasets at {DATA} (set VITKIT_DATA to them)")
    runner = Page(tmp_path, monkeypatch, data_root() if needs_data else None)
    for block in blocks:
        start = time.perf_counter()
        runner.run(block)
        print(f"{block.where} {block.lang} {time.perf_counter() - start:.1f}s")


def pages_with(kinds: tuple[str, ...]) -> list[Path]:
    """The pages with a block to run whose directive is one of ``kinds``."""
    return [p for p in PAGES if any(b.lang in RUN and b.directive in kinds for b in read_blocks(p))]


@pytest.mark.parametrize("page", pages_with(("",)), ids=page_id)
def test_page_examples(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with(("", "slow")), ids=page_id)
def test_page_examples_slow(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch, slow=True)


def test_every_block_runs_or_says_why(capsys):
    """Directives are known, a skip gives its reason, a fast block needs no dataset files; the counts are
    reported (pytest -s shows them)."""
    counts, reasons = {"fast": 0, "slow": 0, "skip": 0}, {}
    for page in PAGES:
        for b in read_blocks(page):
            assert b.directive in ("", "skip", "slow", "file"), (
                f"{b.where}: unknown directive {b.directive!r}"
            )
            if b.directive == "file":
                assert b.arg and not b.arg.startswith("/"), f"{b.where}: `file` needs a relative file name"
            if b.lang not in RUN:
                continue
            if b.directive == "skip":
                assert re.fullmatch(r"\(.+\)", b.arg), f"{b.where}: a skip needs its reason: skip (why)"
                reasons[b.arg] = reasons.get(b.arg, 0) + 1
            elif b.directive != "slow":
                assert DATA not in b.text, f"{b.where}: reads {DATA}: mark it <!-- docs-test: slow -->"
            counts[b.directive or "fast"] += 1
    with capsys.disabled():
        print(
            f"\ndocs examples: {counts['fast']} run in CI, {counts['slow']} slow, {counts['skip']} not run:"
        )
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            print(f"  {n} x {reason}")
    assert counts["fast"] >= 10


def test_the_vitkit_script_is_the_function_the_examples_call():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="vitkit")
    assert script.value == "vitkit.cli:main"


def test_the_cli_reference_names_every_command():
    from vitkit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = (REPO / "docs" / "cli.md").read_text()
    missing = [name for name in sub.choices if f"vitkit {name}" not in text]
    assert not missing, f"docs/cli.md does not describe: {missing}"


def test_short_settings_reach_the_right_task():
    assert short_settings(["train"]) == SHORT["classification"]
    assert short_settings(["train", "--data", "sst2"]) == SHORT["text-classification"]
    assert short_settings(["pretrain", "--method", "mlm", "--data", "sst2"]) == SHORT["mlm"]
    assert short_settings(["pretrain", "--recipe", "mae-fashion-mnist"]) == SHORT["mae"]
    assert short_settings(["lm", "train"]) == SHORT["lm"]
    assert short_settings(["train", "--resume", "runs/x"]) == []
    assert short_settings(["eval", "runs/x"]) == []
    line = "torchrun --standalone --nproc_per_node=2 -m vitkit train --threads 1"
    assert shortened(line) == line + " --epochs 1 --train-subset 256"
    assert strip_comment("vitkit predict runs/x 'a # b'  # note") == "vitkit predict runs/x 'a # b'  "
    assert plain_vitkit("vitkit models 'deit_*'") == ["models", "deit_*"]
    assert (
        plain_vitkit("vitkit models deit_*") is None and plain_vitkit("vitkit train --out-dir $HOME") is None
    )
