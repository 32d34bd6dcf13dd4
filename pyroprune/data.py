"""Data sets as tensors on the device, batched there (no DataLoader workers for data that fits).

The embedded default is scikit-learn's bundled digits (1,797 images of 8x8 pixels, no download): split into
train / validation / test with a fixed seed, stratified, standardised with the training split's statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["TensorSplit", "DataSplits", "load_digits", "load_mnist"]


@dataclass
class TensorSplit:
    """Inputs and labels of one split, both on the same device."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TensorSplit:
        return TensorSplit(self.x.to(device, dtype) if dtype else self.x.to(device), self.y.to(device))

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` minibatches; shuffling draws the permutation on the data's device."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator, device="cpu").to(self.x.device)
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                yield self.x[idx], self.y[idx]
        else:
            for i in range(0, n, batch_size):
                yield self.x[i : i + batch_size], self.y[i : i + batch_size]


@dataclass
class DataSplits:
    """Train / validation / test splits of one data set."""

    name: str
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DataSplits:
        return DataSplits(
            self.name,
            self.train.to(device, dtype),
            self.val.to(device, dtype),
            self.test.to(device, dtype),
            self.num_classes,
        )


def load_digits(
    *,
    image: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DataSplits:
    """scikit-learn's bundled digits data set (no download).

    :param image: ``[N, 1, 8, 8]`` images instead of ``[N, 64]`` vectors.
    :param val_fraction: share of all examples held out for validation (taken from the training part).
    :param test_fraction: share held out for testing.
    :param seed: seed of the stratified split.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < v < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {v}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be < 1")
    bunch = _sk_load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float64)
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx = torch.arange(len(y)).numpy()
    rest, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y.numpy())
    train_idx, val_idx = train_test_split(
        rest, test_size=val_fraction / (1.0 - test_fraction), random_state=seed, stratify=y.numpy()[rest]
    )
    mean = x[train_idx].mean()
    std = x[train_idx].std()
    x = (x - mean) / std
    if image:
        x = x.reshape(-1, 1, 8, 8)

    def split(i) -> TensorSplit:
        i = torch.as_tensor(i)
        return TensorSplit(x[i].to(device=device, dtype=dtype), y[i].to(device))

    return DataSplits("digits", split(train_idx), split(val_idx), split(test_idx), 10)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx(path_stem: Path) -> torch.Tensor:
    """Read an IDX file (``.gz`` or extracted) into a uint8 tensor."""
    import gzip

    import numpy as np

    for candidate, opener in ((path_stem, open), (path_stem.with_name(path_stem.name + ".gz"), gzip.open)):
        if candidate.is_file():
            with opener(candidate, "rb") as f:
                raw = f.read()
            ndim = raw[3]
            dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
            return torch.from_numpy(data.copy()).reshape(dims)
    raise FileNotFoundError(
        f"MNIST file {path_stem.name}(.gz) not found in {path_stem.parent}; put the four original MNIST files "
        "there (e.g. from torchvision.datasets.MNIST(root, download=True) on a machine with network)"
    )


def load_mnist(
    root: str | Path,
    *,
    flatten: bool = False,
    val_size: int = 5000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DataSplits:
    """MNIST from the original IDX files under ``root/MNIST/raw`` (or ``root`` itself), no download.

    Pixels are scaled to [0, 1] and normalised with the usual mean 0.1307 and standard deviation 0.3081;
    the last ``val_size`` examples of a seeded permutation of the training set form the validation split.
    """
    root = Path(root)
    raw = root / "MNIST" / "raw" if (root / "MNIST" / "raw").is_dir() else root
    if not 0 < val_size < 60000:
        raise ValueError(f"val_size must be in (0, 60000), got {val_size}")
    parts = {}
    for split, (images, labels) in _MNIST_FILES.items():
        x = _read_idx(raw / images).to(torch.float32).div_(255.0).sub_(0.1307).div_(0.3081)
        y = _read_idx(raw / labels).to(torch.long)
        parts[split] = (x.reshape(-1, 784) if flatten else x.unsqueeze(1), y)
    x, y = parts["train"]
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, va = perm[:-val_size], perm[-val_size:]

    def split(xs, ys) -> TensorSplit:
        return TensorSplit(xs.to(device=device, dtype=dtype), ys.to(device))

    return DataSplits("mnist", split(x[tr], y[tr]), split(x[va], y[va]), split(*parts["test"]), 10)
