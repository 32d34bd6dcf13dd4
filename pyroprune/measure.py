"""Counting and timing: parameters, multiply-accumulates, measured latency, peak tensor memory."""

from __future__ import annotations

import itertools
import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .layers import FeatureSelectLinear

__all__ = ["count_params", "count_macs", "measure_latency", "peak_tensor_memory"]


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


class _StorageTracker(TorchDispatchMode):
    """Count the bytes of the tensor storages that operators create, and free them when the storages die.

    A storage is identified by its ``StorageImpl`` (``_cdata``); its Python object is kept alive by the storage
    itself, so a ``weakref.finalize`` on it runs exactly when the memory is released. A storage that an
    operator returns but that one of its inputs already had (a view, an in-place or ``out=`` result) is not new.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, tuple[int, int, weakref.finalize]] = {}  # cdata -> (token, nbytes, finaliser)
        self._tokens = itertools.count()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if _has_storage(t)}
        for t in tree_leaves(out):
            if _has_storage(t):
                self._record(t.untyped_storage(), inputs)
        return out

    def _record(self, storage: torch.UntypedStorage, inputs: set[int]) -> None:
        key = storage._cdata
        entry = self._live.get(key)
        if entry is not None:
            token, nbytes, fin = entry
            owner = fin.peek()
            if owner is not None and owner[0] is storage:  # seen before: only a resize can change its size
                self._add(storage.nbytes() - nbytes)
                self._live[key] = (token, storage.nbytes(), fin)
                return
            fin.detach()  # a dead storage whose address was reused before its finaliser ran
            self._free(key, token)
        if key in inputs:  # existed before the call (a view or in-place result of a tensor made outside fn)
            return
        token = next(self._tokens)
        fin = weakref.finalize(storage, self._free, key, token)
        fin.atexit = False
        self._live[key] = (token, storage.nbytes(), fin)
        self._add(storage.nbytes())

    def _add(self, nbytes: int) -> None:
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def _free(self, key: int, token: int) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[0] == token:
            del self._live[key]
            self.current -= entry[1]


def _has_storage(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type != "meta"


def _first_tensor_device(values) -> torch.device | None:
    for leaf in tree_leaves(values):
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    return None


def peak_tensor_memory[T](
    fn: Callable[..., T], *args: Any, device: torch.device | str | None = None, **kwargs: Any
) -> tuple[T, int]:
    """Run ``fn(*args, **kwargs)`` and return its result and the peak number of bytes of tensor storage that was
    allocated while it ran and alive at the same time.

    Only memory allocated *during* the call counts: tensors that exist before it (``fn``'s inputs, model
    parameters) do not, nor do views of them or in-place results written into them; tensors that ``fn``
    returns do count (they are alive at the end).

    * **CPU** (``device`` a CPU device, or ``None`` and the first tensor argument not on CUDA): every
      operator's output storages are recorded by a :class:`~torch.utils._python_dispatch.TorchDispatchMode`,
      each storage once (its full ``nbytes``, however many tensors view it), and released when the storage
      dies. The figure is exact and deterministic: it does not depend on the allocator, the process's resident
      set or other threads. Not seen: what a single operator allocates and frees inside its kernel (BLAS
      workspaces; the intermediates of an operator implemented by calling others below the dispatcher, e.g.
      ``torch.cdist``), and memory that is not a tensor storage.
    * **CUDA**: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call, after
      ``torch.cuda.reset_peak_memory_stats`` -- the caching allocator's view, so kernel workspaces count and
      sizes are rounded to its blocks.

    :param fn: the function to measure.
    :param device: which method to use (see above); ``None`` takes the device of the first tensor argument.
    :returns: ``(fn(*args, **kwargs), peak_bytes)``.
    """
    device = torch.device(device) if device is not None else _first_tensor_device((args, kwargs))
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return result, max(torch.cuda.max_memory_allocated(device) - before, 0)
    tracker = _StorageTracker()
    with tracker:
        result = fn(*args, **kwargs)
    return result, tracker.peak
