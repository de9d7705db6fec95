"""CLIP / SigLIP / LiT: HuggingFace and open_clip weights bit for bit, the two losses by hand, the gathered loss
under 2 gloo processes against one process, LiT locking, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.models import CLIP, VisionTransformer, clip_loss, siglip_loss
from vitkit.weights import CheckpointError, clip_from_huggingface, convert_hf_clip, convert_hf_siglip

ATOL = 1e-5
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
              patch_size=8)  # fmt: skip
TEXT = dict(vocab_size=99, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=12)  # fmt: skip


def _inputs(eos: int = 98):
    """3 images, 3 texts of 10 tokens with an end-of-text token at 7, 5, 9 and the second one padded after it."""
    images = torch.randn(3, 3, 16, 16)
    ids = torch.randint(3, 90, (3, 10))
    for row, end in enumerate((7, 5, 9)):
        ids[row, end] = eos
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    return images, ids, mask


def _assert_same_embeddings(model, images, ids, mask, ref_image, ref_text):
    with torch.no_grad():
        assert (model.encode_image(images) - ref_image).abs().max() < ATOL
        assert (model.encode_text(ids, mask) - ref_text).abs().max() < ATOL


@pytest.mark.parametrize("eos", [98, 2], ids=["eos-token", "pre-2023-argmax"])
def test_huggingface_clip_folder_loads_bit_for_bit(transformers, tmp_path, eos):
    """HF pools at the first eos_token_id, or (configs with the old eos_token_id=2) at the largest id."""
    config = transformers.CLIPConfig(
        text_config={**TEXT, "eos_token_id": eos}, vision_config=VISION, projection_dim=16
    )
    ref = transformers.CLIPModel(config).eval()
    ref.save_pretrained(tmp_path)
    model = clip_from_huggingface(tmp_path).eval()
    assert model.text_pool == ("argmax" if eos == 2 else "eos")
    images, ids, mask = _inputs()
    with torch.no_grad():
        out = ref(input_ids=ids, pixel_values=images, attention_mask=mask)
        ref_image = ref.get_image_features(pixel_values=images).pooler_output
        ref_text = ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        ours = model(images, ids, mask)
    _assert_same_embeddings(model, images, ids, mask, ref_image, ref_text)
    logits = model.logits(ours["image_embeds"], ours["text_embeds"])
    assert (logits - out.logits_per_image).abs().max() < 1e-4  # (scale ~14 times unit-length dot products)
    # the same folder through the generic loader, into a model built from the config
    again = CLIP(**{**model.config, "lock_image": False}).eval()
    vitkit.load_pretrained(again, tmp_path)
    _assert_same_embeddings(again, images, ids, mask, ref_image, ref_text)


def test_huggingface_siglip_loads_bit_for_bit(transformers, tmp_path):
    text = {
        **TEXT,
        "hidden_size": 32,
        "intermediate_size": 72,
    }  # SigLIP: the text head's width is the image's
    ref = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=VISION)).eval()
    ref.save_pretrained(tmp_path)
    model = clip_from_huggingface(tmp_path).eval()
    assert isinstance(model.visual.attn_pool, torch.nn.Module) and model.logit_bias is not None
    images, ids, mask = _inputs()
    with torch.no_grad():
        ref_image = ref.get_image_features(pixel_values=images).pooler_output
        ref_text = ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        out = ref(input_ids=ids, pixel_values=images, attention_mask=mask)
        ours = model(images, ids, mask)
    _assert_same_embeddings(model, images, ids, mask, ref_image, ref_text)
    assert (model.logits(ours["image_embeds"], ours["text_embeds"]) - out.logits_per_image).abs().max() < 1e-4
    # a state dict in memory works too, and the wrong converter is refused by name
    fresh = CLIP(**model.config).eval()
    vitkit.load_pretrained(fresh, ref.state_dict())
    _assert_same_embeddings(fresh, images, ids, mask, ref_image, ref_text)
    assert fresh.logit_bias.item() == pytest.approx(ref.logit_bias.item())
    # at twice the image size the 2x2 position table is resampled to 4x4 (the folder's config tells the old grid)
    bigger = CLIP(**{**model.config, "vision_args": {**model.config["vision_args"], "img_size": [32, 32]}})
    vitkit.load_pretrained(bigger, tmp_path)
    assert bigger.visual.pos_embed.shape == (1, 16, 32) and bigger.encode_image(
        torch.randn(1, 3, 32, 32)
    ).shape == (1, 32)
    with pytest.raises(CheckpointError, match="use convert_hf_siglip"):
        convert_hf_clip(ref.state_dict())
    with pytest.raises(CheckpointError, match="not a HuggingFace SiglipModel"):
        convert_hf_siglip({"vision_model.x": torch.zeros(1), "text_model.y": torch.zeros(1)})


def _tiny(**kw) -> CLIP:
    vision = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, pre_norm=True,
                  norm_eps=1e-5, act_layer=kw.pop("act", "gelu"))  # fmt: skip
    text = dict(vocab_size=99, block_size=kw.pop("ctx", 12), embed_dim=kw.pop("text_dim", 24), depth=2, num_heads=4,
                act_layer=vision["act_layer"], norm_eps=kw.pop("text_eps", 1e-5))  # fmt: skip
    return vitkit.create_model("clip_vit_tiny_patch4_32", vision_args=vision, text_args=text, **kw).eval()


def test_open_clip_state_dicts_load_bit_for_bit(open_clip, timm):
    vision = dict(image_size=16, layers=2, width=32, head_width=8, mlp_ratio=2.0, patch_size=8)
    images, ids, _ = _inputs()
    # OpenAI-style CLIP: QuickGELU, causal text pooled at the largest id, x @ proj matrices
    ref = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=dict(context_length=10, vocab_size=99, width=24,
                         heads=4, layers=2), quick_gelu=True).eval()  # fmt: skip
    model = _tiny(
        act="quick_gelu", embed_dim=16, ctx=10
    )  # open_clip adds its whole table: texts of 10 tokens
    vitkit.load_pretrained(model, ref.state_dict())
    with torch.no_grad():
        _assert_same_embeddings(model, images, ids, None, ref.encode_image(images), ref.encode_text(ids))
    # SigLIP-style custom text tower (a "text." prefix, no causal mask, last-token pooling, biased Linear projection)
    text = dict(context_length=10, vocab_size=99, width=32, heads=4, layers=2, no_causal_mask=True, proj_bias=True,
                pool_type="last", norm_kwargs={"eps": 1e-6})  # fmt: skip
    ref = open_clip.CustomTextCLIP(
        embed_dim=32, vision_cfg=vision, text_cfg=text, init_logit_bias=-10.0
    ).eval()
    model = _tiny(ctx=10, text_dim=32, text_eps=1e-6, embed_dim=32, text_proj_bias=True, text_pool="last", text_causal=False,
                  logit_bias_init=0.0)  # fmt: skip
    vitkit.load_pretrained(model, ref.state_dict())
    assert model.logit_bias.item() == -10.0
    with torch.no_grad():
        _assert_same_embeddings(model, images, ids, None, ref.encode_image(images), ref.encode_text(ids))
    # open_clip's SigLIP: a timm image tower ("visual.trunk.", timm's names) with a "map" head and no projection
    trunk = timm.models.VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0,
                                          class_token=False, global_pool="map").eval()  # fmt: skip
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("visual.")}
    state.update({f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()})
    vision = dict(
        img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, class_token=False, global_pool="map"
    )
    siglip = vitkit.create_model("siglip_base_patch16_224", vision_args=vision, text_args=model.config["text_args"],
                                 text_proj_bias=True, embed_dim=32).eval()  # fmt: skip
    vitkit.load_pretrained(siglip, state)
    with torch.no_grad():
        _assert_same_embeddings(siglip, images, ids, None, trunk(images), ref.encode_text(ids))


def test_map_head_matches_timm_siglip_tower(timm):
    """SigLIP's image tower: no class token, attention pooling ("map") with timm's parameter names."""
    kw = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0, class_token=False,
              global_pool="map")  # fmt: skip
    ref = timm.models.VisionTransformer(**kw, act_layer="gelu_tanh").eval()
    model = VisionTransformer(**kw, act_layer="gelu_tanh").eval()
    vitkit.load_pretrained(model, ref.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() < ATOL
    with pytest.raises(ValueError, match="needs the attention-pooling head"):
        VisionTransformer(**{**kw, "global_pool": "avg"}).reset_classifier(0, global_pool="map")


def test_clip_loss_equals_hand_computed_values():
    img, txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # logit_scale 2: per image [[1.2, 2.0], [1.6, 0.0]] (targets 1.2 and 0.0), per text its transpose
    per_image = [
        -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(2.0))),
        -math.log(1 / (math.exp(1.6) + 1)),
    ]
    per_text = [
        -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6))),
        -math.log(1 / (math.exp(2.0) + 1)),
    ]
    expected = (sum(per_image) / 2 + sum(per_text) / 2) / 2
    assert clip_loss(img, txt, 2.0).item() == pytest.approx(expected, abs=1e-6)
    # SigLIP, bias -1: logits [[0.2, 1.0], [0.6, -1.0]], +1 on the diagonal, -1 off it; sum over pairs / batch
    log_sigmoid = lambda z: -math.log1p(math.exp(-z))  # noqa: E731
    expected = -(log_sigmoid(0.2) + log_sigmoid(-1.0) + log_sigmoid(-0.6) + log_sigmoid(-1.0)) / 2
    assert siglip_loss(img, txt, 2.0, -1.0).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(2, 2\)"):
        clip_loss(torch.zeros(3, 2), txt, 1.0)


def _dist_worker(rank: int, world: int, store: str, out: str) -> None:
    """One of two gloo processes: its half of the batch, the gathered losses, DDP's averaging by hand."""
    import warnings

    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        result = {}
        with warnings.catch_warnings():  # the gather uses no deprecated PyTorch call
            warnings.simplefilter("error", FutureWarning)
            losses = _losses_and_grads(slice(rank * 4, rank * 4 + 4))
        for name, (loss, grads) in losses.items():
            for t in (loss, *grads):
                dist.all_reduce(t)
                t /= world
            result[name] = (loss, grads)
        try:  # unequal local batches are refused on every rank
            clip_loss(torch.randn(3 + rank, 4), torch.randn(3 + rank, 4), 1.0)
        except ValueError as e:
            result["unequal"] = str(e)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _losses_and_grads(rows: slice) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]]:
    """Both losses of two seeded linear "towers" on ``rows`` of a fixed batch of 8, with their gradients."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g)
    ids = torch.tensor([0, 1, 2, 0, 3, 1, 4, 5])[rows]  # captions repeated within and across the two halves
    out = {}
    for name in ("clip", "siglip", "clip_ids", "siglip_ids"):
        torch.manual_seed(1)
        image_tower, text_tower = torch.nn.Linear(6, 4), torch.nn.Linear(5, 4)
        scale, bias = torch.nn.Parameter(torch.tensor(2.3)), torch.nn.Parameter(torch.tensor(-1.5))
        img = F.normalize(image_tower(x[rows]), dim=-1)
        txt = F.normalize(text_tower(y[rows]), dim=-1)
        kw = {"caption_ids": ids} if name.endswith("_ids") else {}
        loss = (
            clip_loss(img, txt, scale.exp(), **kw)
            if name.startswith("clip")
            else siglip_loss(img, txt, scale.exp(), bias, **kw)
        )
        loss.backward()
        params = [*image_tower.parameters(), *text_tower.parameters(), scale] + (
            [bias] if name.startswith("siglip") else []
        )
        out[name] = (loss.detach(), [p.grad for p in params])
    return out


def test_gathered_losses_on_two_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2)
    two = torch.load(tmp_path / "out.pt")
    one = _losses_and_grads(slice(0, 8))
    for name in ("clip", "siglip", "clip_ids", "siglip_ids"):
        (loss1, grads1), (loss2, grads2) = one[name], two[name]
        assert float(loss1) == pytest.approx(float(loss2), rel=1e-6, abs=1e-6), name
        for a, b in zip(grads1, grads2, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert "local batches of [3, 4]" in two["unequal"]


def test_lit_locks_a_tower_and_keeps_it_in_eval_mode():
    model = vitkit.create_model("lit_vit_cifar_minilm_l6", vision_args=dict(depth=1, drop_path_rate=0.1),
                                text="bert_tiny", text_args=dict(vocab_size=50, depth=1))  # fmt: skip
    assert model.lock_image and not model.lock_text
    model.train()
    assert not model.visual.training and model.text.training
    assert not any(p.requires_grad for p in [*model.visual.parameters(), *model.visual_proj.parameters()])
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(5, 50, (2, 7))
    ids[1, 4:] = 0  # padding (BERT's pad id) is left out of the mean
    out = model(images, ids)
    assert not out["image_embeds"].requires_grad  # the locked tower runs without autograd
    clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"]).backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(model.get_parameter(n).grad is not None for n in trainable)  # DDP: no unused parameter
    assert "text.pooler.weight" not in trainable  # mean pooling leaves BERT's pooler out
    model.eval()
    with torch.no_grad():
        hidden = model.text.forward_features(ids)
    mean = torch.stack([hidden[0].mean(0), hidden[1, :4].mean(0)])
    torch.testing.assert_close(model.encode_text(ids), model.text_proj(mean))
    rebuilt = CLIP(**model.config)
    assert rebuilt.lock_image and not any(p.requires_grad for p in rebuilt.visual.parameters())


def test_lit_with_real_minilm_weights_gives_sentence_embeddings():
    """The LiT text tower holding all-MiniLM-L6-v2: its unprojected, normalised mean pooling is the
    sentence-transformers embedding (mean of the encoder's hidden states over the mask, then unit length; the
    encoder itself equals HuggingFace's on these weights: tests/test_text.py)."""
    from test_text import SENTENCES, _minilm_dir

    from vitkit.data.text import TextTokenizer
    from vitkit.weights import bert_from_huggingface

    path = _minilm_dir()
    model = vitkit.create_model(
        "lit_vit_cifar_minilm_l6", vision_args={"depth": 1}, embed_dim=384, text_proj=False
    )
    minilm = bert_from_huggingface(path).eval()
    model.text.load_state_dict(minilm.state_dict())
    model.eval()
    batch = TextTokenizer.from_file(path)(SENTENCES)
    with torch.no_grad():
        hidden = minilm.forward_features(**batch)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        ours = model.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)
    assert (ours - expected).abs().max() < ATOL
    assert (ours[2] - ours[3]).abs().max() > 0.1  # "ok" and "" differ: padding did not swamp the short texts


