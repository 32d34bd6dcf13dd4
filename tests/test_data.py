"""Tests of :func:`pyroprune.data.load_dataset`: real MNIST (a copy of the shared files), synthetic Fashion-MNIST and
CIFAR files in the formats torchvision reads, the offline errors, the validation split, device and dtype.

Nothing here may touch the network: an autouse fixture makes every connection attempt fail loudly.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import socket
import stat
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from pyroprune.data import (
    DATASET_NAMES,
    DataSplits,
    dataset_input_shape,
    load_dataset,
    load_mnist,
    num_classes,
)

SHARED_MNIST = Path("/work/shared/data/MNIST/raw")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _read_only(path: Path) -> None:
    for p in (path, *path.iterdir()):
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable_again(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)


# --- synthetic files ------------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX (``ubyte``) file: magic ``0x0000 08 ndim``, big-endian dimensions, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _fake_images(n: int, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """``n`` images whose first pixel is their index (``offset + i``), so that splits can be traced back."""
    images = np.full((n, *shape), 128, dtype=np.uint8)
    images.reshape(n, -1)[:, 0] = np.arange(offset, offset + n)
    images.reshape(n, -1)[:, 1:] = (np.arange(n)[:, None] * 7 + np.arange(int(np.prod(shape)) - 1)) % 256
    return images


def _write_fake_idx(raw: Path, n_train: int = 20, n_test: int = 8, compressed: bool = True) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": _fake_images(n_train, 0, (28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": _fake_images(n_test, 100, (28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, array in arrays.items():
        if compressed:
            with gzip.open(raw / f"{name}.gz", "wb") as f:
                f.write(_idx_bytes(array))
        else:
            (raw / name).write_bytes(_idx_bytes(array))


def _cifar_rows(n: int, offset: int) -> np.ndarray:
    """CIFAR rows (``[n, 3072]``, channel planes R, G, B): R's first pixel is the index, G is 100, B is 200."""
    rows = np.empty((n, 3, 1024), dtype=np.uint8)
    rows[:, 0] = 50
    rows[:, 0, 0] = np.arange(offset, offset + n)
    rows[:, 1] = 100
    rows[:, 2] = 200
    return rows.reshape(n, 3072)


