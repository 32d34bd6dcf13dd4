"""Counting and timing: parameters, multiply-accumulates, measured latency."""

from __future__ import annotations

import statistics
import time

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["count_params", "count_macs", "measure_latency"]


def count_params(net: nn.Module) -> int:
    """Number of parameters (every element of every ``nn.Parameter``)."""
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def count_macs(net: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of a single example, as counted by Torch-Pruning (bias additions
    included, so an MLP has as many MACs as parameters)."""
    macs, _ = tp.utils.count_ops_and_params(net, example_input[:1])
    return int(macs)


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
