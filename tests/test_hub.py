"""Weights from the Hugging Face Hub (``hf-hub:`` ids, ``pretrained=True``), fully offline.

Each test writes random timm / transformers models with the reference library's own writer (timm's
``save_for_hf``, transformers' ``save_pretrained``) and lays the files out in a temporary cache exactly as
``huggingface_hub.hf_hub_download`` leaves them (``models--org--name/blobs/<sha>``, ``snapshots/<commit>/<file>``
symlinks, ``refs/main``); ``HF_HUB_OFFLINE=1`` makes the real ``hf_hub_download`` read them from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.weights.hub import HubWeightsNotFoundError, hub_cache_dir

pytest.importorskip("huggingface_hub")  # vitkit[hub], in the test extra

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TIMM_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # vit_tiny_patch16_224's default tag


def publish(
    cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, absent: tuple[str, ...] = ()
) -> Path:
    """Put every file of ``folder`` into ``cache`` as huggingface_hub caches repo ``repo_id`` at ``commit``: blobs
    named by their sha256 (LFS weights) or git sha1 (small files), snapshot symlinks to them, ``refs/main``, and
    the ``.no_exist`` markers it leaves for the ``absent`` files it was asked for (a 404 online)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        lfs = file.suffix in (".safetensors", ".bin")
        etag = (
            hashlib.sha256(data).hexdigest()
            if lfs
            else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        )
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for name in absent:
        (repo / ".no_exist" / commit).mkdir(parents=True, exist_ok=True)
        (repo / ".no_exist" / commit / name).touch()
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """vitkit's own Hub cache in ``tmp_path`` (no HF cache variables set), offline."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "vitkit"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_cache_dir() == tmp_path / "vitkit" / "hub"
    return hub_cache_dir()


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """The files asked of the real ``huggingface_hub.hf_hub_download`` (which still does the work)."""
    import huggingface_hub

    real, calls = huggingface_hub.hf_hub_download, []

    def spy(repo_id, filename, **kwargs):
        calls.append(f"{repo_id}/{filename}")
        return real(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    return calls


@pytest.fixture(scope="module")
def timm_repo(tmp_path_factory, timm):
    """A random 2-block vit_tiny_patch16_224 written by timm's own Hub writer, and its logits on ``x``."""
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", depth=2).eval()
    folder = tmp_path_factory.mktemp("timm_repo")
    save_for_hf(ref, folder, safe_serialization=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        return folder, x, ref(x)


def test_pretrained_true_loads_the_default_tag_through_hf_hub_download(cache, downloads, timm_repo):
    folder, x, expected = timm_repo
    publish(cache, TIMM_REPO, folder)
    model = vitkit.create_model("vit_tiny_patch16_224", pretrained=True, depth=2).eval()
    assert f"{TIMM_REPO}/model.safetensors" in downloads  # the real call, answered from the cache
    with torch.no_grad():
        assert (model(x) - expected).abs().max() < 1e-5
    cfg = model.pretrained_cfg
    assert cfg["hf_hub_id"] == TIMM_REPO and cfg["license"] == "apache-2.0"
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5) and cfg["input_size"] == (3, 224, 224)
    assert cfg["crop_pct"] == 0.9 and cfg["num_classes"] == 1000
    assert model.data_config == {"mean": [0.5] * 3, "std": [0.5] * 3, "img_size": [224, 224], "in_chans": 3,
                                 "crop_pct": 0.9, "crop_mode": "center", "interpolation": "bicubic"}  # fmt: skip