def _write_fake_cifar(root: Path, name: str, per_batch: int = 4, n_test: int = 6) -> Path:
    """A tiny ``cifar-10-batches-py`` or ``cifar-100-python`` folder with the dict layout torchvision unpickles."""

    def dump(path: Path, obj: dict) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for b in range(5):
            labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
            dump(folder / f"data_batch_{b + 1}", {"data": _cifar_rows(per_batch, b * per_batch), "labels": labels})
        dump(folder / "test_batch", {"data": _cifar_rows(n_test, 100), "labels": [i % 10 for i in range(n_test)]})
        dump(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        n_train = 5 * per_batch
        fine = [(7 * i) % 100 for i in range(n_train)]
        dump(folder / "train", {"data": _cifar_rows(n_train, 0), "fine_labels": fine, "coarse_labels": [0] * n_train})
        dump(folder / "test", {"data": _cifar_rows(n_test, 100), "fine_labels": list(range(n_test))})
        dump(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    return folder


@pytest.fixture
def fake_md5_ok(monkeypatch):
    """torchvision's CIFAR loader checks every file's md5 (``_check_integrity`` and ``_load_meta`` both call
    ``torchvision.datasets.cifar.check_integrity``); fake files cannot match, so it is made to accept them."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)


def _pixel_indices(x: torch.Tensor, mean: float, std: float) -> list[int]:
    """Undo the normalisation of the first pixel of every image, giving back the index written there."""
    first = x.reshape(x.shape[0], -1)[:, 0].double().cpu()
    return torch.round((first * std + mean) * 255).long().tolist()


# --- names, shapes, errors ------------------------------------------------------------------------------------------


def test_names_shapes_and_classes():
    assert DATASET_NAMES == ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
    assert dataset_input_shape("mnist") == (1, 28, 28)
    assert dataset_input_shape("Fashion_MNIST") == (1, 28, 28)
    assert dataset_input_shape("cifar10") == (3, 32, 32)
    assert dataset_input_shape("cifar100", flatten=True) == (3072,)
    assert dataset_input_shape("digits") == (1, 8, 8)
    assert [num_classes(n) for n in DATASET_NAMES] == [10, 10, 10, 10, 100]
    for fn in (dataset_input_shape, num_classes):
        with pytest.raises(ValueError, match="valid names: digits, mnist, fashion-mnist, cifar10, cifar100"):
            fn("imagenet")
    with pytest.raises(ValueError, match="valid names"):
        load_dataset("svhn", "unused")


def test_digits_through_load_dataset():
    data = load_dataset("digits", val_size=270, seed=1, dtype=torch.float64)
    assert isinstance(data, DataSplits) and data.name == "digits"
    assert data.input_shape == dataset_input_shape("digits") and data.train.x.dtype == torch.float64
    assert len(data.train) + len(data.val) + len(data.test) == 1797 and len(data.val) == 270
    flat = load_dataset("digits", flatten=True)
    assert flat.input_shape == (64,)


@pytest.mark.parametrize(
    "name, folder, expected",
    [
        ("fashion-mnist", "FashionMNIST/raw", IDX_FILES),
        ("mnist", "MNIST/raw", IDX_FILES),
        ("cifar10", "cifar-10-batches-py", ("data_batch_1", "data_batch_5", "test_batch", "batches.meta")),
        ("cifar100", "cifar-100-python", ("train", "test", "meta")),
    ],
)
def test_offline_error_names_data_set_folder_and_files(tmp_path, name, folder, expected):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert name in message and str(tmp_path / folder) in message
    for f in expected:
        assert f in message
    assert "--data-root" in message and "download=True" in message


def test_offline_error_lists_only_the_missing_files(tmp_path):
    _write_fake_idx(tmp_path / "FashionMNIST" / "raw")
    (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: t10k-labels-idx1-ubyte\."):
        load_dataset("fashion-mnist", tmp_path, val_size=5)


# --- real MNIST -----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"the offline MNIST files are not at {SHARED_MNIST}")
def test_mnist_real_data_matches_load_mnist(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in SHARED_MNIST.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    data = load_dataset("mnist", tmp_path, val_size=5000, seed=3)
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10 and data.name == "mnist"
    assert abs(data.train.x.mean().item()) < 0.05 and abs(data.train.x.std().item() - 1.0) < 0.05
    for split in (data.train, data.val, data.test):
        assert split.y.dtype == torch.long and split.y.min() == 0 and split.y.max() == 9
    assert all((raw / f).is_file() for f in IDX_FILES), "the .gz files are extracted where torchvision reads them"

    reference = load_mnist(tmp_path, val_size=5000, seed=3)
    for ours, theirs in zip(
        (data.train, data.val, data.test), (reference.train, reference.val, reference.test), strict=True
    ):
        assert torch.equal(ours.x, theirs.x) and torch.equal(ours.y, theirs.y)

    flat = load_dataset("mnist", tmp_path, val_size=5000, seed=3, flatten=True)
    assert flat.input_shape == (784,) and torch.equal(flat.val.x, data.val.x.reshape(5000, 784))


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"the offline MNIST files are not at {SHARED_MNIST}")
def test_mnist_read_only_gz_falls_back_to_idx_reader(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in SHARED_MNIST.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    _read_only(raw)
    try:
        data = load_dataset("mnist", tmp_path, val_size=1000, seed=0)
        assert not any((raw / f).exists() for f in IDX_FILES), "nothing may be written into a read-only folder"
    finally:
        _writable_again(raw)
    reference = load_mnist(tmp_path, val_size=1000, seed=0)
    assert torch.equal(data.val.x, reference.val.x) and torch.equal(data.test.y, reference.test.y)


# --- synthetic Fashion-MNIST ----------------------------------------------------------------------------------------


def test_fashion_mnist_synthetic_gz_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    _write_fake_idx(raw)
    data = load_dataset("fashion-mnist", tmp_path, val_size=5, seed=0)
    assert data.name == "fashion-mnist" and data.num_classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 8)
    assert data.input_shape == (1, 28, 28)
    assert all((raw / f).is_file() for f in IDX_FILES), "extracted in place for torchvision"

    train_idx = _pixel_indices(data.train.x, 0.2860, 0.3530)
    val_idx = _pixel_indices(data.val.x, 0.2860, 0.3530)
    assert sorted(train_idx + val_idx) == list(range(20)) and not set(train_idx) & set(val_idx)
    assert data.train.y.tolist() == [i % 10 for i in train_idx] and data.val.y.tolist() == [i % 10 for i in val_idx]
    assert _pixel_indices(data.test.x, 0.2860, 0.3530) == list(range(100, 108)), "test set whole and in order"
    assert data.test.y.tolist() == [(3 * i) % 10 for i in range(8)]
    # every pixel is the fake image's, scaled to [0, 1] and normalised with the Fashion-MNIST statistics
    images = torch.from_numpy(_fake_images(20, 0, (28, 28))).double()
    decoded = torch.round((data.train.x.double().squeeze(1) * 0.3530 + 0.2860) * 255)
    torch.testing.assert_close(decoded, images[train_idx])
    torch.testing.assert_close(data.val.x[0, 0], ((images[val_idx[0]] / 255 - 0.2860) / 0.3530).float())

    # extracted files only (no .gz): read by torchvision as they are, same result
    for f in raw.glob("*.gz"):
        f.unlink()
    again = load_dataset("fashion-mnist", tmp_path, val_size=5, seed=0)
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)


def test_fashion_mnist_read_only_gz_matches_extracted(tmp_path):
    writable, read_only = tmp_path / "w", tmp_path / "ro"
    _write_fake_idx(writable / "FashionMNIST" / "raw")
    _write_fake_idx(read_only / "FashionMNIST" / "raw")
    _read_only(read_only / "FashionMNIST" / "raw")
    try:
        ro = load_dataset("fashion-mnist", read_only, val_size=4, seed=2)
        assert not any((read_only / "FashionMNIST" / "raw" / f).exists() for f in IDX_FILES)
    finally:
        _writable_again(read_only / "FashionMNIST" / "raw")
    w = load_dataset("fashion-mnist", writable, val_size=4, seed=2)
    for a, b in zip((ro.train, ro.val, ro.test), (w.train, w.val, w.test), strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


# --- validation split -----------------------------------------------------------------------------------------------


def test_validation_split_seeded_disjoint_and_test_untouched(tmp_path):
    _write_fake_idx(tmp_path / "FashionMNIST" / "raw")
    stats = (0.2860, 0.3530)
    a = load_dataset("fashion-mnist", tmp_path, val_size=6, seed=5)
    b = load_dataset("fashion-mnist", tmp_path, val_size=6, seed=5)
    c = load_dataset("fashion-mnist", tmp_path, val_size=6, seed=6)
    d = load_dataset("fashion-mnist", tmp_path, val_size=9, seed=5)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y), "reproducible under the seed"
    assert _pixel_indices(a.val.x, *stats) != _pixel_indices(c.val.x, *stats), "the seed matters"
    for s in (a, c, d):
        train, val = set(_pixel_indices(s.train.x, *stats)), set(_pixel_indices(s.val.x, *stats))
        assert not train & val and train | val == set(range(20))
        assert torch.equal(s.test.x, a.test.x) and torch.equal(s.test.y, a.test.y), "test set never touched"
    for bad in (0, 20, -1):
        with pytest.raises(ValueError, match="val_size"):
            load_dataset("fashion-mnist", tmp_path, val_size=bad)


# --- synthetic CIFAR ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_synthetic_batches(tmp_path, fake_md5_ok, name):
    _write_fake_cifar(tmp_path, name)
    data = load_dataset(name, tmp_path, val_size=5, seed=0)
    mean = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}[name]
    std = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}[name]
    assert data.name == name and data.num_classes == num_classes(name)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 6)
    assert data.input_shape == (3, 32, 32)
    # channel planes survive torchvision's HWC layout: R's first pixel is the index, G is 100, B is 200
    train_idx, val_idx = _pixel_indices(data.train.x, mean[0], std[0]), _pixel_indices(data.val.x, mean[0], std[0])
    assert sorted(train_idx + val_idx) == list(range(20)) and not set(train_idx) & set(val_idx)
    assert _pixel_indices(data.test.x, mean[0], std[0]) == list(range(100, 106))
    for c, value in ((1, 100), (2, 200)):
        expected = torch.full_like(data.train.x[:, c], (value / 255 - mean[c]) / std[c])
        torch.testing.assert_close(data.train.x[:, c], expected)
    if name == "cifar10":
        assert data.train.y.tolist() == [i % 10 for i in train_idx]
    else:
        assert data.train.y.tolist() == [(7 * i) % 100 for i in train_idx]
    assert data.test.y.tolist() == ([i % 10 for i in range(6)] if name == "cifar10" else list(range(6)))

    flat = load_dataset(name, tmp_path, val_size=5, seed=0, flatten=True)
    assert flat.input_shape == (3072,) and torch.equal(flat.train.x, data.train.x.reshape(15, -1))


def test_cifar_archive_is_extracted_offline(tmp_path, fake_md5_ok):
    folder = _write_fake_cifar(tmp_path / "src", "cifar10")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    data = load_dataset("cifar10", tmp_path, val_size=2)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 6)
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar_fake_files_fail_torchvision_md5_clearly(tmp_path):
    _write_fake_cifar(tmp_path, "cifar10")
    with pytest.raises(RuntimeError, match="md5"):
        load_dataset("cifar10", tmp_path, val_size=2)


# --- device and dtype -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_and_dtype(tmp_path, fake_md5_ok, device, dtype):
    _write_fake_idx(tmp_path / "FashionMNIST" / "raw")
    _write_fake_cifar(tmp_path, "cifar10")
    for name in ("fashion-mnist", "cifar10"):
        data = load_dataset(name, tmp_path, val_size=3, device=device, dtype=dtype)
        for split in (data.train, data.val, data.test):
            assert split.x.device.type == device and split.y.device.type == device
            assert split.x.dtype == dtype and split.y.dtype == torch.long
    with pytest.raises(ValueError, match="floating"):
        load_dataset("fashion-mnist", tmp_path, val_size=3, dtype=torch.int64)


def test_root_defaults_to_data_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_fake_idx(tmp_path / "data" / "FashionMNIST" / "raw")
    assert len(load_dataset("fashion-mnist", val_size=5).train) == 15
    assert os.path.isdir(tmp_path / "data" / "FashionMNIST" / "raw")
