"""vitkit.data: datasets, file formats, image decoding, augmentation, mixup/cutmix and resumable loaders."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit import data as D

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- helpers
def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array, written independently of vitkit's writer."""
    return (
        struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def write_fake_idx(folder: Path, n_train: int = 6, n_test: int = 3, compress: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arr)))
            else:
                (folder / name).write_bytes(idx_bytes(arr))
        out[prefix] = (images, labels)
    return out


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def jpeg_bytes(color=(200, 30, 30), size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- digits
def test_digits_split_is_stratified_and_deterministic():
    train, test, full = D.DigitsDataset("train"), D.DigitsDataset("test"), D.DigitsDataset("all")
    assert (len(train), len(test), len(full)) == (1437, 360, 1797)
    assert set(train.indices).isdisjoint(test.indices)
    assert sorted([*train.indices, *test.indices]) == list(range(1797))
    frac = (
        torch.bincount(test.targets, minlength=10).float()
        / torch.bincount(full.targets, minlength=10).float()
    )
    assert torch.allclose(frac, torch.full((10,), 0.2), atol=0.02)  # every class ~20% in test
    assert train.data.shape == (1437, 1, 8, 8) and train.data.dtype == torch.float32
    assert 0.0 <= float(train.data.min()) and float(train.data.max()) == 1.0
    assert (train.num_channels, train.image_size, train.classes[3]) == (1, (8, 8), "3")
    again = D.DigitsDataset("train")
    assert torch.equal(again.data, train.data) and torch.equal(again.targets, train.targets)
    other = D.DigitsDataset("train", seed=1)
    assert not np.array_equal(other.indices, train.indices)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and isinstance(y, int)
    mean, std = D.DATASET_STATS["digits"]
    assert abs(float(train.data.mean()) - mean[0]) < 1e-3 and abs(float(train.data.std()) - std[0]) < 1e-3


# ----------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("layout", ["direct", "fashion-mnist", "FashionMNIST/raw", "uncompressed"])
def test_idx_reader_layouts(tmp_path, layout):
    folder = tmp_path if layout in ("direct", "uncompressed") else tmp_path / layout
    ref = write_fake_idx(folder, compress=layout != "uncompressed")
    ds = D.FashionMNIST(tmp_path, "train")
    assert len(ds) == 6 and ds.raw.shape == (6, 1, 28, 28) and ds.raw.dtype == torch.uint8
    assert np.array_equal(ds.raw[:, 0].numpy(), ref["train"][0])
    assert ds.targets.tolist() == ref["train"][1].tolist()
    assert torch.allclose(ds.data, ds.raw.float() / 255)
    x, y = ds[1]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y == 1
    assert len(D.FashionMNIST(tmp_path, "test")) == 3
    assert ds.classes[0] == "T-shirt/top" and ds.num_channels == 1 and ds.image_size == (28, 28)


def test_idx_errors_name_the_file(tmp_path):
    write_fake_idx(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte.gz"
    good = gzip.decompress(img.read_bytes())

    img.write_bytes(gzip.compress(good[:-100]))  # payload shorter than the header says
    with pytest.raises(D.IDXError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        D.FashionMNIST(tmp_path, "train")

    img.write_bytes(gzip.compress(good)[:-50])  # gzip stream cut off
    with pytest.raises(D.IDXError, match=r"train-images-idx3-ubyte\.gz.*gzip stream is truncated"):
        D.FashionMNIST(tmp_path, "train")

    img.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + good[4:]))  # labels magic on the images file
    with pytest.raises(D.IDXError, match="magic number 0x00000801, expected 0x00000803"):
        D.FashionMNIST(tmp_path, "train")

    img.write_bytes(b"\x1f\x8b" + os.urandom(64))  # not gzip data
    with pytest.raises(D.IDXError, match="corrupt"):
        D.FashionMNIST(tmp_path, "train")

    img.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8))))  # 5 images, 6 labels
    with pytest.raises(D.IDXError, match="5 images but train-labels-idx1-ubyte.gz has 6 labels"):
        D.FashionMNIST(tmp_path, "train")