def test_hf_hub_id_with_revision_and_a_new_head(cache, timm_repo):
    folder, x, expected = timm_repo
    publish(cache, TIMM_REPO, folder)
    model = vitkit.create_model(
        "vit_tiny_patch16_224", pretrained=f"hf-hub:{TIMM_REPO}@{COMMIT}", depth=2
    ).eval()
    with torch.no_grad():
        assert (model(x) - expected).abs().max() < 1e-5
    assert model.pretrained_cfg["hf_hub_revision"] == COMMIT
    new = vitkit.create_model(
        "vit_tiny_patch16_224", pretrained=f"hf-hub:{TIMM_REPO}", depth=2, num_classes=7
    )
    assert (
        new.head.out_features == 7
    )  # timm's rule: another class count keeps a fresh head, the backbone loads
    assert torch.equal(new.blocks[1].mlp.fc2.weight, model.blocks[1].mlp.fc2.weight)
    with pytest.raises(HubWeightsNotFoundError, match="@v2"):
        vitkit.create_model("vit_tiny_patch16_224", pretrained=f"hf-hub:{TIMM_REPO}@v2", depth=2)


def test_a_repo_not_in_the_cache_offline_says_what_to_do(cache):
    with pytest.raises(HubWeightsNotFoundError) as err:
        vitkit.create_model("vit_tiny_patch16_224", pretrained="hf-hub:nobody/missing-vit")
    msg = str(err.value)
    assert "hf-hub:nobody/missing-vit" in msg and str(cache) in msg and "HF_HUB_OFFLINE" in msg
    assert "local weights file" in msg
    with pytest.raises(ValueError, match=r"'vit_digits' has no default pretrained weights.*hf-hub:org/name"):
        vitkit.create_model("vit_digits", pretrained=True)


def test_an_unreachable_hub_falls_back_to_the_cache_at_once(cache, monkeypatch, downloads, timm_repo):
    """Online but with the Hub unreachable (a refused local port): the cached weights load after one failed
    request, and the files the cache knows the repo lacks are not asked for (huggingface_hub would retry ~23 s)."""
    import huggingface_hub.constants

    folder, x, expected = timm_repo
    for name in (
        "HF_HUB_OFFLINE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")  # fmt: skip
    publish(cache, TIMM_REPO, folder, absent=("preprocessor_config.json",))
    start = time.monotonic()
    model = vitkit.create_model("vit_tiny_patch16_224", pretrained=True, depth=2).eval()
    assert time.monotonic() - start < 5
    assert downloads == [
        f"{TIMM_REPO}/model.safetensors"
    ]  # config.json: from the snapshot, at the same commit
    with torch.no_grad():
        assert (model(x) - expected).abs().max() < 1e-5


def test_the_users_hf_cache_is_honoured(tmp_path, monkeypatch, timm_repo):
    folder, x, expected = timm_repo
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "vitkit"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    publish(tmp_path / "hf" / "hub", TIMM_REPO, folder)
    model = vitkit.create_model("vit_tiny_patch16_224", pretrained=True, depth=2).eval()
    with torch.no_grad():
        assert (model(x) - expected).abs().max() < 1e-5
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"


def test_huggingface_hub_missing_is_named(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"pip install 'vitkit\[hub\]'"):
        vitkit.create_model("vit_tiny_patch16_224", pretrained=True, depth=2)


def test_transformers_vit_repo_with_its_preprocessor(cache, tmp_path, transformers):
    torch.manual_seed(1)
    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=2, num_attention_heads=3,
                                    intermediate_size=768, num_labels=5)  # fmt: skip
    ref = transformers.ViTForImageClassification(config).eval()
    ref.save_pretrained(tmp_path / "hf")
    transformers.ViTImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4]).save_pretrained(
        tmp_path / "hf"
    )
    publish(cache, "someone/vit-tiny-random", tmp_path / "hf")
    model = vitkit.create_model(
        "vit_tiny_patch16_224", pretrained="hf-hub:someone/vit-tiny-random", depth=2
    ).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - ref(pixel_values=x).logits).abs().max() < 1e-5
    assert model.num_classes == 5  # from the repo's id2label
    cfg = model.pretrained_cfg
    assert (
        cfg["mean"] == (0.4, 0.5, 0.6)
        and cfg["std"] == (0.2, 0.3, 0.4)
        and cfg["input_size"] == (3, 224, 224)
    )
    assert model.data_config["mean"] == [0.4, 0.5, 0.6] and cfg["source"] == "transformers"


