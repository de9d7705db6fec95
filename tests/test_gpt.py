"""GPT: HuggingFace GPT-2 parity (weights, logits, greedy generation), the causal mask, the KV cache, left-padded
batches, top-k / top-p support, seeded sampling, rotary positions, and the context-length refusal."""

from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.models.generation import filter_logits, generate, left_pad
from vitkit.models.gpt import GPT
from vitkit.weights.hf_gpt2 import gpt2_config_from_hf, gpt2_from_huggingface

CONFIGS = [
    dict(vocab_size=97, n_positions=48, n_embd=32, n_layer=2, n_head=4),
    dict(
        vocab_size=131, n_positions=64, n_embd=48, n_layer=3, n_head=3, n_inner=96, activation_function="gelu"
    ),
]


def _hf_pair(transformers, config: dict, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**config, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=1, pad_token_id=0)  # fmt: skip
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    return hf, cfg


@pytest.mark.parametrize("config", CONFIGS, ids=["gelu_new", "gelu-n_inner"])
def test_gpt2_checkpoint_in_its_own_format_loads_with_equal_logits_and_greedy_tokens(
    transformers, tmp_path, config
):
    hf, cfg = _hf_pair(transformers, config)
    hf.save_pretrained(
        tmp_path / "gpt2"
    )  # HF's own folder: config.json + model.safetensors (tied head dropped)
    model = gpt2_from_huggingface(tmp_path / "gpt2").eval()
    x = torch.randint(0, cfg.vocab_size, (3, 21))
    with torch.no_grad():
        ref, ours = hf(x).logits, model(x)
    assert (ref - ours).abs().max() < 1e-5

    # load_pretrained into a registry-built model takes the same folder, and a plain state dict
    other = vitkit.create_model("gpt_nano", **gpt2_config_from_hf(cfg.to_dict()))
    vitkit.load_pretrained(other, tmp_path / "gpt2")
    assert torch.equal(
        other.state_dict()["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"]
    )

    prompt = x[:1, :6]
    want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    got = generate(model, prompt, 20, do_sample=False)
    assert got.tolist() == want.tolist()


def test_a_gpt2_state_dict_with_an_untied_head_is_refused_into_a_tied_model(transformers):
    hf, cfg = _hf_pair(transformers, CONFIGS[0])
    state = dict(hf.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    model = GPT(**gpt2_config_from_hf(cfg.to_dict()))
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        vitkit.load_pretrained(model, state)


def _tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(
        **{"vocab_size": 50, "block_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 4, **kw}
    ).eval()


@pytest.mark.parametrize("pos_embed", ["learned", "rope"])
def test_causal_mask_leaks_nothing_from_later_tokens(pos_embed):
    model = _tiny(pos_embed=pos_embed)
    x = torch.randint(0, 50, (1, 12))
    emb = model.token_embed(x).detach().requires_grad_(True)
    model.token_embed.forward = lambda ids: emb  # differentiate with respect to the embedded inputs
    t = 5
    model(x)[0, t].sum().backward()
    grad = emb.grad[0].abs().sum(-1)
    assert torch.all(grad[t + 1 :] == 0)  # exactly zero: no path from a later input
    assert torch.all(grad[: t + 1] > 0)


@pytest.mark.parametrize("pos_embed", ["learned", "rope"])
def test_kv_cached_generation_equals_uncached_token_for_token(pos_embed):
    model = _tiny(pos_embed=pos_embed)
    prompt = torch.randint(0, 50, (2, 7))
    cached = generate(model, prompt, 20, do_sample=False, use_cache=True)
    full = generate(model, prompt, 20, do_sample=False, use_cache=False)
    assert cached.tolist() == full.tolist()
    # the cached logits themselves match a full forward
    cache = model.new_cache()
    with torch.no_grad():
        step = torch.cat([model(prompt[:, :4], cache=cache)[:, -1:], model(prompt[:, 4:], cache=cache)], 1)
        whole = model(prompt)[:, 3:]
    assert torch.allclose(step, whole, atol=1e-5)


@pytest.mark.parametrize("pos_embed", ["learned", "rope"])
def test_left_padded_batch_continues_each_prompt_as_alone(pos_embed):
    model = _tiny(pos_embed=pos_embed)
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15]]
    ids, mask = left_pad(prompts)
    batched = generate(model, ids, 12, attention_mask=mask, do_sample=False)[:, ids.shape[1] :]
    for row, p in zip(batched.tolist(), prompts, strict=True):
        alone = generate(model, torch.tensor([p]), 12, do_sample=False)[0, len(p) :]
        assert row == alone.tolist()