def test_read_idx_generic_dtypes(tmp_path):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    D.write_idx(tmp_path / "a.idx", arr)
    assert np.array_equal(D.read_idx(tmp_path / "a.idx"), arr)
    (tmp_path / "b.idx").write_bytes(b"\x00\x00\x42\x01\x00\x00\x00\x01x")
    with pytest.raises(D.IDXError, match="invalid magic"):
        D.read_idx(tmp_path / "b.idx")


def test_real_fashion_mnist(data_dir):
    if D.FashionMNIST.find_folder(data_dir, "train") is None:
        pytest.skip(f"Fashion-MNIST IDX files not under {data_dir}")
    train, test = D.FashionMNIST(data_dir, "train"), D.FashionMNIST(data_dir, "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.raw.shape == (60000, 1, 28, 28) and test.raw.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    assert hashlib.sha256(train.raw[0].numpy().tobytes()).hexdigest()[:16] == "5bd44e331a6d6998"
    assert int(train.targets[0]) == 9
    mean, std = D.DATASET_STATS["fashion-mnist"]
    assert abs(train.raw.float().mean().item() / 255 - mean[0]) < 1e-3


def test_real_mnist_via_factory(data_dir):
    if D.MNIST.find_folder(data_dir, "test") is None:
        pytest.skip(f"MNIST IDX files not under {data_dir}")
    test = D.build_dataset("mnist", "test", data_dir=data_dir, on_error="raise")  # on_error is dropped here
    assert len(test) == 10000 and int(test.targets[0]) == 7
    assert hashlib.sha256(test.raw[0].numpy().tobytes()).hexdigest()[:16] == "8f6a418c9a639f9e"


def test_idx_md5_table_matches_real_files(data_dir):
    folder = D.FashionMNIST.find_folder(data_dir, "test")
    if folder is None:
        pytest.skip(f"Fashion-MNIST not under {data_dir}")
    from vitkit.data.download import file_digest

    name = "t10k-labels-idx1-ubyte.gz"
    assert file_digest(folder / name) == D.FashionMNIST.md5[name]


# ----------------------------------------------------------------------------------------- factory
def test_factory_errors_and_data_dir(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*digits.*fashion-mnist"):
        D.build_dataset("nope")
    monkeypatch.delenv("VITKIT_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        D.build_dataset("fashion-mnist", "train", data_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "--data-dir" in msg and "VITKIT_DATA" in msg

    assert D.resolve_data_dir(None) == Path("data")
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path / "env"))
    assert D.resolve_data_dir(None) == tmp_path / "env"
    assert D.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    write_fake_idx(tmp_path / "env" / "mnist")
    assert len(D.build_dataset("MNIST", "test")) == 3  # found through $VITKIT_DATA
    assert isinstance(D.build_dataset("digits", "test", on_error="skip"), D.DigitsDataset)
    with pytest.raises(ValueError, match="unknown split"):
        D.build_dataset("digits", "validation")


def test_dataset_stats():
    assert D.dataset_stats("cifar10")[0] == (0.4914, 0.4822, 0.4465)
    assert D.dataset_stats("FMNIST") == ((0.2860,), (0.3530,))
    ds = D.TensorImageDataset(torch.full((4, 2, 3, 3), 51, dtype=torch.uint8), [0, 1, 0, 1], ["a", "b"])
    mean, std = D.dataset_stats("folder:x", ds)
    assert mean == (0.2, 0.2) and std == (0.0, 0.0)


# ----------------------------------------------------------------------------------------- image decoding
def test_load_image_converts_modes(tmp_path):
    gray = save(Image.new("L", (5, 4), 77), tmp_path / "g.png")
    a = D.load_image(gray, 3)
    assert a.shape == (4, 5, 3) and a.dtype == np.uint8 and (a == 77).all()
    assert D.load_image(gray, 1).shape == (4, 5, 1)

    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent -> white background
    a = D.load_image(save(rgba, tmp_path / "a.png"), 3)
    assert a[0, 0].tolist() == [255, 255, 255] and a[1, 1].tolist() == [255, 0, 0]

    la = Image.new("LA", (2, 2), (0, 128))  # half-transparent black over white
    assert abs(int(D.load_image(save(la, tmp_path / "la.png"), 1)[0, 0, 0]) - 127) <= 1

    pal = Image.new("P", (3, 3), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert D.load_image(save(pal, tmp_path / "p.png"), 3)[0, 0].tolist() == [10, 20, 30]
    pal.info["transparency"] = 1
    assert D.load_image(save(pal, tmp_path / "pt.png", transparency=1), 3)[0, 0].tolist() == [255, 255, 255]
    assert D.load_image(save(pal, tmp_path / "pt.gif", transparency=1), 3).shape == (3, 3, 3)

    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # red
    a = D.load_image(save(cmyk, tmp_path / "c.jpg", quality=100), 3)
    assert a[0, 0, 0] > 200 and a[0, 0, 1] < 60

    deep = Image.fromarray(np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16))
    p16 = save(deep, tmp_path / "d16.png")
    a = D.load_image(p16, 1)
    assert a[:, :, 0].tolist() == [[0, 100], [255, 200]]
    assert D.load_image(p16, 3).shape == (2, 2, 3)

    f32 = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32), mode="F")
    assert D.load_image(save(f32, tmp_path / "f.tif"), 1)[:, :, 0].tolist() == [[0, 128], [255, 64]]

    bw = Image.new("1", (3, 2), 1)
    assert (D.load_image(save(bw, tmp_path / "bw.bmp"), 3) == 255).all()
    assert D.load_image(save(Image.new("RGB", (4, 4)), tmp_path / "r.webp"), 3, size=(2, 3)).shape == (
        2,
        3,
        3,
    )


