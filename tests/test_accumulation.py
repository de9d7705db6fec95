"""Gradient accumulation over token-level losses gives the full batch's gradient (issue: short sentences were
over-weighted because each micro-batch's loss was a mean over its own tokens)."""

from __future__ import annotations

import torch
from task_scenarios import _multi30k, _sst2

from vitkit.tasks import build_trainer, resolve_task_config


def _trainer(task: str, data, accum: int, batch: int, **kw):
    cfg = resolve_task_config(task=task, data_dir=str(data), accum_steps=accum, batch_size=batch, threads=1,
                              progress=False, clip_grad=0, out_dir="/nonexistent", **kw)  # fmt: skip
    return build_trainer(cfg)


def _gradients(trainer, raws: list) -> dict[str, torch.Tensor]:
    """The gradient the optimizer would step with after the micro-batches ``raws`` (one accumulation cycle)."""
    seen = {}
    trainer.optimizer.step = lambda: seen.update(
        {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    )
    trainer.model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    weight = 0
    for i, raw in enumerate(raws):
        _, out = trainer._micro_step(raw, stepping=i == len(raws) - 1)
        weight += out.get("weight", 0)
    trainer._optimizer_step(weight if "loss_sum" in out else None)
    return seen


def _cosine(a: dict, b: dict) -> float:
    x = torch.cat([a[k].flatten() for k in sorted(a)])
    y = torch.cat([b[k].flatten() for k in sorted(b)])
    return float(x @ y / (x.norm() * y.norm()))


def _short_and_long(dataset, pad: int) -> tuple[list[int], list[int]]:
    order = (dataset.targets != pad).sum(1).argsort()
    return order[:2].tolist(), order[-2:].tolist()


def test_translation_accumulation_equals_the_full_batch(tmp_path):
    data = _multi30k(tmp_path / "data")
    args = dict(dataset="multi30k-de-en", model="transformer_tiny", label_smoothing=0.1,
                model_args={"vocab_size": 60, "drop_rate": 0.0})  # fmt: skip
    micro, whole = _trainer("translation", data, 2, 2, **args), _trainer("translation", data, 1, 4, **args)
    ds, pad = micro.train_data, micro.task.tokenizer.pad_id
    short, long = _short_and_long(ds, pad)
    tokens = [int((ds.targets[idx][:, 1:] != pad).sum()) for idx in (short, long)]
    assert tokens[1] >= 2 * tokens[0]  # micro-batches of very different lengths
    both = short + long
    full = _gradients(whole, [(ds.raw[both], ds.targets[both])])
    accumulated = _gradients(micro, [(ds.raw[short], ds.targets[short]), (ds.raw[long], ds.targets[long])])
    for k in full:
        torch.testing.assert_close(accumulated[k], full[k], rtol=1e-4, atol=1e-6, msg=k)
    # what the per-micro-batch mean gave: clearly another direction (the bug this pins)
    naive = {k: (a + b) / 2 for k, a, b in zip(full, *(_gradients(whole, [(ds.raw[i], ds.targets[i])]).values()
                                                        for i in (short, long)), strict=False)}  # fmt: skip
    assert _cosine(naive, full) < 0.999


def test_mlm_accumulation_divides_by_the_masked_tokens_of_the_whole_batch(tmp_path):
    """MLM: the accumulated gradient is that of (sum of both micro-batches' masked-token losses) / (their count),
    not the mean of the two micro-batch means (which over-weights the micro-batch with fewer masked tokens)."""
    from task_scenarios import SST2_TOKENIZER

    data = _sst2(tmp_path / "data")
    trainer = _trainer("mlm", data, 2, 4, dataset="sst2", model="bert_tiny", tokenizer=SST2_TOKENIZER,
                       model_args={"depth": 1, "drop_rate": 0.0, "attn_drop_rate": 0.0})  # fmt: skip
    ids = trainer.train_data.raw
    raws = [(ids[0:2], torch.zeros(2)), (ids[2:10], torch.zeros(8))]  # few and many masked tokens

    def micro_steps():
        torch.manual_seed(0)  # the same masks every time
        return _gradients(trainer, raws)

    engine = micro_steps()
    torch.manual_seed(0)
    trainer.optimizer.zero_grad(set_to_none=True)
    outs = [trainer.task.step(trainer.model, trainer.task.train_batch(raw)) for raw in raws]
    counts = [o["weight"] for o in outs]
    assert counts[1] >= 2 * counts[0] > 0
    (sum(o["loss_sum"] for o in outs) / sum(counts)).backward()
    by_hand = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    for k in by_hand:
        torch.testing.assert_close(engine[k], by_hand[k], rtol=1e-4, atol=1e-6)
    trainer.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    outs = [trainer.task.step(trainer.model, trainer.task.train_batch(raw)) for raw in raws]
    (sum(o["loss"] for o in outs) / 2).backward()  # the mean of micro-batch means
    naive = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert _cosine(naive, by_hand) < 0.999
