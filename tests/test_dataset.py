"""Tests for dataset/: CPU only, no network, every file they read is written here."""

import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import time
import urllib.error
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets as tvd

import dataset
from dataset import (ContrastiveDataset, DatasetUnavailableError, IndexedDataset, build_datasets, net)
from dataset import fashionmnist
from dataset import synthetic as syn


def _one_line(msg):
    return "\n" not in msg and msg.strip() == msg


# ---------------------------------------------------------------- CIFAR helpers

def _write_cifar(root, kind="cifar10", n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    ncls = 10 if kind == "cifar10" else 100
    base = os.path.join(root, "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    os.makedirs(base, exist_ok=True)
    key = "labels" if kind == "cifar10" else "fine_labels"
    train_x = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    train_y = [int(i % ncls) for i in range(n_train)]
    test_x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = [int((3 * i) % ncls) for i in range(n_test)]

    def dump(name, obj):
        with open(os.path.join(base, name), "wb") as f:
            pickle.dump(obj, f)

    def entry(x, y):
        e = {"data": x, key: y, "batch_label": "test", "filenames": [f"{i}.png" for i in range(len(y))]}
        if kind == "cifar100":
            e["coarse_labels"] = [t // 5 for t in y]
        return e

    if kind == "cifar10":
        for b in range(5):  # five training batches, 4 images each
            sl = slice(b * n_train // 5, (b + 1) * n_train // 5)
            dump(f"data_batch_{b + 1}", entry(train_x[sl], train_y[sl]))
        dump("test_batch", entry(test_x, test_y))
        dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        dump("train", entry(train_x, train_y))
        dump("test", entry(test_x, test_y))
        dump("meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                      "coarse_label_names": [f"g{i}" for i in range(20)]})
    hwc = lambda x: x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # noqa: E731
    return base, hwc(train_x), train_y, hwc(test_x), test_y


@pytest.fixture
def offline(monkeypatch):
    """Simulate a machine without network (never touches the real network)."""
    monkeypatch.setattr(net, "can_reach", lambda url, timeout=net.PROBE_TIMEOUT_S: False)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_reads_test_written_batches(tmp_path, kind):
    _, xtr, ytr, xte, yte = _write_cifar(tmp_path, kind)
    with pytest.warns(UserWarning, match="md5"):
        b = build_datasets(kind, str(tmp_path), download=False, augment=False)
    assert b.num_classes == (10 if kind == "cifar10" else 100) and b.image_size == 32
    assert len(b.train) == 20 and len(b.val) == 10
    assert b.train.targets == ytr and b.val.targets == yte
    np.testing.assert_array_equal(b.train.data, xtr)
    np.testing.assert_array_equal(b.val.data, xte)
    img, t = b.train[3]
    assert img.shape == (3, 32, 32) and t == ytr[3]
    mean, std = torch.tensor(b.mean)[:, None, None], torch.tensor(b.std)[:, None, None]
    raw = torch.from_numpy(xtr[3]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(img, (raw - mean) / std)
    exp_mean = (0.4914, 0.4822, 0.4465) if kind == "cifar10" else (0.5071, 0.4867, 0.4408)
    assert b.mean == exp_mean


def test_cifar_checked_path_when_md5_matches(tmp_path, monkeypatch):
    """With matching md5 sums the files go through torchvision's own checked loader, no warning."""
    base, xtr, ytr, _, _ = _write_cifar(tmp_path, "cifar10")
    md5 = lambda f: hashlib.md5(open(os.path.join(base, f), "rb").read()).hexdigest()  # noqa: E731
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", dict(tvd.CIFAR10.meta, md5=md5("batches.meta")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = build_datasets("cifar10", str(tmp_path), download=False)
    assert b.train.targets == ytr
    np.testing.assert_array_equal(b.train.data, xtr)


def test_cifar_corrupt_files_raise_clean_error(tmp_path):
    base, *_ = _write_cifar(tmp_path, "cifar10")
    with open(os.path.join(base, "data_batch_2"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.warns(UserWarning), pytest.raises(DatasetUnavailableError) as e:
        build_datasets("cifar10", str(tmp_path), download=False)
    assert _one_line(str(e.value)) and "--data_folder" in str(e.value)


@pytest.mark.parametrize("kind,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("fashionmnist", "FashionMNIST/raw")])
def test_offline_absent_raises_fast_one_line(tmp_path, offline, kind, folder):
    root = tmp_path / "nothing_here"
    t0 = time.time()
    with pytest.raises(DatasetUnavailableError) as e:
        build_datasets(kind, str(root), download=True)
    assert time.time() - t0 < 3
    msg = str(e.value)
    assert isinstance(e.value, RuntimeError) and _one_line(msg)
    assert "--data_folder" in msg and folder in msg and "no network" in msg
    assert not root.exists()  # nothing created


def test_download_failure_is_wrapped(tmp_path, monkeypatch):
    """Network reachable but the download fails: still one clean line."""
    monkeypatch.setattr(net, "can_reach", lambda url, timeout=3.0: True)

    def boom(*a, **k):
        raise urllib.error.URLError("connection reset\nsecond line")

    monkeypatch.setattr(tvd.CIFAR10, "download", boom)
    with pytest.raises(DatasetUnavailableError) as e:
        build_datasets("cifar10", str(tmp_path), download=True)
    assert _one_line(str(e.value)) and "--data_folder" in str(e.value) and "URLError" in str(e.value)


def test_absent_without_download_and_probe_is_bounded(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="--data_folder"):
        build_datasets("cifar100", str(tmp_path), download=False)
    t0 = time.time()
    assert net.can_reach("https://nonexistent.invalid/x.tar.gz", timeout=0.5) is False  # .invalid never resolves
    assert time.time() - t0 < 3


def test_can_reach_answers_for_local_hosts_whose_answer_is_known(monkeypatch):
    """A listening port: True. A port that answers nothing (Linux drops the SYN while the accept
    queue of a backlog-0 listener holds one connection): False after the timeout. A closed port:
    False at once. A resolver that hangs: False by the deadline."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        assert net.can_reach(url, timeout=0.5) is True  # its connection now fills the accept queue
        t0 = time.time()
        assert net.can_reach(url, timeout=0.5) is False
        assert 0.4 < time.time() - t0 < 3
    assert net.can_reach(url, timeout=0.5) is False
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(5))
    t0 = time.time()
    assert net.can_reach("http://example.org/", timeout=0.3) is False
    assert time.time() - t0 < 2


def test_unknown_name():
    with pytest.raises(ValueError, match="synthetic"):
        build_datasets("mnist42")
    assert set(dataset.DATASET_NAMES) >= {"cifar10", "cifar100", "cinic10", "imagenet", "folder",
                                          "fashionmnist", "synthetic"}


# ---------------------------------------------------------------- ImageFolder sets

def _write_tree(root, split, classes, size, per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        d = os.path.join(root, split, c)
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(d, f"{i}.png"))


def test_folder_small_images_cifar_style(tmp_path):
    _write_tree(tmp_path, "train", ["cat", "dog", "frog"], (16, 16))
    _write_tree(tmp_path, "val", ["dog", "frog"], (16, 16), per_class=1)  # 'cat' missing from val
    b = build_datasets("folder", str(tmp_path))
    assert b.num_classes == 3 and b.image_size == 16
    assert b.train.targets == [0, 0, 1, 1, 2, 2]
    assert b.val.targets == [1, 2]  # mapped with train's indices despite the missing class
    assert b.train[0][0].shape == (3, 16, 16) and b.val[0][0].shape == (3, 16, 16)
    names = [type(t).__name__ for t in b.train.transform.transforms]
    assert "RandomCrop" in names and "RandomResizedCrop" not in names
    b2 = build_datasets("folder", str(tmp_path), augment=False)
    assert "RandomCrop" not in [type(t).__name__ for t in b2.train.transform.transforms]


def test_folder_large_images_imagenet_style(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b"], (80, 72), per_class=1)
    _write_tree(tmp_path, "val", ["a", "b"], (80, 72), per_class=1)
    b = build_datasets("folder", str(tmp_path))
    assert b.num_classes == 2 and b.image_size == 224
    assert b.train[0][0].shape == (3, 224, 224) and b.val[1][0].shape == (3, 224, 224)
    assert "RandomResizedCrop" in [type(t).__name__ for t in b.train.transform.transforms]
    assert b.mean == (0.485, 0.456, 0.406)


def test_cinic10_and_imagenet_trees(tmp_path):
    cinic = tmp_path / "cinic-10"  # found under data_folder/cinic-10 too
    _write_tree(cinic, "train", [f"k{i}" for i in range(4)], (32, 32), per_class=2)
    _write_tree(cinic, "valid", [f"k{i}" for i in range(4)], (32, 32), per_class=1)
    b = build_datasets("cinic10", str(tmp_path), train_per_class=1)
    assert b.num_classes == 4 and b.image_size == 32 and len(b.val) == 4
    assert b.train.targets == [0, 1, 2, 3] and b.train[2][1] == 2
    assert b.train[0][0].shape == (3, 32, 32)
    assert b.mean[0] == pytest.approx(0.4789, abs=1e-3)

    imnet = tmp_path / "imnet"
    _write_tree(imnet, "train", ["n01", "n02"], (40, 40), per_class=1)  # small files, still ImageNet-style
    _write_tree(imnet, "val", ["n01", "n02"], (40, 40), per_class=1)
    b = build_datasets("imagenet", str(imnet))
    assert b.num_classes == 2 and b.image_size == 224 and b.val[0][0].shape == (3, 224, 224)


def test_folder_missing_or_bad_layout(tmp_path):
    for name in ("folder", "cinic10", "imagenet"):
        with pytest.raises(DatasetUnavailableError) as e:
            build_datasets(name, str(tmp_path / "absent"))
        assert _one_line(str(e.value)) and "--data_folder" in str(e.value)
    with pytest.raises(DatasetUnavailableError, match="--data_folder"):
        build_datasets("folder")  # no folder given
    _write_tree(tmp_path, "train", ["a"], (8, 8), per_class=1)
    _write_tree(tmp_path, "val", ["a", "zzz"], (8, 8), per_class=1)
    with pytest.raises(DatasetUnavailableError, match="zzz"):
        build_datasets("folder", str(tmp_path))


# ---------------------------------------------------------------- Fashion-MNIST

def _idx_bytes(arr, labels=False):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">II", 2049, len(arr)) if labels else struct.pack(">IIII", 2051, *arr.shape)
    return header + arr.tobytes()


def _write_idx(path, arr, labels=False):
    with open(path, "wb") as f:
        f.write(_idx_bytes(arr, labels))


def _fashion_arrays(seed=2):
    """A tiny Fashion-MNIST: idx file name -> array (20 training, 10 test images)."""
    rng = np.random.default_rng(seed)
    return {"train-images-idx3-ubyte": rng.integers(1, 256, (20, 28, 28)),
            "train-labels-idx1-ubyte": np.arange(20) % 10,
            "t10k-images-idx3-ubyte": rng.integers(1, 256, (10, 28, 28)),
            "t10k-labels-idx1-ubyte": (np.arange(10) * 3) % 10}


def _write_fashion(folder, arrays, compress=None):
    """The idx files of `arrays` in `folder`, uncompressed or as `<name>.gz` compressed by
    `compress(bytes)`; returns {name: md5 of the uncompressed bytes written}."""
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for name, arr in arrays.items():
        plain = folder / name
        _write_idx(plain, arr, labels="labels" in name)
        content = plain.read_bytes()
        md5[name] = hashlib.md5(content).hexdigest()
        if compress is not None:
            (folder / f"{name}.gz").write_bytes(compress(content))
            plain.unlink()
    return md5


def _content_table(monkeypatch, md5, arrays):
    """The test's files as the published content: their md5 and counts in the content table."""
    monkeypatch.setattr(fashionmnist, "PUBLISHED", {name: (md5[name], len(arrays[name])) for name in arrays})


def _tree(root):
    """Every path under `root` with the md5 of its bytes (files) or None (folders)."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def test_fashionmnist_from_raw_layout(tmp_path, monkeypatch):
    arrays = _fashion_arrays(seed=1)
    md5 = _write_fashion(tmp_path / "FashionMNIST" / "raw", arrays)
    _content_table(monkeypatch, md5, arrays)
    b = build_datasets("fashionmnist", str(tmp_path), download=False, augment=False)
    xtr = arrays["train-images-idx3-ubyte"]
    assert b.num_classes == 10 and b.image_size == 32
    assert b.train.data.shape == (20, 32, 32, 3) and b.train.data.dtype == np.uint8
    assert b.train.targets == arrays["train-labels-idx1-ubyte"].tolist()
    assert b.val.targets == arrays["t10k-labels-idx1-ubyte"].tolist()
    np.testing.assert_array_equal(b.train.data[:, 2:30, 2:30, 1], xtr)
    assert b.train.data[:, :2].max() == 0 and b.train.data[:, :, 30:].max() == 0
    img, _ = b.val[0]
    assert img.shape == (3, 32, 32)
    torch.testing.assert_close(img[0], img[2])


# ---------------------------------------------------------------- synthetic

@pytest.fixture(scope="module")
def synth():
    return build_datasets("synthetic")


def test_synthetic_deterministic_balanced(synth):
    b = synth
    assert b.num_classes == 10 and b.image_size == 32 and len(b.train) == 5000 and len(b.val) == 1000
    assert b.train.data.shape == (5000, 32, 32, 3) and b.train.data.dtype == np.uint8
    assert set(Counter(b.train.targets).values()) == {500}
    assert set(Counter(b.val.targets).values()) == {100}
    d2, t2 = syn.generate(5000, syn.TRAIN_SEED)
    assert d2.tobytes() == b.train.data.tobytes() and t2 == b.train.targets
    assert not np.array_equal(b.train.data[:1000], b.val.data)  # separate seeds
    img, t = b.train[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert isinstance(t, int) and t == t2[0]
    b2 = build_datasets("synthetic", "/ignored/folder", augment=False)
    assert b2.mean == b.mean and b2.train.data.tobytes() == b.train.data.tobytes()
    mean, std = torch.tensor(b2.mean)[:, None, None], torch.tensor(b2.std)[:, None, None]
    raw = torch.from_numpy(d2[5]).permute(2, 0, 1).float() / 255  # eval transform: ToTensor, Normalize
    torch.testing.assert_close(b2.train[5][0], (raw - mean) / std)


def _tensors(ds):
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor(ds.targets)


def test_synthetic_learnable_but_not_trivial(synth):
    """A tiny conv net learns it well above chance in a few seconds; a linear model on
    downsampled pixels stays near chance (random phases), so it is not pixel-trivial."""
    x, y = _tensors(synth.train)
    xv, yv = _tensors(synth.val)
    m, s = torch.tensor(synth.mean)[:, None, None], torch.tensor(synth.std)[:, None, None]
    x, xv = (x - m) / s, (xv - m) / s
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)

        def fit(net, epochs, n=5000, bs=64, lr=3e-3):
            opt = torch.optim.Adam(net.parameters(), lr)
            for _ in range(epochs):
                perm = torch.randperm(n)
                for k in range(0, n, bs):
                    i = perm[k:k + bs]
                    loss = F.cross_entropy(net(x[i]), y[i])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            net.eval()
            with torch.no_grad():
                return (net(xv).argmax(1) == yv).float().mean().item()

        conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
        t0 = time.time()
        acc_conv = fit(conv, epochs=3)
        linear = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(192, 10))
        acc_lin = fit(linear, epochs=5)
        elapsed = time.time() - t0
    finally:
        torch.set_num_threads(threads)
    print(f"synthetic: tiny conv {acc_conv:.3f}, linear {acc_lin:.3f} ({elapsed:.1f}s)")
    assert acc_conv > 0.3
    assert acc_lin < 0.25
    assert acc_conv < 0.95


# ---------------------------------------------------------------- subsets and wrappers

def test_train_per_class_subset(synth):
    b = build_datasets("synthetic", train_per_class=7)
    full = synth.train.targets
    assert len(b.train) == 70 and set(Counter(b.train.targets).values()) == {7}
    seen, expect = Counter(), []
    for i, t in enumerate(full):
        seen[t] += 1
        if seen[t] <= 7:
            expect.append(i)
    np.testing.assert_array_equal(b.train.data, synth.train.data[expect])
    assert b.train.targets == [full[i] for i in expect]
    assert b.train[3][1] == b.train.targets[3]
    assert len(b.val) == 1000
    with pytest.raises(ValueError, match="train_per_class"):
        build_datasets("synthetic", train_per_class=501)


def test_validation_split_is_held_out_after_the_training_subset(synth):
    b = build_datasets("synthetic", train_per_class=7, val_split_per_class=3)
    full = synth.train.targets
    seen, train_idx, val_idx = Counter(), [], []
    for i, t in enumerate(full):  # by hand: the 8th to 10th image of each class follow its first 7
        seen[t] += 1
        (train_idx if seen[t] <= 7 else val_idx if seen[t] <= 10 else []).append(i)
    np.testing.assert_array_equal(b.train.data, synth.train.data[train_idx])
    np.testing.assert_array_equal(b.val.data, synth.train.data[val_idx])
    assert b.val.targets == [full[i] for i in val_idx] and len(b.val) == 30
    # unaugmented: the evaluation transform, equal to the test set's on the same image
    plain = build_datasets("synthetic", augment=False).train
    for j in (0, 17, 29):
        assert torch.equal(b.val[j][0], plain[val_idx[j]][0])
    assert len(build_datasets("synthetic", train_per_class=490, val_split_per_class=10).val) == 100  # 500 per class


@pytest.mark.parametrize("kwargs, message", [
    (dict(train_per_class=400, val_split_per_class=101), "--train_per_class 400 \\+ --val_split_per_class 101 exceeds"),
    (dict(val_split_per_class=5), "give --train_per_class too"),
    (dict(train_per_class=5, val_split_per_class=5, val_per_class=5), "give one"),
])
def test_a_validation_split_that_cannot_be_held_out_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        build_datasets("synthetic", **kwargs)
    assert _one_line(str(info.value))


def test_indexed_and_contrastive(synth):
    small = dataset.subset(synth.train, dataset.class_balanced_indices(synth.train.targets, 20))
    idx_ds = IndexedDataset(small)
    img, t, i = idx_ds[5]
    assert i == 5 and t == small.targets[5] and idx_ds.targets == small.targets

    targets = np.asarray(small.targets)
    k = 60
    torch.manual_seed(123)
    exact = ContrastiveDataset(small, k=k, mode="exact")
    relax = ContrastiveDataset(small, k=k, mode="relax")
    seen = set()
    for index in range(0, len(small), 7):
        for ds, mode in ((exact, "exact"), (relax, "relax")):
            img, t, i, cidx = ds[index]
            assert i == index and t == targets[index]
            assert cidx.dtype == torch.long and cidx.shape == (k + 1,)
            if mode == "exact":
                assert cidx[0].item() == index
            else:
                assert targets[cidx[0]] == targets[index]
            neg = cidx[1:].numpy()
            assert (targets[neg] != targets[index]).all()
            assert len(set(neg.tolist())) == k  # without replacement when possible
            seen.update(neg.tolist())
    assert len(seen) > 150  # negatives spread over the whole set

    # reproducible under torch.manual_seed; k larger than the negative pool -> replacement
    torch.manual_seed(7)
    a = ContrastiveDataset(small, k=500, mode="relax")[3][3]
    torch.manual_seed(7)
    b = ContrastiveDataset(small, k=500, mode="relax")[3][3]
    assert torch.equal(a, b) and (targets[a[1:]] != targets[3]).all()

    batch = next(iter(torch.utils.data.DataLoader(exact, batch_size=4)))
    assert batch[3].shape == (4, k + 1) and batch[2].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        ContrastiveDataset(small, k=5, mode="bogus")


def test_contrastive_on_folder_subset(tmp_path):
    _write_tree(tmp_path, "train", ["a", "b", "c"], (8, 8), per_class=3)
    _write_tree(tmp_path, "val", ["a", "b", "c"], (8, 8), per_class=1)
    b = build_datasets("folder", str(tmp_path), train_per_class=2)
    assert b.train.targets == [0, 0, 1, 1, 2, 2]
    ds = ContrastiveDataset(b.train, k=3)
    _, t, i, c = ds[2]
    assert c.shape == (4,) and c[0] == 2 and all(b.train.targets[j] != 1 for j in c[1:].tolist())


# ---------------------------------------------------------------- published archives, offline

def _published_gz(content):
    """A stand-in for the published .gz: level 6 with a file name and time in its header."""
    buffer = io.BytesIO()
    with gzip.GzipFile("published", "wb", compresslevel=6, fileobj=buffer, mtime=1_500_000_000) as f:
        f.write(content)
    return buffer.getvalue()


def _recompressed(content):
    """What a packager's `gzip -9` of the decompressed file gives: other .gz bytes, same content."""
    return gzip.compress(content, compresslevel=9, mtime=0)


@pytest.mark.parametrize("where", ["FashionMNIST/raw", "."])
@pytest.mark.parametrize("compress", [_recompressed, None], ids=["gzip-9", "uncompressed"])
def test_fashionmnist_published_content_loads_silently_offline(tmp_path, offline, monkeypatch, where, compress):
    """The published content, re-compressed by another gzip or not compressed, in torchvision's
    raw/ or in --data_folder itself (Debian's layout): read offline, without a warning, nothing written."""
    arrays = _fashion_arrays()
    md5 = _write_fashion(tmp_path / where, arrays, compress)
    if compress is not None:  # the .gz bytes differ from the "published" .gz: only the content matches
        for name in arrays:
            content = gzip.decompress((tmp_path / where / f"{name}.gz").read_bytes())
            assert _published_gz(content) != (tmp_path / where / f"{name}.gz").read_bytes()
    _content_table(monkeypatch, md5, arrays)
    before = _tree(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = build_datasets("fashionmnist", str(tmp_path), download=True, augment=False)
    assert b.train.targets == arrays["train-labels-idx1-ubyte"].tolist()
    assert b.val.targets == arrays["t10k-labels-idx1-ubyte"].tolist()
    np.testing.assert_array_equal(b.train.data[:, 2:30, 2:30, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(b.val.data[:, 2:30, 2:30, 2], arrays["t10k-images-idx3-ubyte"])
    assert _tree(tmp_path) == before  # nothing written there


def test_fashionmnist_published_md5_table():
    """The content table holds the md5 sums of the published files' decompressed content."""
    assert {name: md5 for name, (md5, _) in fashionmnist.PUBLISHED.items()} == {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"}
    assert [count for _, count in fashionmnist.PUBLISHED.values()] == [60000, 60000, 10000, 10000]


@pytest.mark.parametrize("where", ["FashionMNIST/raw", "."])
def test_fashionmnist_other_content_loads_with_one_line_warning(tmp_path, offline, monkeypatch, where):
    arrays = _fashion_arrays()
    _write_fashion(tmp_path / where, arrays, _recompressed)
    published = {name: hashlib.md5(_idx_bytes(arr, "labels" in name)).hexdigest()
                 for name, arr in _fashion_arrays(seed=5).items()}
    _content_table(monkeypatch, published, arrays)
    with pytest.warns(UserWarning) as record:
        b = build_datasets("fashionmnist", str(tmp_path), download=False, augment=False)
    messages = [str(w.message) for w in record if "Fashion-MNIST" in str(w.message)]
    assert len(messages) == 2 and all(_one_line(m) and "published content" in m for m in messages)
    assert "train-images-idx3-ubyte.gz" in messages[0] and "t10k-images-idx3-ubyte.gz" in messages[1]
    assert b.train.targets == arrays["train-labels-idx1-ubyte"].tolist()
    np.testing.assert_array_equal(b.val.data[:, 2:30, 2:30, 1], arrays["t10k-images-idx3-ubyte"])


def _truncate_gz(folder, name):
    path = folder / f"{name}.gz"
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _truncate_plain(folder, name):
    path = folder / f"{name}.gz"
    content = gzip.decompress(path.read_bytes())
    path.unlink()
    (folder / name).write_bytes(content[:-100])


def _bad_magic(folder, name):
    path = folder / f"{name}.gz"
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(_recompressed(struct.pack(">I", 2049) + content[4:]))


def _not_gzip_nor_idx(folder, name):
    (folder / f"{name}.gz").unlink()
    (folder / name).write_bytes(b"<html>404 Not Found</html>\n" * 10)


def _wrong_count(folder, name):
    (folder / f"{name}.gz").write_bytes(_recompressed(struct.pack(">IIII", 2051, 19, 28, 28) + bytes(19 * 784)))


def _label_out_of_range(folder, name):
    (folder / f"{name}.gz").write_bytes(
        _recompressed(struct.pack(">II", 2049, 20) + bytes([3] * 19 + [10])))


@pytest.mark.parametrize("damage, name, check", [
    (_truncate_gz, "train-images-idx3-ubyte", "damaged gzip stream"),
    (_truncate_plain, "t10k-images-idx3-ubyte", "truncated"),
    (_bad_magic, "train-images-idx3-ubyte", "bad magic number 2049"),
    (_not_gzip_nor_idx, "train-labels-idx1-ubyte", "neither gzip nor"),
    (_wrong_count, "train-images-idx3-ubyte", "wrong count: 19"),
    (_label_out_of_range, "train-labels-idx1-ubyte", "label 10 out of 0-9"),
], ids=["truncated-gz", "truncated-idx", "bad-magic", "not-gzip-nor-idx", "wrong-count", "label-range"])
def test_fashionmnist_malformed_file_stops_with_one_line(tmp_path, offline, monkeypatch, damage, name, check):
    arrays = _fashion_arrays()
    md5 = _write_fashion(tmp_path, arrays, _recompressed)
    _content_table(monkeypatch, md5, arrays)
    damage(tmp_path, name)
    before = _tree(tmp_path)
    with pytest.raises(DatasetUnavailableError) as e:
        build_datasets("fashionmnist", str(tmp_path), download=True)
    message = str(e.value)
    assert _one_line(message) and check in message and "--data_folder" in message
    assert f"'{tmp_path / name}" in message  # names the file (with or without .gz)
    assert _tree(tmp_path) == before


def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def _cifar_archive(tmp_path, kind):
    """A tar.gz of a tiny CIFAR folder under the published archive's name, in tmp_path/data."""
    import tarfile
    stage = tmp_path / "stage"
    base, xtr, ytr, xte, yte = _write_cifar(stage, kind)
    cls = tvd.CIFAR10 if kind == "cifar10" else tvd.CIFAR100
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / cls.filename, "w:gz") as tar:
        tar.add(base, arcname=cls.base_folder)
    return cls, data, xtr, ytr, xte, yte


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_published_archive_checked_and_extracted_offline(tmp_path, offline, monkeypatch, kind):
    cls, data, xtr, ytr, xte, yte = _cifar_archive(tmp_path, kind)
    with pytest.raises(DatasetUnavailableError) as e:  # not the published bytes
        build_datasets(kind, str(data), download=True)
    assert _one_line(str(e.value)) and "corrupt" in str(e.value) and cls.filename in str(e.value)
    assert not (data / cls.base_folder).exists()
    monkeypatch.setattr(cls, "tgz_md5", _md5(data / cls.filename))
    with pytest.warns(UserWarning, match="md5"):  # the tiny batches are not the published ones
        b = build_datasets(kind, str(data), download=True)
    assert (data / cls.base_folder).is_dir()
    assert b.train.targets == ytr and b.val.targets == yte
    np.testing.assert_array_equal(b.train.data, xtr)
    np.testing.assert_array_equal(b.val.data, xte)
