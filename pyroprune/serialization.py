"""Saving and loading pruned networks without pickle.

A pruned network is stored as ``model.safetensors`` (the state dict) and ``model.json``: the architecture
(a :mod:`pyroprune.models` registry name and its keyword arguments) and the shape of every ``Linear``, ``Conv``
and ``BatchNorm`` module. Loading builds the dense architecture, replaces those modules by fresh ones of the
recorded shapes and loads the weights -- no code is ever unpickled. A
:class:`~pyroprune.layers.FeatureSelectLinear` (a ``Linear`` whose pruned input features were removed) is
recorded with its type, reduced ``in_features`` and ``original_in_features``; its ``in_index`` buffer is in the
state dict. Residual blocks removed by SR-init (:func:`~pyroprune.blocks.remove_blocks`) are listed under
``removed_blocks`` and removed from the dense architecture before the modules are reshaped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .blocks import remove_blocks, removed_blocks
from .layers import FeatureSelectLinear
from .plan import atomic_write_text

__all__ = ["save_pruned", "load_pruned"]

_FORMAT = "pyroprune.PrunedModel"


def _spec(m: nn.Module) -> dict | None:
    if isinstance(m, FeatureSelectLinear):
        return {
            "type": "FeatureSelectLinear",
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
            "original_in_features": m.original_in_features,
        }
    if isinstance(m, nn.Linear):
        return {
            "type": "Linear",
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
        }
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return {
            "type": type(m).__name__,
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size),
            "stride": list(m.stride),
            "padding": _padding(m.padding),
            "dilation": list(m.dilation),
            "groups": m.groups,
            "bias": m.bias is not None,
            "padding_mode": m.padding_mode,
        }
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return {
            "type": type(m).__name__,
            "num_features": m.num_features,
            "eps": m.eps,
            "momentum": m.momentum,
            "affine": m.affine,
            "track_running_stats": m.track_running_stats,
        }
    return None


def _padding(p):
    return p if isinstance(p, str) else list(p)


def _build(spec: dict) -> nn.Module:
    kind = spec["type"]
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "type"}
    if kind == "FeatureSelectLinear":  # in_index placeholder; the state dict holds the real one
        width = int(args.pop("in_features"))
        return FeatureSelectLinear(torch.arange(width), **args)
    cls = {
        "Linear": nn.Linear,
        "Conv1d": nn.Conv1d,
        "Conv2d": nn.Conv2d,
        "Conv3d": nn.Conv3d,
        "BatchNorm1d": nn.BatchNorm1d,
        "BatchNorm2d": nn.BatchNorm2d,
        "BatchNorm3d": nn.BatchNorm3d,
    }.get(kind)
    if cls is None:
        raise ValueError(f"model.json: unknown module type {kind!r}")
    return cls(**args)


def save_pruned(
    net: nn.Module, directory: str | os.PathLike, arch: dict | None = None, metadata: dict | None = None
) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` (atomically, file by file).

    :param arch: ``{"name": registry name, "kwargs": {...}}`` so :func:`load_pruned` can rebuild it alone;
        without it, loading needs the dense network as a skeleton.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    modules = {name: s for name, m in net.named_modules() if (s := _spec(m)) is not None}
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tmp = directory / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    dtype = next((p.dtype for p in net.parameters()), torch.get_default_dtype())
    doc = {
        "format": _FORMAT,
        "version": 1,
        "arch": arch,
        "dtype": str(dtype).removeprefix("torch."),
        "removed_blocks": removed_blocks(net),
        "modules": modules,
        "metadata": metadata or {},
    }
    atomic_write_text(directory / "model.json", json.dumps(doc, indent=1))


def load_pruned(directory: str | os.PathLike, skeleton: nn.Module | None = None) -> nn.Module:
    """Load a network written by :func:`save_pruned`.

    :param skeleton: the dense network to reshape, needed when the model was saved without ``arch``.
    """
    directory = Path(directory)
    for name in ("model.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found (not a pyroprune model directory?)")
    try:
        doc = json.loads((directory / "model.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{directory / 'model.json'} is not valid JSON: {e}") from e
    if doc.get("format") != _FORMAT:
        raise ValueError(f"{directory / 'model.json'} is not a pyroprune model description")
    if skeleton is None:
        if not doc.get("arch"):
            raise ValueError("this model was saved without an architecture; pass the dense network as 'skeleton'")
        from .models import build_model

        net = build_model(doc["arch"]["name"], **doc["arch"].get("kwargs", {}))
    else:
        import copy

        net = copy.deepcopy(skeleton)
    gone = doc.get("removed_blocks", [])
    if gone:  # SR-init: the same blocks leave the dense skeleton first, so module paths match
        try:
            net = remove_blocks(net, gone, inplace=True)
        except ValueError as e:
            raise ValueError(f"{directory / 'model.json'}: {e}") from None
    for path, spec in doc["modules"].items():
        parent_path, _, attr = path.rpartition(".")
        parent = net.get_submodule(parent_path) if parent_path else net
        setattr(parent, attr, _build(spec))
    dtype = getattr(torch, doc.get("dtype", "float32"), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{directory / 'model.json'}: unknown dtype {doc.get('dtype')!r}")
    net.to(dtype)
    state = load_file(str(directory / "model.safetensors"))
    net.load_state_dict(state, strict=True)
    net.eval()
    return net