def test_load_image_bad_files_raise_with_path(tmp_path):
    jpg = save(Image.new("RGB", (64, 64), (1, 2, 3)), tmp_path / "ok.jpg")
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    png = save(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)),
        tmp_path / "ok.png",
    )
    trunc_png = tmp_path / "truncated.png"
    trunc_png.write_bytes(png.read_bytes()[:-200])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for bad in (trunc, trunc_png, text, empty, tmp_path / "missing.png"):
        with pytest.raises(D.BadImageError) as e:
            D.load_image(bad)
        assert e.value.path == str(bad) and str(bad) in str(e.value) and e.value.reason
    with pytest.raises(D.BadImageError, match="stream.jpg"):
        D.load_image(io.BytesIO(b"garbage"), name="stream.jpg")
    err = pickle.loads(pickle.dumps(D.BadImageError("x.png", "why")))  # survives DataLoader workers
    assert (err.path, err.reason) == ("x.png", "why")


# ----------------------------------------------------------------------------------------- folders / manifests
def make_folder(root: Path) -> Path:
    save(Image.new("RGB", (10, 12), (255, 0, 0)), root / "cat" / "1.png")
    save(Image.new("L", (20, 20), 9), root / "cat" / "sub" / "2.jpg")
    save(Image.new("RGB", (6, 6), (0, 0, 255)), root / "dog" / "1.webp")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "dog" / "readme.txt").write_text("ignored")
    (root / "dog" / ".hidden.png").write_bytes(b"ignored")
    (root / "emu").mkdir()
    return root


def test_image_folder_skip_and_count(tmp_path):
    root = make_folder(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="emu.*no images"):
        ds = D.ImageFolder(root, image_size=8)
    assert ds.classes == ["cat", "dog", "emu"]  # the empty class keeps its index
    assert len(ds) == 4 and ds.targets.tolist() == [0, 0, 1, 1]
    items = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (3, 8, 8) and 0 <= x.min() and x.max() <= 1 for x, _ in items)
    assert ds.num_skipped == 1 and ds.skipped[0][0].endswith("broken.jpg")
    assert (
        items[3][1] == 0
    )  # the bad file's slot gets the next readable sample (wraps to cat/1.png), label with it
    pre = ds.preload()
    assert isinstance(pre, D.TensorImageDataset) and len(pre) == 3 and pre.raw.shape == (3, 3, 8, 8)


