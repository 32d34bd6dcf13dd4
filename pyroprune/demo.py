"""The embedded demo: the BMRS MLP on scikit-learn's digits, dense vs pruned.

Shared by ``pyroprune demo`` and ``benchmarks/demo_methods.py`` so both measure the same thing.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import DataSplits
from .infer import train_plain
from .models import build_model

__all__ = ["DEMO_ARCH", "DEMO_METHODS", "DEMO_SPLIT_SEED", "train_dense"]

#: The architecture of the demo: the BMRS MLP (6 tanh layers of 50 units) on 8x8 digits.
DEMO_ARCH = {"name": "bmrs-mlp", "kwargs": {"in_features": 64, "hidden": 50, "depth": 6, "num_classes": 10}}
DEMO_METHODS = ("bmrs-n", "bmrs-u8", "bmrs-u4", "snr")
#: The demo's train/validation/test split does not change with ``--seed`` (which seeds training only).
DEMO_SPLIT_SEED = 0


def train_dense(data: DataSplits, *, epochs: int, seed: int, progress: bool = True) -> nn.Module:
    """Train the demo's dense network (Adam, best validation checkpoint)."""
    torch.manual_seed(seed)
    net = build_model(DEMO_ARCH["name"], **DEMO_ARCH["kwargs"]).to(data.train.x.device)
    train_plain(
        net,
        data.train,
        epochs=epochs,
        batch_size=64,
        lr=3e-3,
        val=data.val,
        seed=seed,
        progress=progress,
        description="dense",
    )
    return net