def test_gpt2_default_repo(cache, tmp_path, transformers):
    torch.manual_seed(2)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2)).eval()
    ref.save_pretrained(tmp_path / "gpt2")
    publish(cache, "openai-community/gpt2", tmp_path / "gpt2")
    model = vitkit.create_model("gpt2", pretrained=True, depth=2, embed_dim=64, num_heads=2).eval()
    ids = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        assert (model(ids) - ref(ids).logits).abs().max() < 1e-5
    assert model.pretrained_cfg["hf_hub_id"] == "openai-community/gpt2" and not hasattr(model, "data_config")


def test_bert_default_repo_from_an_old_pytorch_model_bin(cache, tmp_path, downloads, transformers):
    """bert-base-uncased's layout: a ``BertForPreTraining`` (``bert.`` / ``cls.`` keys, ``LayerNorm.gamma/beta``)
    in ``pytorch_model.bin`` only: the safetensors file is asked for first, then the .bin is read."""
    torch.manual_seed(3)
    config = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )
    ref = transformers.BertForPreTraining(config).eval()
    (tmp_path / "bert").mkdir()
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in ref.state_dict().items()}  # fmt: skip
    torch.save(state, tmp_path / "bert" / "pytorch_model.bin")
    (tmp_path / "bert" / "config.json").write_text(config.to_json_string())
    publish(cache, "google-bert/bert-base-uncased", tmp_path / "bert")
    model = vitkit.create_model("bert_base_uncased", pretrained=True, embed_dim=64, depth=2, num_heads=2,
                                mlp_dim=128).eval()  # fmt: skip
    assert downloads[:2] == ["google-bert/bert-base-uncased/model.safetensors",
                             "google-bert/bert-base-uncased/pytorch_model.bin"]  # fmt: skip
    ids = torch.randint(1, 30522, (2, 9))
    with torch.no_grad():
        out = ref.bert(ids)
        hidden = model.forward_features(ids)
        assert (hidden - out.last_hidden_state).abs().max() < 1e-5
        assert (model.pool(hidden) - out.pooler_output).abs().max() < 1e-5


def test_default_tags_match_timm(timm):
    """Every ViT / DeiT default tag is timm's, field by field."""
    names = vitkit.list_pretrained("vit_*") + vitkit.list_pretrained("deit_*")
    assert len(names) == 25
    for name in names:
        ours, ref = vitkit.get_pretrained_cfg(name), timm.models.get_pretrained_cfg(name).to_dict()
        for key in ("hf_hub_id", "tag", "num_classes", "mean", "std", "input_size", "crop_pct", "crop_mode",
                    "interpolation", "license"):  # fmt: skip
            assert ours[key] == ref[key], (name, key, ours[key], ref[key])
    assert vitkit.get_pretrained_cfg("gpt2")["hf_hub_id"] == "openai-community/gpt2"


def test_finetune_from_a_hub_id_normalises_with_its_mean_std(cache, timm_repo):
    from types import SimpleNamespace

    from vitkit.tasks.finetune import build_from_pretrained
    from vitkit.tasks.inputs import ImageInput

    folder, _, _ = timm_repo
    publish(cache, TIMM_REPO, folder)
    model = build_from_pretrained(f"hf-hub:{TIMM_REPO}", 3, 3, "vit_tiny_patch16_224", {"depth": 2})
    ref = vitkit.create_model("vit_tiny_patch16_224", pretrained=True, depth=2)
    assert model.head.out_features == 3 and torch.equal(
        model.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight
    )
    data = SimpleNamespace(num_channels=3)  # cifar10's own statistics would otherwise be used
    images = ImageInput(SimpleNamespace(dataset="cifar10"), data, model, torch.device("cpu"), augment=False)
    assert images.mean == [0.5] * 3 and images.std == [0.5] * 3