def test_right_padding_skips_the_mask_of_a_causal_tower_and_left_padding_keeps_it():
    """CLIP pads after the end of the text, which a causal tower never lets a token see: the attention runs without
    a mask (SDPA's causal kernel) and gives what the masked attention gives. Left padding keeps the mask."""
    model = _tiny(embed_dim=16)
    _, ids, mask = _inputs()

    def masked(ids, mask):  # the tower run with its padding mask, pooled as encode_text pools
        hidden = model.text.forward_features(ids, key_padding_mask=mask == 0, is_causal=True)
        return model.text_proj(model._pool_text(hidden, ids, mask))

    with torch.no_grad():
        assert mask[1].tolist() == [1] * 6 + [0] * 4  # right padding
        torch.testing.assert_close(model.encode_text(ids, mask), masked(ids, mask), atol=ATOL, rtol=0)
        left = torch.roll(ids, 4, dims=1)
        left_mask = torch.roll(mask, 4, dims=1)
        left[1, :4] = 0
        ours, ref = model.encode_text(left, left_mask), masked(left, left_mask)
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
        unmasked = model.encode_text(left, None)  # what skipping the mask would have given
        assert (unmasked[1] - ref[1]).abs().max() > 1e-3


@pytest.mark.parametrize("pos, pool", [("learned", "argmax"), ("rope", "eos")])
def test_a_causal_tower_skips_the_positions_after_the_last_pooled_token(pos, pool):
    """Captions padded to the context: the tower runs only up to the batch's last end-of-text token, and the
    embeddings and every gradient equal those of the whole padded context."""
    model = _tiny(embed_dim=16, text_pool=pool, eos_token_id=98)
    if pos == "rope":
        model.text = vitkit.models.GPT(vocab_size=99, block_size=12, embed_dim=24, depth=2, num_heads=4,
                                       pos_embed="rope")  # fmt: skip
    model.train()
    ids = torch.randint(3, 90, (3, 12))
    for row, end in enumerate((7, 5, 4)):
        ids[row, end] = 98
        ids[row, end + 1 :] = 0  # padded to the context after the end of the text (CLIP's tokenizer)
    mask = (ids != 0).long()
    lengths = []
    hook = model.text.blocks[0].register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))

    def full(ids, mask):  # the tower over the whole context, pooled as encode_text pools
        hidden = model.text.forward_features(ids, key_padding_mask=mask == 0, is_causal=True)
        return model.text_proj(model._pool_text(hidden, ids, mask))

    grads = []
    for encode in (model.encode_text, full):
        model.zero_grad()
        out = encode(ids, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.text.named_parameters()}))
    hook.remove()
    assert lengths == [8, 12]  # the batch's last end-of-text token is at 7
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=ATOL, rtol=0)
    for name, grad in grads[1][1].items():
        torch.testing.assert_close(grads[0][1][name], grad, atol=ATOL, rtol=0, msg=name)