def test_left_padded_batch_equals_huggingface_generate(transformers):
    hf, cfg = _hf_pair(transformers, CONFIGS[0])
    model = GPT(**{**gpt2_config_from_hf(cfg.to_dict()), "drop_rate": 0.0, "attn_drop_rate": 0.0}).eval()
    vitkit.load_pretrained(model, hf.state_dict())
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12, 13]], pad_id=0)
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=False, pad_token_id=0)
    got = generate(model, ids, 15, attention_mask=mask, do_sample=False)
    assert got.tolist() == want.tolist()


def test_top_k_and_top_p_keep_exactly_the_right_support():
    logits = torch.tensor([[2.0, 1.0, 0.5, 3.0, -1.0]]).log_softmax(-1)  # probabilities ~ .23 .09 .05 .63 .01
    keep = lambda f: (f > float("-inf")).nonzero()[:, 1].tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [0, 3]
    assert keep(filter_logits(logits, top_k=1)) == [3]
    assert keep(filter_logits(logits, top_p=0.5)) == [3]  # the top token alone already holds 0.63
    assert keep(filter_logits(logits, top_p=0.8)) == [0, 3]  # 0.63 < 0.8 <= 0.63 + 0.23
    assert keep(filter_logits(logits, top_p=0.9)) == [0, 1, 3]
    assert keep(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3, 4]
    p = torch.tensor([[0.5, 0.3, 0.2]]).log()  # the nucleus is the smallest set whose mass reaches p
    assert keep(filter_logits(p, top_p=0.8)) == [0, 1]
    assert keep(filter_logits(p, top_k=2, top_p=0.5)) == [0]


def test_sampling_follows_the_filtered_distribution_and_a_seed_reproduces_it():
    model = _tiny()
    prompt = torch.randint(0, 50, (4, 3))

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, prompt, 15, temperature=0.9, top_k=5, generator=g).tolist()

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    g = torch.Generator().manual_seed(0)
    out = generate(model, prompt, 1, top_k=1, generator=g)  # top_k=1 sampling is greedy
    assert out.tolist() == generate(model, prompt, 1, do_sample=False).tolist()


