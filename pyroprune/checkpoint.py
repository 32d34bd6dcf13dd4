"""Resumable training: checkpoints of an SVI fit as safetensors + JSON.

A checkpoint is a folder with two files:

* ``checkpoint.safetensors`` -- every tensor: the gated network's state dict (``model.*``), the guide's
  (``guide.*``), the optimizer's state tensors (``optim.state.<index>.<key>``, and tensor-valued hyperparameters
  under ``optim.group.<index>.<key>``), the keep masks (``mask.<site>``), the minibatch generator's state
  (``rng.generator``), torch's CPU RNG state (``rng.torch``) and the CUDA RNG states (``rng.cuda.<device>``);
* ``checkpoint.json`` -- the format tag and version, the epoch, the caller's fingerprint, the optimizer's
  non-tensor state (parameter groups, scalar state entries), the history and Python's / NumPy's RNG states.

Nothing is pickled. Both files are written under temporary names and moved into place with ``os.replace``, the
tensor file first, so the JSON never points at a partial tensor file; a random token shared by both files
detects a tensor file that does not belong to the JSON (a crash between the two moves).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "TENSOR_FILE",
    "JSON_FILE",
    "checkpoint_exists",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "pyroprune.Checkpoint"
CHECKPOINT_VERSION = 1
TENSOR_FILE = "checkpoint.safetensors"
JSON_FILE = "checkpoint.json"


def checkpoint_exists(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint (its JSON file; the tensor file is checked when loading)."""
    return (Path(directory) / JSON_FILE).is_file()


# -- saving ---------------------------------------------------------------------------------------------------


def _cpu(t: torch.Tensor) -> torch.Tensor:
    # A private contiguous copy: safetensors refuses tensors that share storage (tied weights).
    return t.detach().to("cpu", copy=True).contiguous()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint's JSON: {obj!r}")