def test_save_and_load_round_trip(tmp_path):
    model = _tiny(embed_dim=16, lock_text=True)
    vitkit.save(model, tmp_path / "clip.safetensors")
    again = vitkit.load(tmp_path / "clip.safetensors").eval()
    images, ids, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(images, ids, mask), model(images, ids, mask))
    assert again.lock_text and not again.text.training


def test_bad_configs_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match=r"vision tower's width \(32\) differs from embed_dim \(16\)"):
        _tiny(embed_dim=16, vision_proj=False)
    with pytest.raises(ValueError, match=r"text tower's width \(24\) differs from embed_dim \(32\)"):
        _tiny(embed_dim=32, text_proj=False)
    with pytest.raises(ValueError, match="text_pool must be one of"):
        _tiny(text_pool="cls")
    with pytest.raises(ValueError, match="needs eos_token_id"):
        _tiny(text_pool="eos")
    with pytest.raises(ValueError, match="bidirectional"):
        vitkit.create_model("lit_vit_cifar_minilm_l6", text="bert_tiny", text_causal=True)
    with pytest.raises(ValueError, match="must be a GPT-shaped or BERT"):
        vitkit.create_model("clip_vit_tiny_patch4_32", text="vit_digits")
    model = _tiny(text_pool="eos", eos_token_id=98)
    with pytest.raises(ValueError, match=r"texts \[0, 1\] hold no end-of-text token \(98\)"):
        model.encode_text(torch.tensor([[5, 6, 7], [5, 6, 7], [5, 98, 0]]))
    with pytest.raises(TypeError, match="input_ids must be integer"):
        model.encode_text(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="longer than the model's context of 12"):
        model.encode_text(torch.full((1, 13), 98))
    ids = torch.tensor([[5, 6, 98, 0], [5, 98, 0, 0]])
    with pytest.raises(
        ValueError, match=r"attention_mask must have the shape of input_ids \(2, 4\), got \(2, 3\)"
    ):
        model.encode_text(ids, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"pools texts \[0\] at a position their attention_mask marks as padding"
    ):
        model.encode_text(ids, torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]]))
    assert model.encode_text(ids[:0]).shape == (0, model.text_proj.out_features)  # an empty batch
    with pytest.raises(CheckpointError, match="not a CLIP / SigLIP checkpoint"):
        vitkit.load_pretrained(model, {"foo.weight": torch.zeros(2)})