def test_image_folder_raise_and_prescan(tmp_path):
    root = make_folder(tmp_path / "imgs")
    with pytest.warns(UserWarning):
        strict = D.ImageFolder(root, image_size=(8, 8), on_error="raise", channels=1)
    assert strict[0][0].shape == (1, 8, 8)
    with pytest.raises(D.BadImageError, match="broken.jpg"):
        strict[3]
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        scanned = D.ImageFolder(root, image_size=8, prescan=True, classes=["cat", "dog"])
    assert len(scanned) == 3 and scanned.num_skipped == 1 and scanned.targets.tolist() == [0, 0, 1]
    with pytest.raises(FileNotFoundError, match="image folder"):
        D.ImageFolder(tmp_path / "nowhere")


def test_manifest_labels(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        save(Image.new("RGB", (4, 4), 10), tmp_path / "img" / name)
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label,split\nimg/a.png,cat,train\nimg/b.png,dog,train\nimg/c.png,cat,test\n")
    ds = D.ManifestDataset(csv_path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 3 and ds[1][1] == 1
    assert len(D.ManifestDataset(csv_path, split="test")) == 1

    bad = tmp_path / "bad.csv"
    bad.write_text("img/a.png,cat\nimg/b.png,bird\nimg/c.png,1\n")  # no header; 'bird' is unknown
    with pytest.raises(ValueError, match=r"bad\.csv:2: label 'bird' of .*b\.png is not one of the classes"):
        D.ManifestDataset(bad, classes=["cat", "dog"])
    with pytest.warns(UserWarning, match="skipped 1 row"):
        ds = D.ManifestDataset(bad, classes=["cat", "dog"], on_bad_label="skip")
    assert ds.num_bad_labels == 1 and ds.bad_labels[0][0] == 2 and ds.targets.tolist() == [0, 1]

    jl = tmp_path / "m.jsonl"
    rows = [{"image": str(tmp_path / "img" / "a.png"), "label": 2}, {"image": "img/b.png", "label": 0}]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = D.ManifestDataset(jl)
    assert ds.classes == ["0", "1", "2"] and ds.targets.tolist() == [2, 0]
    jl.write_text(json.dumps({"path": "a.png", "label": 7}))
    with pytest.raises(ValueError, match=r"m\.jsonl:1: label 7 of .*a\.png"):
        D.ManifestDataset(jl, classes=["x", "y"])


def test_factory_folder_and_manifest(tmp_path):
    for split, classes in (("train", ("a", "b")), ("val", ("b",))):
        for c in classes:
            save(Image.new("RGB", (5, 5)), tmp_path / "tree" / split / c / "x.png")
    with pytest.warns(UserWarning, match="no images"):  # val/ has no 'a' folder
        val = D.build_dataset(f"folder:{tmp_path / 'tree'}", "test", image_size=5)
    assert val.classes == ["a", "b"] and val.targets.tolist() == [1]  # class list from train/
    with pytest.raises(FileNotFoundError):
        D.build_dataset(f"folder:{tmp_path / 'tree' / 'train' / 'a'}", "test")

    (tmp_path / "train.csv").write_text("path,label\ntree/train/a/x.png,a\ntree/train/b/x.png,b\n")
    (tmp_path / "test.csv").write_text("path,label\ntree/val/b/x.png,b\n")
    test = D.build_dataset("manifest:{split}.csv", "test", data_dir=tmp_path)
    assert test.classes == ["a", "b"] and test.targets.tolist() == [1]


# ----------------------------------------------------------------------------------------- CIFAR pickles
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def write_fake_cifar(root: Path, n: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img{j}.png" for j in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2 if i % 2 else 5))
    meta = {"label_names": [f"class{k}" for k in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


def test_cifar_pickles_load_with_restricted_unpickler(tmp_path):
    folder = write_fake_cifar(tmp_path)
    train = D.CIFAR10(tmp_path, "train")
    assert len(train) == 20 and train.raw.shape == (20, 3, 32, 32) and train.classes[0] == "class0"
    first = D.safe_load_pickle(folder / "data_batch_1")
    assert np.array_equal(train.raw[0, 0].flatten().numpy(), first["data"][0, :1024])  # R plane first
    assert np.array_equal(train.raw[0, 2].flatten().numpy(), first["data"][0, 2048:])
    assert train.targets[:4].tolist() == first["labels"]
    assert len(D.CIFAR10(folder, "test")) == 4  # the batches folder itself works too


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_fake_cifar(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Evil(), "labels": []}))
    with pytest.raises(D.UnsafePickleError, match=r"test_batch.*(posix|os|nt)\.system"):
        D.CIFAR10(tmp_path, "test")
    assert not (tmp_path / "pwned.txt").exists()
    evil = tmp_path / "eval.pkl"
    evil.write_bytes(b"cbuiltins\neval\n(V1+1\ntR.")
    with pytest.raises(D.UnsafePickleError, match="builtins.eval"):
        D.safe_load_pickle(evil)
    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes((folder / "data_batch_1").read_bytes()[:500])
    with pytest.raises(pickle.UnpicklingError, match="corrupt or truncated"):
        D.safe_load_pickle(trunc)


def test_cifar100_fake(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 2)):
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": list(range(n)),
            "coarse_labels": [0] * n,
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {
        "fine_label_names": [f"f{i}" for i in range(100)],
        "coarse_label_names": [f"c{i}" for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    fine, coarse = D.CIFAR100(tmp_path, "train"), D.CIFAR100(tmp_path, "test", label_type="coarse")
    assert len(fine.classes) == 100 and fine.targets.tolist() == list(range(6))
    assert len(coarse.classes) == 20 and len(coarse) == 2


# ----------------------------------------------------------------------------------------- CIFAR-10 JPEG
def write_fake_jpeg_archive(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz", format=tarfile.PAX_FORMAT) as tf:
        for split, n in (("train", 2), ("test", 1)):
            for ci, cls in enumerate(("airplane", "truck")):
                for j in range(n):
                    data = jpeg_bytes((ci * 200, j * 50, 0))
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{cls}/{j:04d}.jpg")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        bad = b"not a jpeg"
        info = tarfile.TarInfo("cifar10-jpeg/train/truck/9999.jpg")
        info.size = len(bad)
        tf.addfile(info, io.BytesIO(bad))


def test_cifar10_jpeg_archive_and_cache(tmp_path, monkeypatch):
    write_fake_jpeg_archive(tmp_path / "data" / "cifar10-jpeg" / "cifar10-jpeg.tar.xz")
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = D.CIFAR10JPEG(tmp_path / "data", "train", cache_dir=cache)
    assert len(ds) == 4 and ds.targets.tolist() == [0, 0, 9, 9] and ds.num_skipped == 1
    assert ds.skipped[0][0].endswith("9999.jpg") and ds.raw.shape == (4, 3, 32, 32)
    # airplane images were written with red 0, truck images with red 200
    assert ds.raw[0, 0].float().mean() < 20 and ds.raw[2, 0].float().mean() > 180
    assert ds.cache_file is not None and ds.cache_file.is_file()
    with pytest.raises(D.BadImageError, match="9999.jpg"):
        D.CIFAR10JPEG(tmp_path / "data", "train", cache_dir=cache, on_error="raise")

    def no_decode(self):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(D.CIFAR10JPEG, "_decode_all", no_decode)
    test = D.CIFAR10JPEG(tmp_path / "data" / "cifar10-jpeg" / "cifar10-jpeg.tar.xz", "test", cache_dir=cache)
    assert len(test) == 2 and test.classes == D.CIFAR10_CLASSES


def test_cifar10_jpeg_extracted_folder(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "x" / split / "ship").mkdir(parents=True)
        (tmp_path / "x" / split / "ship" / "0000.jpg").write_bytes(jpeg_bytes((0, 0, 255)))
    ds = D.CIFAR10JPEG(tmp_path / "x", "test", use_cache=False)
    assert len(ds) == 1 and int(ds.targets[0]) == 8 and ds.raw[0, 2].float().mean() > 200
    with pytest.raises(FileNotFoundError, match="cifar10-jpeg"):
        D.CIFAR10JPEG(tmp_path / "none", "train")


@pytest.mark.slow
def test_real_cifar10_jpeg(data_dir, tmp_path):
    if D.CIFAR10JPEG.find_source(data_dir / "cifar10-jpeg") is None:
        pytest.skip(f"cifar10-jpeg not under {data_dir}")
    train = D.build_dataset("cifar10-jpeg", "train", data_dir=data_dir, cache_dir=tmp_path)  # ~20 s decode
    test = D.build_dataset("cifar10-jpeg", "test", data_dir=data_dir, cache_dir=tmp_path)  # from the cache
    assert (len(train), len(test), train.num_skipped) == (50000, 10000, 0)
    assert torch.bincount(train.targets).tolist() == [5000] * 10
    mean, _ = D.DATASET_STATS["cifar10-jpeg"]
    assert abs(train.raw[:, 0].float().mean().item() / 255 - mean[0]) < 1e-3


# ----------------------------------------------------------------------------------------- transforms
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"rrc_scale": None, "pad_crop": 2},
        {"rrc_scale": None, "padding_crop": 2, "randaugment": 2},
        {"trivialaugment": True, "random_erasing": 1.0},
        {"rrc_scale": None, "hflip": False},
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_train_augment_shape_and_range(kw, channels):
    x = torch.rand(8, channels, 12, 12)
    aug = D.build_train_augment(10, **kw)
    y = aug(x)
    assert y.shape == (8, channels, 10, 10) and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert D.build_train_augment(None, **kw)(x).shape == x.shape


def test_augment_changes_images_and_rejects_bad_input():
    x = torch.rand(16, 3, 8, 8)
    assert not torch.equal(D.build_train_augment(8, rrc_scale=None, pad_crop=2)(x), x)
    with pytest.raises(ValueError, match="not both"):
        D.build_train_augment(8, randaugment=2, trivialaugment=True)
    with pytest.raises(ValueError, match="not both"):
        D.build_train_augment(8, rrc_scale=(0.5, 1.0), pad_crop=2)
    with pytest.raises(ValueError, match="float"):
        D.build_train_augment(8)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_crop_flip_erase_semantics():
    x = torch.rand(16, 2, 5, 7)
    out = D.build_train_augment(None, rrc_scale=None, pad_crop=2, hflip=False)(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifted = 0
    for i in range(len(x)):  # every output is some 5x7 window of the zero-padded image
        windows = padded[i].unfold(1, 5, 1).unfold(2, 7, 1).permute(1, 2, 0, 3, 4).reshape(-1, 2, 5, 7)
        assert min(float((out[i] - w).abs().max()) for w in windows) < 1e-5
        shifted += not torch.allclose(out[i], x[i], atol=1e-5)
    assert shifted >= 8  # 25 offsets, one of them the identity
    flipped = D.build_train_augment(None, rrc_scale=None, hflip=True)(x)
    is_flipped = [torch.equal(f, xi.flip(-1)) for f, xi in zip(flipped, x, strict=True)]
    assert all(f or torch.equal(a, b) for f, a, b in zip(is_flipped, flipped, x, strict=True))
    assert 2 <= sum(is_flipped) <= 14  # p = 0.5 per image
    whole = D.build_train_augment(5, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0), hflip=False)(x[..., :5])
    assert torch.allclose(whole, x[..., :5], atol=1e-5)  # a crop of the whole image is the image
    assert D.build_train_augment((3, 4), hflip=False)(x).shape == (16, 2, 3, 4)
    ones = torch.ones(16, 1, 8, 8)
    erased = D.build_train_augment(None, rrc_scale=None, hflip=False, random_erasing=1.0, erasing_value=0.5)(
        ones
    )
    assert ((erased == 0.5).flatten(1).any(1)).all() and ((erased == 0.5) | (erased == 1)).all()


def test_normalize_and_resize():
    norm = D.Normalize((0.5, 0.25), (0.5, 0.25))
    x = torch.rand(3, 2, 4, 4)
    assert torch.allclose(norm(x)[:, 0], (x[:, 0] - 0.5) / 0.5)
    assert torch.allclose(norm.inverse(norm(x)), x, atol=1e-6)
    assert norm(x[0]).shape == (2, 4, 4)
    assert D.resize_batch(x, (8, 6)).shape == (3, 2, 8, 6)
    assert D.resize_batch(x, 4) is x
    assert D.resize_batch(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), 4).max() == 1.0
    assert D.build_eval_transform(6)(x).shape == (3, 2, 6, 6)


# ----------------------------------------------------------------------------------------- mixup / cutmix
def test_mixup_cutmix_soft_targets():
    torch.manual_seed(0)
    n, k = 8, 5
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    y = torch.arange(n) % k
    mix = D.MixupCutmix(0.8, 1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=k)
    seen = set()
    for _ in range(20):
        xm, t = mix(x, y)
        seen.add(mix.last_mode)
        assert xm.shape == x.shape and t.shape == (n, k) and t.dtype == torch.float32
        assert torch.allclose(t.sum(1), torch.ones(n))
        lam = mix.last_lam
        if mix.last_mode == "cutmix":  # lam equals the fraction of pixels kept from the image itself
            kept = (xm[0, 0] == 0).float().mean().item()
            assert abs(kept - lam) < 1e-6
        else:
            assert torch.allclose(xm[0], x[0] * lam + x[-1] * (1 - lam))
        expected = D.smooth_one_hot(y, k, 0.1) * lam + D.smooth_one_hot(y.flip(0), k, 0.1) * (1 - lam)
        assert torch.allclose(t, expected)
    assert seen == {"mixup", "cutmix"}
    assert torch.equal(
        x, torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16)
    )  # no in-place

    off = D.MixupCutmix(0.8, 1.0, prob=0.0, label_smoothing=0.1, num_classes=k)
    xm, t = off(x, y)
    assert torch.equal(xm, x) and torch.allclose(t.max(1).values, torch.full((n,), 0.92))
    _, t = D.MixupCutmix(0.0, 1.0, num_classes=k, label_smoothing=0.0)(x, torch.eye(k)[y])  # soft targets in
    assert torch.allclose(t.sum(1), torch.ones(n))


# ----------------------------------------------------------------------------------------- loaders
def collect(loader, limit=None):
    out = []
    for i, (x, y) in enumerate(loader):
        out.append((x.clone(), y.clone()))
        if limit is not None and i + 1 == limit:
            break
    return out


def test_tensor_loader_resumes_exactly():
    data = torch.arange(103, dtype=torch.uint8).view(103, 1, 1, 1).expand(103, 1, 2, 2).contiguous()
    targets = torch.arange(103) % 7
    kw = {"batch_size": 8, "shuffle": True, "drop_last": True, "seed": 3}
    ref = D.TensorBatchLoader(data, targets, **kw)
    assert len(ref) == 12
    epoch0, epoch1 = collect(ref), collect(ref)
    assert ref.epoch == 2 and ref.position == 0
    assert epoch0[0][0].dtype == torch.float32 and float(epoch0[0][0].max()) <= 1.0
    seen = torch.cat([y for _, y in epoch0])
    assert len(seen) == 96 and not torch.equal(epoch0[0][1], epoch1[0][1])  # new order each epoch

    run = D.TensorBatchLoader(data, targets, **kw)
    collect(run)
    collect(run, limit=5)  # stop in the middle of epoch 1
    state = run.state_dict()
    assert (state["epoch"], state["position"]) == (1, 5)

    resumed = D.TensorBatchLoader(data, targets, **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the trainer calls this; it must not restart the saved epoch
    rest = collect(resumed)
    assert len(rest) == 7
    for (xa, ya), (xb, yb) in zip(rest, epoch1[5:], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert resumed.epoch == 2
    resumed.set_epoch(0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(collect(resumed), epoch0, strict=True))

    ordered = D.TensorBatchLoader(data, targets, batch_size=50, shuffle=False, to_float=False)
    batches = collect(ordered)
    assert [len(y) for _, y in batches] == [50, 50, 3] and batches[0][0].dtype == torch.uint8
    assert torch.equal(batches[0][1], targets[:50])
    with pytest.raises(ValueError, match="103 samples"):
        D.TensorBatchLoader(data[:10], targets[:10], 4).load_state_dict(state)


class _Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 37

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), i


def test_dataset_loader_resumes_exactly():
    kw = {"shuffle": True, "drop_last": False, "seed": 1}
    ref = D.make_loader(_Squares(), 5, **kw)
    assert isinstance(ref, D.DatasetLoader) and len(ref) == 8
    collect(ref)
    epoch1 = collect(ref)
    run = D.make_loader(_Squares(), 5, **kw)
    collect(run)
    collect(run, limit=3)
    resumed = D.make_loader(_Squares(), 5, **kw)
    resumed.load_state_dict(run.state_dict())
    rest = collect(resumed)
    assert [y.tolist() for _, y in rest] == [y.tolist() for _, y in epoch1[3:]]
    assert sorted(torch.cat([y for _, y in epoch1]).tolist()) == list(range(37))


def test_make_loader_dispatch_and_collate_error(tmp_path):
    digits = D.DigitsDataset("test")
    loader = D.make_loader(digits, 64, shuffle=False)
    assert isinstance(loader, D.TensorBatchLoader)
    x, y = next(iter(loader))
    assert (
        x.shape == (64, 1, 8, 8) and torch.equal(x, digits.data[:64]) and torch.equal(y, digits.targets[:64])
    )

    save(Image.new("RGB", (4, 4)), tmp_path / "a" / "1.png")
    save(Image.new("RGB", (6, 6)), tmp_path / "a" / "2.png")
    with pytest.raises(ValueError, match="image_size"):
        next(iter(D.make_loader(D.ImageFolder(tmp_path), 2, shuffle=False)))
    x, y = next(iter(D.make_loader(D.ImageFolder(tmp_path, image_size=5), 2, shuffle=False)))
    assert x.shape == (2, 3, 5, 5) and y.tolist() == [0, 0]


def test_data_package_imports_neither_torchvision_nor_kornia():
    code = (
        "import sys, torch, vitkit.data as D; "
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'; "
        "assert 'kornia' not in sys.modules, 'kornia imported with vitkit.data (it is only needed to augment)'; "
        "D.build_train_augment(8, pad_crop=1)(torch.rand(2, 1, 8, 8))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_length_bucketed_batches_are_a_permutation_with_similar_lengths():
    from vitkit.data.loader import TensorBatchLoader, length_bucketed

    lengths = torch.randint(1, 60, (1000,))
    perm = torch.randperm(1000)
    out = length_bucketed(perm, lengths, batch_size=10, seed=0, epoch=3)
    assert sorted(out.tolist()) == list(range(1000))
    spread = (
        lengths[out[:990]].view(99, 10).max(1).values - lengths[out[:990]].view(99, 10).min(1).values
    ).float()
    random_spread = (
        lengths[perm[:990]].view(99, 10).max(1).values - lengths[perm[:990]].view(99, 10).min(1).values
    )
    assert spread.mean() < 0.25 * random_spread.float().mean()
    assert torch.equal(out, length_bucketed(perm, lengths, 10, seed=0, epoch=3))  # reproducible: exact resume
    ids = torch.arange(1000)[:, None].repeat(1, 4)
    loader = TensorBatchLoader(ids, torch.zeros(1000), 10, seed=1, lengths=lengths, drop_last=True)
    seen = torch.cat([x[:, 0] for x, _ in loader])
    assert len(seen) == 1000 and len(set(seen.tolist())) == 1000


def test_a_bare_folder_name_is_refused_with_the_folder_form(tmp_path):
    (tmp_path / "my-folder" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"'my-folder' is a folder: name it folder:my-folder"):
        D.build_dataset("my-folder", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown dataset 'my-foldr'; known"):  # not a folder: no hint
        D.build_dataset("my-foldr", data_dir=tmp_path)