def _normalise(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples become lists...)."""
    return json.loads(json.dumps(data, default=_json_default))


def _python_rng_state() -> list:
    version, internal, gauss_next = random.getstate()
    return [version, list(internal), gauss_next]


def _numpy_rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": cached}


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.state.{index}.{key}"] = _cpu(value)
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = []
    for g, group in enumerate(state["param_groups"]):
        plain = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.group.{g}.{key}"] = _cpu(value)
            else:
                plain[key] = value
        groups.append(plain)
    return tensors, {"param_groups": groups, "state": scalars}


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    epoch: int,
    gated: nn.Module,
    guide: Any,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    history: list[dict],
    masks: Mapping[str, torch.Tensor] | None,
    fingerprint: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint of a fit after ``epoch`` completed epochs into ``directory`` (created if needed).

    :param epoch: the number of completed epochs.
    :param gated: the model (its ``state_dict`` is saved).
    :param guide: the guide (its ``state_dict`` when it is an ``nn.Module``).
    :param optimizer: the optimizer; its state tensors and parameter groups are saved.
    :param generator: the generator drawing the minibatch order.
    :param history: the per-epoch records so far (JSON-safe; tensors and NumPy scalars are converted).
    :param masks: the keep masks (site name -> bool tensor), or ``None``.
    :param fingerprint: a JSON-safe description of the run (recipe, architecture, data set, seed...);
        :func:`load_checkpoint` refuses a checkpoint whose fingerprint differs.
    :param extra: more JSON-safe data stored with the checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("model", gated), ("guide", guide)):
        if isinstance(module, nn.Module):
            tensors.update({f"{prefix}.{k}": _cpu(v) for k, v in module.state_dict().items()})
    optim_tensors, optim_json = _optimizer_state(optimizer)
    tensors.update(optim_tensors)
    mask_devices = {}
    for name, mask in (masks or {}).items():
        tensors[f"mask.{name}"] = _cpu(torch.as_tensor(mask, dtype=torch.bool))
        mask_devices[name] = torch.as_tensor(mask).device.type
    tensors["rng.generator"] = _cpu(generator.get_state())
    tensors["rng.torch"] = _cpu(torch.get_rng_state())
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    for i, s in enumerate(cuda_states):
        tensors[f"rng.cuda.{i}"] = _cpu(s)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "token": token,
        "epoch": int(epoch),
        "fingerprint": dict(fingerprint),
        "optimizer": optim_json,
        "history": list(history),
        "masks": mask_devices,
        "rng": {"python": _python_rng_state(), "numpy": _numpy_rng_state(), "cuda_devices": len(cuda_states)},
        "extra": dict(extra or {}),
    }
    try:
        text = json.dumps(meta, indent=1, default=_json_default, allow_nan=True)
    except TypeError as e:
        raise TypeError(f"checkpoint for epoch {epoch}: {e}") from e
    tensor_tmp = _temp_name(directory, TENSOR_FILE)
    json_tmp = _temp_name(directory, JSON_FILE)
    try:
        save_file(tensors, tensor_tmp, metadata={"format": CHECKPOINT_FORMAT, "token": token, "epoch": str(epoch)})
        _fsync(tensor_tmp)
        with open(json_tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tensor_tmp, directory / TENSOR_FILE)
        os.replace(json_tmp, directory / JSON_FILE)
    finally:
        for tmp in (tensor_tmp, json_tmp):
            if os.path.exists(tmp):
                os.unlink(tmp)


def _temp_name(directory: Path, name: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# -- loading --------------------------------------------------------------------------------------------------


def _read(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    json_path, tensor_path = directory / JSON_FILE, directory / TENSOR_FILE
    missing = [str(p) for p in (json_path, tensor_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"incomplete checkpoint in {directory}: missing {', '.join(missing)}")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint file {json_path} is corrupt (not valid JSON): {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{json_path} is not a pyroprune checkpoint (missing 'format': {CHECKPOINT_FORMAT!r})")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{json_path}: checkpoint version {meta.get('version')!r} is not supported (expected {CHECKPOINT_VERSION})"
        )
    required = ("token", "epoch", "fingerprint", "optimizer", "history", "masks", "rng")
    absent = [k for k in required if k not in meta]
    if absent:
        raise ValueError(f"checkpoint file {json_path} is corrupt: missing keys {absent}")
    try:
        tensors = load_file(tensor_path, device="cpu")
        with open(tensor_path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
    except Exception as e:  # safetensors raises its own error type for a bad header or a short file
        raise ValueError(f"checkpoint file {tensor_path} is corrupt: {e}") from e
    token = (header.get("__metadata__") or {}).get("token")
    if token != meta["token"]:
        raise ValueError(
            f"checkpoint files {tensor_path} and {json_path} do not belong together (a write was interrupted?)"
        )
    return meta, tensors


def _flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_fingerprint(saved: Mapping, current: Mapping, where: Path) -> None:
    saved, current = _flatten(saved), _flatten(_normalise(dict(current)))
    absent = "<absent>"
    diffs = [
        f"{key} {saved.get(key, absent)!r}, this run is {current.get(key, absent)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key, absent) != current.get(key, absent)
    ]
    if diffs:
        raise ValueError(f"checkpoint in {where} was written for " + "; ".join(diffs))


def _module_state(
    module: Any, tensors: Mapping[str, torch.Tensor], prefix: str, what: str
) -> dict[str, torch.Tensor] | None:
    if not isinstance(module, nn.Module):
        return None
    saved = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    current = module.state_dict()
    missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the {what}: missing {missing or 'nothing'}, "
            f"unexpected {unexpected or 'nothing'}"
        )
    for k, v in current.items():
        if tuple(saved[k].shape) != tuple(v.shape):
            raise ValueError(
                f"checkpoint does not match the {what}: {k!r} has shape {tuple(saved[k].shape)} in the checkpoint, "
                f"{tuple(v.shape)} here"
            )
    return saved


def _optimizer_state_dict(optimizer: torch.optim.Optimizer, meta: dict, tensors: Mapping[str, torch.Tensor]) -> dict:
    current = optimizer.state_dict()
    groups = meta["optimizer"]["param_groups"]
    if len(groups) != len(current["param_groups"]):
        raise ValueError(
            f"checkpoint does not match the optimizer: {len(groups)} parameter groups saved, "
            f"{len(current['param_groups'])} here"
        )
    param_groups = []
    for g, (saved, here) in enumerate(zip(groups, current["param_groups"], strict=True)):
        if len(saved.get("params", [])) != len(here["params"]):
            raise ValueError(
                f"checkpoint does not match the optimizer: group {g} has {len(saved.get('params', []))} parameters "
                f"saved, {len(here['params'])} here"
            )
        group = dict(saved)
        for key, value in here.items():  # JSON turned tuples (betas) into lists
            if isinstance(value, tuple) and isinstance(group.get(key), list):
                group[key] = tuple(group[key])
        param_groups.append(group)
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        parts = name.split(".")
        if parts[:2] == ["optim", "state"]:
            state.setdefault(int(parts[2]), {})[".".join(parts[3:])] = value
        elif parts[:2] == ["optim", "group"]:
            param_groups[int(parts[2])][".".join(parts[3:])] = value
    for index, entries in meta["optimizer"]["state"].items():
        state.setdefault(int(index), {}).update(entries)
    params = optimizer.param_groups
    flat = [p for group in params for p in group["params"]]
    for index, entries in state.items():
        if not 0 <= index < len(flat):
            raise ValueError(f"checkpoint does not match the optimizer: state for parameter {index} of {len(flat)}")
        for key, value in entries.items():
            param = flat[index]
            if isinstance(value, torch.Tensor) and value.dim() == param.dim() > 0 and value.shape != param.shape:
                raise ValueError(
                    f"checkpoint does not match the optimizer: state {key!r} of parameter {index} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(param.shape)}"
                )
    return {"state": state, "param_groups": param_groups}


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    gated: nn.Module,
    guide: Any,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    fingerprint: Mapping[str, Any],
) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` in place.

    Restores the model's and guide's state, the optimizer's state, the minibatch generator, torch's (CPU and,
    where the device count matches, CUDA), Python's and NumPy's RNGs, and the masks (``gated.set_masks`` when
    ``gated`` has it). Everything is checked before anything is changed; if restoring still fails, what was
    changed is rolled back.

    :returns: ``{"epoch": int, "history": list[dict], "masks": dict[str, Tensor], "extra": dict}``.
    :raises FileNotFoundError: if a checkpoint file is missing (named).
    :raises ValueError: if a file is corrupt (named), the fingerprint differs (the differing keys named), or
        the checkpoint does not fit the model, guide or optimizer (the parameter named).
    """
    directory = Path(directory)
    meta, tensors = _read(directory)
    _check_fingerprint(meta["fingerprint"], fingerprint, directory)
    model_state = _module_state(gated, tensors, "model", "model")
    guide_state = _module_state(guide, tensors, "guide", "guide")
    optim_state = _optimizer_state_dict(optimizer, meta, tensors)
    for name in ("rng.generator", "rng.torch"):
        if name not in tensors:
            raise ValueError(f"checkpoint file {directory / TENSOR_FILE} is corrupt: no {name!r}")
    masks = {k[len("mask.") :]: v for k, v in tensors.items() if k.startswith("mask.")}
    if masks and hasattr(gated, "set_masks"):
        ref = next(iter(gated.parameters()), None)
        target = ref.device if ref is not None else torch.device("cpu")
        masks = {k: v.to(target) if meta["masks"].get(k, "cpu") != "cpu" else v for k, v in masks.items()}
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(int(meta["rng"].get("cuda_devices", 0)))]

    undo = _capture(gated, guide, optimizer, generator)
    try:
        if model_state is not None:
            gated.load_state_dict(model_state)
        if guide_state is not None:
            guide.load_state_dict(guide_state)
        optimizer.load_state_dict(optim_state)
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if cuda_states:
            if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
                torch.cuda.set_rng_state_all(cuda_states)
            else:
                warnings.warn(
                    f"checkpoint in {directory} holds {len(cuda_states)} CUDA RNG states, this machine has "
                    f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} devices: CUDA RNGs not restored",
                    stacklevel=2,
                )
        version, internal, gauss_next = meta["rng"]["python"]
        random.setstate((version, tuple(internal), gauss_next))
        npst = meta["rng"]["numpy"]
        np.random.set_state(
            (npst["kind"], np.asarray(npst["keys"], dtype=np.uint32), npst["pos"], npst["has_gauss"], npst["cached"])
        )
        if hasattr(gated, "set_masks"):
            gated.set_masks(masks or None)
    except BaseException:
        undo()
        raise
    return {
        "epoch": int(meta["epoch"]),
        "history": list(meta["history"]),
        "masks": masks,
        "extra": meta.get("extra", {}),
    }


def _capture(
    gated: Any, guide: Any, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> Callable[[], None]:
    """A function putting back the current state of everything :func:`load_checkpoint` changes."""
    modules = [
        (m, {k: v.detach().clone() for k, v in m.state_dict().items()})
        for m in (gated, guide)
        if isinstance(m, nn.Module)
    ]
    optim = optimizer.state_dict()
    optim = {
        "state": {
            i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for i, s in optim["state"].items()
        },
        "param_groups": [dict(g) for g in optim["param_groups"]],
    }
    gen, rng, py, npy = generator.get_state(), torch.get_rng_state(), random.getstate(), np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    masks = dict(gated.masks) if hasattr(gated, "set_masks") else None

    def undo() -> None:
        for m, s in modules:
            m.load_state_dict(s)
        optimizer.load_state_dict(optim)
        generator.set_state(gen)
        torch.set_rng_state(rng)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(npy)
        if masks is not None:
            gated.set_masks(masks or None)

    return undo
