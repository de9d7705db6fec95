"""Language modelling: tokenizers (GPT-2 parity), the corpus reader and token streams, bad input, and a tiny GPT
that learns a toy language through the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vitkit.cli import main
from vitkit.data.lm import LMTokenizer, TokenBlocks, TokenWindows, encode_corpus, split_point, text_chunks

SAMPLE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    "Héllo wörld — naïve café, 12345 tabs\tand  double  spaces! ¿Qué? 😀 end.\n"
)


def test_byte_level_bpe_in_gpt2_files_tokenises_like_gpt2_tokenizer_fast(transformers, tmp_path):
    trained = LMTokenizer.train_bpe([SAMPLE * 20, "the quick brown fox jumps over the lazy dog\n" * 20], 400)
    trained.tokenizer.model.save(str(tmp_path))  # GPT-2's two files: vocab.json + merges.txt
    ours = LMTokenizer.from_file(tmp_path)
    ref = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)  # reads the folder as it reads GPT-2's own
    text = SAMPLE + " The lazy fox, unseen words: zebra quixotic."
    ids = ours.encode(text)
    assert len(ids) > 20 and ids == ref(text)["input_ids"]
    assert ours.decode(ids) == text == ref.decode(ids)  # byte level: any text round-trips


def test_character_tokenizer_round_trips_and_names_unknown_characters(tmp_path):
    tok = LMTokenizer.train_char([SAMPLE])
    assert tok.vocab_size == len(set(SAMPLE))
    ids = tok.encode("Speak, speak.\n\nAll:")
    assert len(ids) == len("Speak, speak.\n\nAll:") and tok.decode(ids) == "Speak, speak.\n\nAll:"
    tok.save(tmp_path / "tokenizer.json")
    again = LMTokenizer.from_file(tmp_path / "tokenizer.json")
    assert again.kind == "char" and again.encode(SAMPLE) == tok.encode(SAMPLE)
    with pytest.raises(ValueError, match=r"not in the model's character vocabulary: '#\$'"):
        tok.encode("Speak $ #")


def test_corpus_reader_splits_by_position_and_refuses_bad_files(tmp_path, monkeypatch):
    import vitkit.data.lm as lm

    monkeypatch.setattr(lm, "CHUNK_BYTES", 7)  # many chunks, boundaries inside the two-byte "é"
    text = "".join(f"line {i} é\n" for i in range(300)) + "no final newline é"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    cut = split_point(path, 0.9)
    raw = path.read_bytes()
    assert raw[:cut].decode() + raw[cut:].decode() == text  # the cut falls between characters
    assert "".join(text_chunks(path)) == text
    assert "".join(text_chunks(path, 0, cut)) + "".join(text_chunks(path, cut)) == text

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        list(text_chunks(empty))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text: byte 3"):
        list(text_chunks(latin))
    cut_char = tmp_path / "cut.txt"  # a bad byte right after a character cut by a chunk boundary
    cut_char.write_bytes(b"abcdef\xc3\xa9\xffgh\n")
    with pytest.raises(ValueError, match=r"byte 8 \(b'\\xff'\)"):
        list(text_chunks(cut_char))


def test_token_streams_are_memory_mapped_windows_drawn_anew_each_epoch(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abcdefghij" * 100)
    tok = LMTokenizer.train_char(text_chunks(path))
    tokens = encode_corpus(text_chunks(path), tok, tmp_path / "c.bin")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and len(tokens) == 1000
    windows = TokenWindows(tokens, block_size=8, num_windows=20, seed=0)
    first = [windows[i].tolist() for i in range(20)]
    assert all(len(w) == 9 for w in first)
    assert all(tok.decode(w) in "abcdefghij" * 3 for w in first)  # consecutive text
    windows.set_epoch(1)
    assert [windows[i].tolist() for i in range(20)] != first
    windows.set_epoch(0)
    assert [windows[i].tolist() for i in range(20)] == first  # a resume sees the same windows
    blocks = TokenBlocks(tokens, block_size=8)
    assert len(blocks) == 999 // 8
    assert blocks[1][0] == blocks[0][-1]  # overlapping by one: every token is a target exactly once


def _toy_language(path: Path, n: int = 3000) -> None:
    """A deterministic toy language: 'ab' repeated, then 'c', in lines of varying length."""
    rng = np.random.default_rng(0)
    path.write_text("".join("ab" * int(rng.integers(1, 6)) + "c\n" for _ in range(n)))


def test_a_tiny_gpt_learns_a_toy_language_through_the_cli(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "toy.txt"
    _toy_language(corpus)
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    argv = ["lm", "train", "--data", str(corpus), "--model", "gpt_nano", "--block-size", "32", "--batch-size", "16",
            "--epochs", "3", "--epoch-steps", "40", "--lr", "3e-3", "--warmup-epochs", "0.2", "--threads", "1",
            "--out-dir", str(tmp_path), "--name", "toy", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "toy"
    summary = json.loads((run / "summary.json").read_text())
    # entropy of the toy language per character is ~0.33 nats (only the line lengths are random): a model that
    # learned the grammar is far below the 1.1 nats (ln 3 of 4 symbols, uniform) it starts from
    assert summary["val_loss"] < 0.6, summary
    assert math.isclose(summary["val_perplexity"], math.exp(summary["val_loss"]), rel_tol=1e-6)
    for name in ("model.safetensors", "tokenizer.json", "samples.txt", "samples-final.txt", "curves.png"):
        assert (run / name).is_file(), name
    assert all(
        "tokens_per_s" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
    )

    capsys.readouterr()
    assert main(["lm", "generate", str(run), "--prompt", "ab", "--max-new-tokens", "40", "--greedy"]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln]
    assert all(set(ln) <= {"a", "b", "c"} and ln.endswith("c") for ln in lines[:-1])  # grammatical lines
    assert main(["lm", "eval", str(run), "--data", str(corpus)]) == 0
    assert "perplexity" in capsys.readouterr().out
    evaluations = (run / "samples.txt").read_text().count("===== evaluation")
    assert evaluations == sum(
        "val_loss" in json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()
    )
    assert (
        main(["lm", "generate", str(run), "--prompt", "ab", "--greedy", "--stop", "\\n"]) == 0
    )  # as typed: \n
    assert (
        capsys.readouterr().out.count("\n") == 1
    )  # stopped at the first line break (the print's own newline)
    for flag, value in (("--top-k", "-1"), ("--max-new-tokens", "-3")):  # argparse's exit 2, with the reason
        with pytest.raises(SystemExit):
            main(["lm", "generate", str(run), flag, value])
        assert f"{flag} must be >= 0" in capsys.readouterr().err
    assert main(["lm", "generate", str(run), "--prompt", "ab" * 40]) != 0  # 80 tokens > the context of 32
    out = capsys.readouterr()
    assert out.out == "" and "more than the model's context of 32" in out.err

    assert main(["lm", "generate", str(run), "--prompt", "abz"]) != 0
    out = capsys.readouterr()
    assert "character vocabulary: 'z'" in out.err and out.out == ""  # refused before anything is printed
    assert main(["lm", "generate", str(run), "--temperature", "0"]) != 0
    assert "temperature must be > 0" in capsys.readouterr().err


def test_windows_change_every_epoch_in_persistent_loader_workers(tmp_path):
    from vitkit.data.loader import make_loader

    path = tmp_path / "c.txt"
    path.write_text("".join(chr(97 + i % 26) for i in range(5000)))
    tok = LMTokenizer.train_char(text_chunks(path))
    windows = TokenWindows(encode_corpus(text_chunks(path), tok, tmp_path / "c.bin"), 16, 8, seed=3)
    loader = make_loader(windows, 8, shuffle=False, num_workers=1, seed=0)
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        windows.set_epoch(epoch)  # what the trainer does; the worker process must see it
        seen.append(next(iter(loader)).tolist())
    windows.set_epoch(1)
    assert seen[0] != seen[1]
    assert seen[1] == torch.stack([windows[i] for i in range(8)]).tolist()  # the main process draws the same


def test_generate_text_stops_at_stop_strings_and_eos_and_streams_exactly_what_it_returns():
    import torch

    from vitkit.models.gpt import GPT
    from vitkit.tasks.language_modeling import generate_text

    tok = LMTokenizer.train_bpe(["to be or not to be, that is the question\n" * 30], 300)
    assert tok.eos_id == 0
    torch.manual_seed(0)
    model = GPT(vocab_size=tok.vocab_size, block_size=64, embed_dim=32, depth=1, num_heads=2).eval()
    free = generate_text(model, tok, ["to be", "or"], 30, do_sample=False)
    assert all(free)
    pieces: list[str] = []
    stop = free[0][3:6]  # a stop string that occurs in the free continuation
    texts = generate_text(model, tok, ["to be", "or"], 30, do_sample=False, stop=[stop], stream=pieces.append)
    assert texts[0] == free[0][: free[0].find(stop)] and stop not in texts[0]
    assert "".join(pieces) == texts[0]  # never a part of the stop string, never a broken character
    with torch.no_grad():  # a model that always says <|endoftext|> after one token: empty continuations
        model.head = None
        model.token_embed.weight.zero_()
        model.token_embed.weight[0, 0] = 1.0
        model.norm.weight.fill_(0.0)
        model.norm.bias.zero_()
        model.norm.bias[0] = 1.0
    assert generate_text(model, tok, ["to be"], 10, do_sample=False) == [""]


def test_lm_training_refuses_empty_and_non_utf8_text_by_name(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello\n" * 50 + b"\xff\xfe broken\n")
    common = [
        "--model",
        "gpt_nano",
        "--epochs",
        "1",
        "--epoch-steps",
        "2",
        "--out-dir",
        str(tmp_path),
        "--no-progress",
    ]
    for path, message in ((empty, "empty.txt is empty"), (bad, "bad.txt is not UTF-8 text: byte 300"),
                          (tmp_path / "missing.txt", "text file not found")):  # fmt: skip
        assert main(["lm", "train", "--data", str(path), *common]) != 0
        assert message in capsys.readouterr().err


def test_an_lm_run_resumed_after_its_first_epoch_ends_with_the_same_weights(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from vitkit.train import train, train_lm

    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "toy.txt"
    _toy_language(corpus, 600)
    common = dict(dataset=str(corpus), model="gpt_nano", block_size=16, batch_size=8, epoch_steps=6,
                  lr=3e-3, warmup_epochs=1, threads=1, progress=False, out_dir=str(tmp_path))  # fmt: skip
    train_lm(**common, epochs=2, name="whole")  # epoch 1 is warmup in both schedules
    train_lm(**common, epochs=1, name="run")
    (tmp_path / "run" / "model.safetensors").unlink()
    train(resume=str(tmp_path / "run"), epochs=2, progress=False)
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("whole", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)