def test_predict_center_crops_as_timm_evaluates():
    from vitkit.predict import preprocess

    image = torch.zeros(3, 100, 200)
    image[:, 5:95, 10:190] = (
        1.0  # a frame 5 px wide top/bottom: cut by crop_pct 0.9 (resize to 111x222, crop 100)
    )
    cfg = {"mean": [0.0] * 3, "std": [1.0] * 3, "img_size": [100, 100], "in_chans": 3}
    plain = preprocess(image, cfg)
    cropped = preprocess(image, {**cfg, "crop_pct": 0.9, "interpolation": "bicubic"})
    assert plain.shape == cropped.shape == (1, 3, 100, 100)
    assert plain[0, 0, 0, 50] < 0.1 and cropped[0, 0, 0, 50] > 0.9  # the top border is outside the crop
    assert cropped.min() >= 0 and cropped.max() <= 1


def test_summary_cli_loads_an_hf_hub_id(cache, tmp_path, capsys):
    from vitkit.cli import main

    model = vitkit.create_model("vit_digits")
    (tmp_path / "repo").mkdir()
    vitkit.save(model, tmp_path / "repo" / "model.safetensors")
    (tmp_path / "repo" / "config.json").write_text(json.dumps({"architecture": "vit_digits", "num_classes": 10,
        "pretrained_cfg": {"mean": [0.3], "std": [0.2], "input_size": [1, 8, 8], "license": "mit"}}))  # fmt: skip
    publish(cache, "me/vit-digits", tmp_path / "repo")
    assert main(["summary", "vit_digits", "--pretrained", "hf-hub:me/vit-digits"]) == 0
    out = capsys.readouterr().out
    assert (
        "  hf_hub_id        me/vit-digits  (pretrained weights)" in out
        and "  mean             [0.3]  (" in out
    )


def test_predict_preprocessing_matches_timms_eval_transform(timm):
    """The pretrained data config's resize + center crop gives timm's evaluation input within 8-bit rounding."""
    import numpy as np
    from PIL import Image

    from vitkit.predict import preprocess

    small = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((400, 300), Image.BILINEAR)  # smooth, 4:3
    ref = timm.create_model("vit_tiny_patch16_224", depth=1)
    expected = timm.data.create_transform(**timm.data.resolve_data_config(model=ref))(image)
    cfg = vitkit.get_pretrained_cfg("vit_tiny_patch16_224")
    data = {"mean": cfg["mean"], "std": cfg["std"], "img_size": [224, 224], "in_chans": 3,
            "crop_pct": cfg["crop_pct"], "interpolation": cfg["interpolation"]}  # fmt: skip
    assert (
        preprocess(image, data)[0] - expected
    ).abs().max() < 0.02  # measured 0.0083: one 8-bit level is 2 / 255 = 0.0078 here (std 0.5)


def test_text_classification_starts_from_a_bert_repo_and_its_tokenizer(cache, tmp_path, transformers):
    """``--task text-classification --from hf-hub:...``: the encoder and the repo's tokenizer.json come from the Hub."""
    from types import SimpleNamespace

    from vitkit.data.text import TextTokenizer
    from vitkit.tasks.inputs import build_tokenizer
    from vitkit.tasks.text_classification import build_text_model

    tok = TextTokenizer.train_wordpiece(
        ["the cat sat", "a dog ran", "the dog sat"] * 5, vocab_size=40, min_frequency=1
    )
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)  # fmt: skip
    ref = transformers.BertModel(config).eval()
    ref.save_pretrained(tmp_path / "bert")
    tok.save(tmp_path / "bert" / "tokenizer.json")
    publish(cache, "someone/bert-tiny", tmp_path / "bert")
    cfg = SimpleNamespace(init_from="hf-hub:someone/bert-tiny", tokenizer=None, max_length=16, model="bert_tiny",
                          model_args={})  # fmt: skip
    tokenizer = build_tokenizer(cfg)
    assert tokenizer.vocab_size == tok.vocab_size
    model = build_text_model(cfg, 3, tokenizer).eval()
    ids = torch.randint(1, tok.vocab_size, (2, 7))
    with torch.no_grad():
        assert (model.forward_features(ids) - ref(ids).last_hidden_state).abs().max() < 1e-5
    assert model.head.out_features == 3
