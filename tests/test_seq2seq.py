"""The encoder-decoder Transformer: causal masking, cached decoding, greedy and beam search, a learned toy task."""

from __future__ import annotations

import time

import pytest
import torch
from task_scenarios import _multi30k

import vitkit
from vitkit.models.seq2seq import Seq2SeqTransformer, beam_search, greedy_decode

PAD, BOS, EOS = 0, 2, 3


def _model(**kw) -> Seq2SeqTransformer:
    return vitkit.create_model("transformer_tiny", drop_rate=0.0, **kw).eval()


def test_causal_decoder_never_sees_future_tokens():
    model = _model()
    src = torch.randint(4, 64, (2, 7))
    tgt = torch.randint(4, 64, (2, 9))
    captured = []
    hook = model.embed.register_forward_hook(lambda m, i, o: captured.append(o) or o.retain_grad())
    logits = model(src, tgt)
    hook.remove()
    tgt_embed = captured[1]  # [0] is the source's embedding, [1] the target's
    t = 4
    logits[:, t].sum().backward()
    grad = tgt_embed.grad.abs().sum(-1)  # (B, T)
    assert (grad[:, : t + 1] > 0).all()  # it does depend on positions <= t ...
    assert (grad[:, t + 1 :] == 0).all()  # ... and on nothing later
    changed = tgt.clone()
    changed[:, t + 1 :] = torch.randint(4, 64, (2, 9 - t - 1))
    with torch.no_grad():
        torch.testing.assert_close(model(src, changed)[:, : t + 1], logits[:, : t + 1].detach())


def test_cached_decoding_matches_uncached():
    model = _model(max_len=64)
    src = torch.randint(4, 64, (4, 12))
    with torch.no_grad():
        memory, pad = model.encode(src)
        tgt = torch.randint(4, 64, (4, 10))
        full = model.decode(tgt, memory, pad)
        cache = model.new_cache()
        steps = torch.cat(
            [model.decode(tgt[:, i : i + 1], memory, pad, cache, start=i) for i in range(10)], 1
        )
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    cached, uncached = (
        greedy_decode(model, src, max_len=40),
        greedy_decode(model, src, max_len=40, use_cache=False),
    )
    assert torch.equal(cached, uncached)


def test_beam_of_one_is_greedy_and_beams_end_at_eos():
    model = _model()
    src = torch.randint(4, 64, (3, 8))
    assert torch.equal(
        beam_search(model, src, beam_size=1, max_len=20), greedy_decode(model, src, max_len=20)
    )
    out = beam_search(model, src, beam_size=4, max_len=20)
    assert out.shape[0] == 3 and out.shape[1] <= 20
    for row in out.tolist():  # after an EOS only padding follows
        if EOS in row:
            assert all(tok == PAD for tok in row[row.index(EOS) + 1 :])
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, beam_size=0)


def test_too_long_input_is_refused():
    model = _model(max_len=16)
    with pytest.raises(ValueError, match="longer than max_len=16"):
        model.encode(torch.randint(4, 64, (1, 17)))


def test_a_reversal_task_is_learned():
    torch.manual_seed(0)
    model = vitkit.create_model("transformer_tiny", vocab_size=16, drop_rate=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)

    def batch(n=64):
        src = torch.randint(4, 16, (n, 6))
        tgt = torch.cat([src.flip(1), torch.full((n, 1), EOS)], 1)
        return src, torch.cat([torch.full((n, 1), BOS), tgt[:, :-1]], 1), tgt

    start = time.perf_counter()
    for _ in range(400):
        src, tgt_in, tgt = batch()
        loss = torch.nn.functional.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src, _, tgt = batch(200)
    greedy = greedy_decode(model, src, max_len=7)
    beam = beam_search(model, src, beam_size=3, max_len=7)
    assert (greedy == tgt).float().mean() >= 0.95, f"token accuracy after {time.perf_counter() - start:.0f}s"
    assert (beam == tgt).float().mean() >= 0.95


def test_translation_trains_through_the_trainer_and_the_cli(tmp_path, capsys):
    import json

    from vitkit.cli import main

    data = _multi30k(tmp_path / "data", sizes=(240, 150, 150))
    rc = main(["translate", "train", "--data", "multi30k-de-en", "--data-dir", str(data), "--model", "transformer_tiny",
               "--model-args", '{"vocab_size": 60}', "--epochs", "20", "--batch-size", "32", "--lr", "3e-3",
               "--warmup-epochs", "1", "--schedule", "inverse_sqrt", "--label-smoothing", "0", "--threads", "1",
               "--eval-every", "1", "--no-progress", "--out-dir", str(tmp_path), "--name", "tr"])  # fmt: skip
    assert rc == 0
    run = tmp_path / "tr"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_bleu_greedy"] > 20 and summary["val_token_acc"] > 0.8  # a word-for-word toy language
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_bleu"] > records[0]["val_bleu"]
    capsys.readouterr()
    assert main(["translate", str(run), "hund katze", "--beam", "2"]) == 0
    assert "-> dog cat" in capsys.readouterr().out
    assert main(["translate", str(run), " "]) == 2
    assert main(["translate", "train", "--data", "multi30k-xx", "--data-dir", str(data)]) == 2
    assert "multi30k-SRC-TGT" in capsys.readouterr().err


def test_inverse_sqrt_schedule_warms_up_then_decays():
    from vitkit.engine.optim import inverse_sqrt_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = inverse_sqrt_schedule(opt, warmup_steps=4)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[15] == pytest.approx((4 / 16) ** 0.5)