TINY = {"vision_args": {"img_size": 8, "patch_size": 2, "depth": 1, "embed_dim": 32, "num_heads": 2},
        "text_args": {"depth": 1, "embed_dim": 32, "num_heads": 2}, "embed_dim": 32}  # fmt: skip


def _fsdp_worker(rank: int, world: int, store: str, out: str) -> None:
    """One of two gloo processes: the same seeded SigLIP-shaped CLIP trained 3 steps under DDP and under FSDP2 (its
    0-dim temperature and bias stay whole, their gradients averaged by hand) on this rank's half of the batch."""
    import torch.distributed as dist

    from vitkit.engine.distributed import DistEnv, wrap_model
    from vitkit.engine.optim import build_optimizer

    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(1)
        images, ids = torch.randn(8, 3, 8, 8, generator=g), torch.randint(1, 40, (8, 6), generator=g)
        rows = slice(rank * 4, rank * 4 + 4)
        result = {}
        for strategy in ("ddp", "fsdp"):
            torch.manual_seed(0)
            model = vitkit.create_model("clip_vit_tiny_patch4_32", **TINY, logit_bias_init=-10.0)
            wrapped = wrap_model(model, DistEnv(rank, world), strategy, torch.device("cpu"))
            optimizer = build_optimizer(model, 1e-2, 0.05, fused=False)  # one AdamW for both
            for _ in range(3):
                emb = wrapped(images[rows], ids[rows])
                loss = siglip_loss(emb["image_embeds"], emb["text_embeds"], emb["logit_scale"],
                                   emb["logit_bias"], gather=True)  # fmt: skip
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            result[strategy] = {n: p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach().clone()
                                for n, p in model.named_parameters()}  # fmt: skip
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def test_fsdp_trains_a_dual_encoder_exactly_as_ddp(tmp_path):
    """FSDP2 shards every block of both towers; CLIP's 0-dim logit scale and bias, which it cannot shard, stay whole
    with gradients averaged over ranks: three steps give DDP's weights exactly (same AdamW implementation)."""
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2)
    got = torch.load(tmp_path / "out.pt")
    ddp, fsdp = got["ddp"], got["fsdp"]
    assert ddp.keys() == fsdp.keys() and {"logit_scale", "logit_bias"} <= ddp.keys()
    assert ddp["logit_bias"] != -10.0  # the bias trained
    for name in ddp:
        torch.testing.assert_close(
            fsdp[name], ddp[name], atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )
