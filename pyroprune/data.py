"""Data sets as tensors on the device, batched there (no DataLoader workers for data that fits).

The embedded default is scikit-learn's bundled digits (1,797 images of 8x8 pixels, no download): split into
train / validation / test with a fixed seed, stratified, standardised with the training split's statistics.
:func:`load_dataset` gives MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through :mod:`torchvision.datasets` the same
way (offline unless asked to download); :func:`load_mnist` reads the original MNIST IDX files directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch

__all__ = [
    "DATASET_NAMES",
    "TensorSplit",
    "DataSplits",
    "dataset_input_shape",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "num_classes",
]


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


# ---------------------------------------------------------------------------------------------------------------------
# Named data sets through torchvision
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DatasetSpec:
    """What :func:`load_dataset` needs to know about one named data set (immutable, module-level constant)."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_train: int
    default_val_size: int
    kind: str  # "digits", "idx" (MNIST family) or "cifar"
    tv_class: str = ""  # class name in torchvision.datasets
    folder: str = ""  # where torchvision keeps the files, relative to the root
    files: tuple[str, ...] = ()  # files torchvision reads from ``folder``
    archive: str = ""  # the original archive (CIFAR), relative to the root


_IDX_FILES = tuple(f for pair in _MNIST_FILES.values() for f in pair)

# Normalisations: the training sets' per-channel pixel mean and standard deviation (pixels scaled to [0, 1]).
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

# Normalisations: the training sets' per-channel pixel mean and standard deviation (pixels scaled to [0, 1]).
_DATASETS: MappingProxyType[str, _DatasetSpec] = MappingProxyType(
    {
        "digits": _DatasetSpec(
            "digits", (1, 8, 8), num_classes=10, mean=(), std=(), n_train=1797, default_val_size=0, kind="digits"
        ),
        "mnist": _DatasetSpec(
            "mnist",
            (1, 28, 28),
            num_classes=10,
            mean=(0.1307,),
            std=(0.3081,),
            n_train=60000,
            default_val_size=5000,
            kind="idx",
            tv_class="MNIST",
            folder="MNIST/raw",
            files=_IDX_FILES,
        ),
        "fashion-mnist": _DatasetSpec(
            "fashion-mnist",
            (1, 28, 28),
            num_classes=10,
            mean=(0.2860,),
            std=(0.3530,),
            n_train=60000,
            default_val_size=5000,
            kind="idx",
            tv_class="FashionMNIST",
            folder="FashionMNIST/raw",
            files=_IDX_FILES,
        ),
        "cifar10": _DatasetSpec(
            "cifar10",
            (3, 32, 32),
            num_classes=10,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            n_train=50000,
            default_val_size=5000,
            kind="cifar",
            tv_class="CIFAR10",
            folder="cifar-10-batches-py",
            files=_CIFAR10_FILES,
            archive="cifar-10-python.tar.gz",
        ),
        "cifar100": _DatasetSpec(
            "cifar100",
            (3, 32, 32),
            num_classes=100,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            n_train=50000,
            default_val_size=5000,
            kind="cifar",
            tv_class="CIFAR100",
            folder="cifar-100-python",
            files=("train", "test", "meta"),
            archive="cifar-100-python.tar.gz",
        ),
    }
)

#: Names accepted by :func:`load_dataset`, :func:`dataset_input_shape` and :func:`num_classes`.
DATASET_NAMES: tuple[str, ...] = tuple(_DATASETS)

_ALIASES = MappingProxyType(
    {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}
)


def _spec(name: str) -> _DatasetSpec:
    """Look a data set up by name (case-insensitive, ``_`` and ``-`` alike); unknown names raise ``ValueError``."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return _DATASETS[key]


def dataset_input_shape(name: str, *, flatten: bool = False) -> tuple[int, ...]:
    """Shape of one input of the data set ``name`` as :func:`load_dataset` returns it, e.g. ``(1, 28, 28)``.

    :param name: one of :data:`DATASET_NAMES`.
    :param flatten: the shape of the flattened vector instead, e.g. ``(784,)``.
    :raises ValueError: for an unknown name.
    """
    shape = _spec(name).input_shape
    if flatten:
        n = 1
        for s in shape:
            n *= s
        return (n,)
    return shape


def num_classes(name: str) -> int:
    """Number of classes of the data set ``name`` (one of :data:`DATASET_NAMES`).

    :raises ValueError: for an unknown name.
    """
    return _spec(name).num_classes


def _is_writable(path: Path) -> bool:
    """Whether ``path`` may be written: the permission bits say so too (as root, ``os.access`` alone always does)."""
    import os
    import stat

    try:
        return os.access(path, os.W_OK) and bool(path.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


def _missing_files_error(spec: _DatasetSpec, folder: Path, missing: list[str]) -> FileNotFoundError:
    archive = f" (or the archive {spec.archive} in {folder.parent})" if spec.archive else ""
    gz = " (each either extracted or as the original .gz)" if spec.kind == "idx" else ""
    return FileNotFoundError(
        f"{spec.name} data set not found: looked in {folder} for {', '.join(spec.files)}{gz}{archive}; "
        f"missing: {', '.join(missing)}. Either point the data root (`root=`, the command line's --data-root) at a "
        f"folder holding an existing copy in torchvision's layout (<root>/{spec.folder}/...), or pass download=True "
        "on a machine with network access to let torchvision download it."
    )


def _decompress_gz(gz: Path, target: Path) -> None:
    """Extract ``gz`` into ``target`` atomically (a temporary file in the same folder, then renamed)."""
    import gzip
    import os
    import shutil
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(gz, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_idx_family(spec: _DatasetSpec, root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    """uint8 images ``[N, H, W]`` and long labels of the train and test sets of MNIST or Fashion-MNIST.

    Extracted files are read by torchvision in place; when only the original ``.gz`` files exist they are extracted
    next to themselves first (no network: nothing is downloaded unless ``download``), or, when that folder is
    read-only, read directly with the IDX reader of :func:`load_mnist`.
    """
    import torchvision.datasets as tvd

    tv_cls = getattr(tvd, spec.tv_class)
    raw = root / spec.folder
    if download:
        parts = [tv_cls(str(root), train=t, download=True) for t in (True, False)]
        return parts[0].data, parts[0].targets, parts[1].data, parts[1].targets
    extracted = [f for f in spec.files if (raw / f).is_file()]
    missing = [f for f in spec.files if f not in extracted and not (raw / f"{f}.gz").is_file()]
    if missing:
        raise _missing_files_error(spec, raw, missing)
    to_extract = [f for f in spec.files if f not in extracted]
    if to_extract and _is_writable(raw):
        try:
            for f in to_extract:
                _decompress_gz(raw / f"{f}.gz", raw / f)
            to_extract = []
        except OSError:
            pass  # e.g. a read-only mount: fall back to reading the .gz files directly
    if to_extract:
        out = []
        for images, labels in _MNIST_FILES.values():
            out += [_read_idx(raw / images), _read_idx(raw / labels).to(torch.long)]
        return tuple(out)
    parts = [tv_cls(str(root), train=t, download=False) for t in (True, False)]
    return parts[0].data, parts[0].targets, parts[1].data, parts[1].targets


def _load_cifar(spec: _DatasetSpec, root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    """uint8 images ``[N, 3, 32, 32]`` and long labels of the train and test sets of CIFAR-10 or CIFAR-100.

    An original archive lying under ``root`` but not yet extracted is extracted there (no network).
    """
    import tarfile

    import torchvision.datasets as tvd

    tv_cls = getattr(tvd, spec.tv_class)
    folder = root / spec.folder
    if not download:
        missing = [f for f in spec.files if not (folder / f).is_file()]
        if missing and (root / spec.archive).is_file():
            with tarfile.open(root / spec.archive) as tar:
                tar.extractall(root, filter="data")  # no absolute paths, links out of root or device files
            missing = [f for f in spec.files if not (folder / f).is_file()]
        if missing:
            raise _missing_files_error(spec, folder, missing)
    parts = []
    for train in (True, False):
        try:
            ds = tv_cls(str(root), train=train, download=download)
        except RuntimeError as e:
            raise RuntimeError(
                f"{spec.name}: the files in {folder} are present but torchvision rejects them ({e}); they are "
                "probably corrupted or not the original release (torchvision checks their md5 sums)"
            ) from e
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # torchvision keeps HWC
        parts += [x, torch.as_tensor(ds.targets, dtype=torch.long)]
    return tuple(parts)


def _fits_on(device: torch.device, nbytes: int, headroom: float = 0.8) -> bool:
    """Whether ``nbytes`` fit into the free memory of an accelerator (always true on the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= headroom * free
    return True


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    val_size: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    flatten: bool = False,
    download: bool = False,
) -> DataSplits:
    """A named image-classification data set as train / validation / test tensors on ``device``.

    ``name`` is one of :data:`DATASET_NAMES`: ``digits`` (scikit-learn's bundled 8x8 digits, see
    :func:`load_digits`; ``root`` and ``download`` are ignored), ``mnist`` [LeCun98]_, ``fashion-mnist`` [Xiao17]_,
    ``cifar10`` and ``cifar100`` [Krizhevsky09]_, read with :mod:`torchvision.datasets` (``MNIST``,
    ``FashionMNIST``, ``CIFAR10``, ``CIFAR100``) from torchvision's layout under ``root``
    (``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``, ``<root>/cifar-10-batches-py``, ``<root>/cifar-100-python``).

    The data sets' ``data`` / ``targets`` arrays are converted once into tensors (no per-item loop), moved to
    ``device`` as uint8 when they fit there (else they stay on the CPU, with a warning), scaled to [0, 1] and
    normalised per channel with the fixed statistics of the training images that the literature uses:

    ================  ==========================  ==========================  ===========================
    data set          mean                        std                         source
    ================  ==========================  ==========================  ===========================
    MNIST             0.1307                      0.3081                      PyTorch's MNIST example
                                                                              (``pytorch/examples``)
    Fashion-MNIST     0.2860                      0.3530                      training-set pixel statistics
    CIFAR-10          (0.4914, 0.4822, 0.4465)    (0.2470, 0.2435, 0.2616)    training-set per-channel
                                                                              statistics (the std over all
                                                                              pixels, not the per-image
                                                                              average (0.2023, 0.1994,
                                                                              0.2010) some code uses)
    CIFAR-100         (0.5071, 0.4865, 0.4409)    (0.2673, 0.2564, 0.2762)    training-set per-channel
                                                                              statistics, as in
                                                                              ``weiaicunzai/pytorch-cifar100``
    ================  ==========================  ==========================  ===========================

    The validation split is held out of the *training* set: the last ``val_size`` examples of a permutation drawn
    with ``torch.Generator().manual_seed(seed)`` (the same rule as :func:`load_mnist`, so
    ``load_dataset("mnist", root)`` and ``load_mnist(root)`` agree); the test set is returned whole and in order.

    Offline: with ``download=False`` (the default) nothing touches the network. MNIST and Fashion-MNIST are read
    from the extracted IDX files, or from the original ``.gz`` files, which are extracted in place when the folder
    is writable and read directly otherwise; CIFAR archives (``cifar-10-python.tar.gz``) lying in ``root`` are
    extracted. With ``download=True`` torchvision downloads what is missing (needs network access).

    :param name: data set name (case-insensitive; ``fashion_mnist``, ``cifar-10`` and the like are accepted).
    :param root: data root in torchvision's layout; ``None`` means ``./data`` (resolved at call time).
    :param val_size: examples held out for validation; ``None`` gives 5,000 (for ``digits``: 15 % of all, as in
        :func:`load_digits`).
    :param seed: seed of the validation permutation.
    :param device: where the tensors live.
    :param dtype: floating dtype of the inputs (labels are ``torch.long``).
    :param flatten: ``[N, C*H*W]`` vectors instead of ``[N, C, H, W]`` images.
    :param download: let torchvision download missing files.
    :raises ValueError: for an unknown name or a ``val_size`` outside ``(0, number of training examples)``.
    :raises FileNotFoundError: when files are missing and ``download`` is false; the message names the data set,
        the folder searched, the files expected and how to get them.

    .. [LeCun98] Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to document
       recognition", Proc. IEEE 86(11), 1998. http://yann.lecun.com/exdb/mnist/
    .. [Xiao17] H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a novel image dataset for benchmarking machine
       learning algorithms", arXiv:1708.07747, 2017.
    .. [Krizhevsky09] A. Krizhevsky, "Learning multiple layers of features from tiny images", technical report,
       University of Toronto, 2009. https://www.cs.toronto.edu/~kriz/cifar.html
    """
    import warnings

    spec = _spec(name)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if spec.kind == "digits":
        n_all = spec.n_train
        val_fraction = 0.15 if val_size is None else val_size / n_all
        if val_size is not None and not 0 < val_size < n_all * 0.75:
            raise ValueError(f"val_size must be in (0, {int(n_all * 0.75)}) for digits, got {val_size}")
        return load_digits(image=not flatten, val_fraction=val_fraction, seed=seed, device=device, dtype=dtype)

    root = Path("data") if root is None else Path(root)
    root = root.expanduser()
    loader = _load_idx_family if spec.kind == "idx" else _load_cifar
    x_train, y_train, x_test, y_test = loader(spec, root, download)
    n_train = x_train.shape[0]
    val_size = spec.default_val_size if val_size is None else int(val_size)
    if not 0 < val_size < n_train:
        raise ValueError(f"val_size must be in (0, {n_train}) for {spec.name}, got {val_size}")

    device = torch.device(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if not _fits_on(device, (x_train.numel() + x_test.numel()) * (itemsize + 1)):
        warnings.warn(f"{spec.name} does not fit into the free memory of {device}; keeping it on the CPU", stacklevel=2)
        device = torch.device("cpu")
    mean = torch.tensor(spec.mean, dtype=dtype, device=device).reshape(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=dtype, device=device).reshape(1, -1, 1, 1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)  # uint8: the smallest transfer
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = x.to(dtype).div_(255.0).sub_(mean).div_(std)
        return x.reshape(x.shape[0], -1) if flatten else x

    x_train, x_test = prepare(x_train), prepare(x_test)
    y_train, y_test = y_train.to(device, torch.long), y_test.to(device, torch.long)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).to(device)
    tr, va = perm[:-val_size], perm[-val_size:]
    return DataSplits(
        spec.name,
        TensorSplit(x_train[tr], y_train[tr]),
        TensorSplit(x_train[va], y_train[va]),
        TensorSplit(x_test, y_test),
        spec.num_classes,
    )