def test_bad_settings_and_contexts_are_refused_by_name():
    model = _tiny()
    x = torch.randint(0, 50, (1, 33))
    with pytest.raises(ValueError, match="33 tokens is longer than the model's context of 32"):
        model(x)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(model, x[:, :4], 3, temperature=0.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        generate(model, x[:, :4], 3, top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        generate(model, x[:, :4], 3, top_k=0)
    # past the context the window slides instead (nanoGPT): the output keeps growing
    assert generate(model, x[:, :30], 10, do_sample=False).shape == (1, 40)


def test_saved_gpt_reloads_and_drops_into_a_trainer_step(tmp_path):
    model = _tiny(pos_embed="rope")
    vitkit.save(model, tmp_path / "gpt.safetensors")
    again = vitkit.load(tmp_path / "gpt.safetensors").eval()
    x = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    logits, loss = again.train()(x[:, :-1], x[:, 1:])
    loss.backward()
    assert logits.shape == (2, 9, 50) and torch.isfinite(loss)
    # GPT-2 init: residual projections are smaller than the other linears
    big = GPT(vocab_size=10, block_size=8, embed_dim=64, depth=8, num_heads=4)
    assert big.blocks[0].mlp.fc2.weight.std() < 0.6 * big.blocks[0].mlp.fc1.weight.std()


def test_past_the_context_the_window_slides_as_nanogpt_crops_it():
    for pos_embed in ("learned", "rope"):
        model = _tiny(pos_embed=pos_embed)
        x = torch.randint(0, 50, (2, 28))
        want = x.clone()
        with torch.no_grad():
            for _ in range(12):  # nanoGPT: idx[:, -block_size:], full forward, last position's argmax
                nxt = model(want[:, -model.block_size :])[:, -1].argmax(-1, keepdim=True)
                want = torch.cat([want, nxt], 1)
        assert generate(model, x, 12, do_sample=False).tolist() == want.tolist()


def test_generate_refuses_a_right_padded_mask():
    model = _tiny()
    ids = torch.tensor([[5, 6, 0]])
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, 3, attention_mask=torch.tensor([[1, 1, 0]]), do_sample=False)
    model.train()  # interrupted mid-generation (e.g. Ctrl-C while streaming), the model's mode comes back

    def interrupt(tokens):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(model, ids[:, :2], 3, do_sample=False, on_tokens=interrupt)
    assert model.training


def test_gpt2_variants_load_old_buffers_untied_heads_bare_models_and_odd_mlp_widths(transformers):
    # an MLP width that int(dim * inner / dim) would round down (176 * (240 / 176) = 239.99...)
    hf, cfg = _hf_pair(
        transformers, dict(vocab_size=61, n_positions=32, n_embd=176, n_layer=1, n_head=4, n_inner=240)
    )
    model = GPT(**{**gpt2_config_from_hf(cfg.to_dict()), "drop_rate": 0.0, "attn_drop_rate": 0.0}).eval()
    assert model.blocks[0].mlp.fc1.out_features == 240
    state = dict(hf.state_dict())
    state["transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))  # old checkpoints' mask buffers
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    vitkit.load_pretrained(model, state)
    x = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() < 1e-5
    # a bare GPT2Model state dict (no transformer. prefix, no lm_head) into an untied model: head = wte
    bare = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    untied = GPT(**{**gpt2_config_from_hf(cfg.to_dict()), "tie_embeddings": False, "drop_rate": 0.0}).eval()
    vitkit.load_pretrained(untied, bare)
    assert torch.equal(untied.head.weight, hf.transformer.wte.weight)
    with torch.no_grad():
        assert (untied(x) - hf(x).logits).abs().max() < 1e-5


def test_grad_checkpointing_gives_the_same_loss_and_gradients_and_bias_false_has_no_linear_biases():
    x = torch.randint(0, 50, (2, 17))
    grads = []
    for ckpt in (False, True):
        model = _tiny().train()
        model.set_grad_checkpointing(ckpt)
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        grads.append((loss.item(), model.blocks[0].attn.qkv.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)
    plain = _tiny(bias=False)
    linears = [m for m in plain.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.bias is None for m in linears)
    assert plain(x).shape == (2, 17, 50)


@pytest.mark.parametrize("rope", [False, True])
def test_features_at_one_position_per_row_equal_the_full_hidden_states_there(rope):
    """``forward_features(at=...)`` (CLIP's end-of-text pooling) runs the last block for one token per row and
    returns what the full pass gives at those positions; with a cache it is refused."""
    torch.manual_seed(0)
    model = GPT(vocab_size=50, block_size=12, embed_dim=32, depth=2, num_heads=4,
                pos_embed="rope" if rope else "learned").eval()  # fmt: skip
    ids = torch.randint(0, 50, (3, 9))
    at = torch.tensor([8, 2, 5])
    full = model.forward_features(ids)[torch.arange(3), at]
    torch.testing.assert_close(model.forward_features(ids, at=at), full, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="cache"):
        model.forward_features(ids, at=at, cache=model.new_cache())
