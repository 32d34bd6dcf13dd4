"""Counting and timing: parameters, multiply-accumulates, measured latency."""

from __future__ import annotations

import statistics
import time

import torch
import torch_pruning as tp
from torch import nn

from .layers import FeatureSelectLinear

__all__ = ["count_params", "count_macs", "measure_latency"]


def count_params(net: nn.Module) -> int:
    """Number of parameters (every element of every ``nn.Parameter``)."""
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def count_macs(net: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of a single example, as counted by Torch-Pruning (bias additions
    included, so an MLP has as many MACs as parameters).

    Torch-Pruning's counter matches module types exactly, so it skips a
    :class:`~pyroprune.layers.FeatureSelectLinear`; such a layer is counted here like a ``Linear`` with its
    reduced ``in_features``: :math:`n \\cdot d_{\\text{kept}} \\cdot d_{\\text{out}} + d_{\\text{out}}` for
    :math:`n` input rows (the selection itself is free).
    """
    x = example_input[:1]
    macs, _ = tp.utils.count_ops_and_params(net, x)
    selecting = [m for m in net.modules() if type(m) is FeatureSelectLinear]
    if not selecting:
        return int(macs)
    extra = []

    def count(module: FeatureSelectLinear, inputs, output: torch.Tensor) -> None:
        rows = inputs[0].numel() // inputs[0].shape[-1]
        extra.append(
            rows * module.in_features * module.out_features + (output.shape[-1] if module.bias is not None else 0)
        )

    handles = [m.register_forward_hook(count) for m in selecting]
    was_training = net.training
    net.eval()
    try:
        net(x)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return int(macs) + sum(extra)


@torch.no_grad()
def measure_latency(net: nn.Module, example_input: torch.Tensor, repeats: int = 50, warmup: int = 10) -> float:
    """Median wall-clock time of one forward pass of ``example_input``, in milliseconds.

    Runs in eval mode under ``torch.inference_mode``; synchronises CUDA around each timed call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    was_training = net.training
    net.eval()
    cuda = example_input.is_cuda
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(example_input)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    net.train(was_training)
    return 1e3 * statistics.median(times)
