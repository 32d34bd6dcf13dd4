"""Residual blocks as prunable structures: discovery, re-initialisation and removal.

A *residual block* computes :math:`y = \\sigma(F(x) + S(x))` with a branch :math:`F` and a shortcut :math:`S`.
When :math:`S` is the identity and :math:`y` has the shape of :math:`x`, removing the block replaces it by the
identity, :math:`y = x`; for blocks that follow a ReLU (every block of a ResNet) this is exactly the block with its
branch at zero, :math:`\\mathrm{ReLU}(0 + x) = x`. Blocks whose shortcut changes the shape (a strided or
projection shortcut, or the zero-padding shortcut of the CIFAR ResNets' "option A") cannot become an identity and
are never removed; :func:`find_residual_blocks` says why for each of them.

Discovery needs no registry of block types: a submodule with a ``shortcut`` attribute (the CIFAR ResNets of
:mod:`pyroprune.models`) or a ``downsample`` attribute (torchvision's ``BasicBlock`` and ``Bottleneck``) is a
residual block; its shortcut is the identity when that attribute is ``None``, an ``nn.Identity`` or an empty
``nn.Sequential``. Other architectures name their blocks explicitly (``blocks=["encoder.layers.*"]``).

Removal (:func:`remove_blocks`) rebuilds the stage shallower: a block inside an ``nn.Sequential`` (or
``nn.ModuleList``) is deleted from it and the other blocks keep their names (``layer1.0``, ``layer1.2`` after
``layer1.1`` is removed), so module paths, state-dict keys and plans made for the network stay valid; a block
held as a plain attribute becomes an ``nn.Identity``. The removed paths are recorded on the network
(:data:`REMOVED_BLOCKS_ATTR`) so that :func:`~pyroprune.serialization.save_pruned` can store them.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ResidualBlock",
    "find_residual_blocks",
    "remove_blocks",
    "removed_blocks",
    "reinitialise",
    "BLOCK_INITS",
    "REMOVED_BLOCKS_ATTR",
]

#: Attribute of a network's root module listing the (original) paths of the blocks removed from it.
REMOVED_BLOCKS_ATTR = "pyroprune_removed_blocks"

_SHORTCUT_ATTRS = ("shortcut", "downsample")
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


@dataclass(frozen=True)
class ResidualBlock:
    """One residual block of a network.

    :param path: module path (``"layer1.3"``).
    :param stage: path of the module holding it (``"layer1"``; ``""`` for the root).
    :param removable: whether the block has an identity shortcut and keeps its input's shape.
    :param reason: why it is not removable (``""`` when it is).
    :param params: parameters of the block.
    :param macs: multiply-accumulates of the block for one example.
    :param in_shape: shape of one example's input to the block.
    :param out_shape: shape of one example's output.
    """

    path: str
    stage: str
    removable: bool
    reason: str
    params: int
    macs: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "stage": self.stage,
            "removable": self.removable,
            "reason": self.reason,
            "params": self.params,
            "macs": self.macs,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ResidualBlock:
        return cls(
            str(d["path"]),
            str(d["stage"]),
            bool(d["removable"]),
            str(d["reason"]),
            int(d["params"]),
            int(d["macs"]),
            tuple(int(s) for s in d["in_shape"]),
            tuple(int(s) for s in d["out_shape"]),
        )


def _shortcut(module: nn.Module) -> tuple[bool, str] | None:
    """``(is_identity, description)`` of a module's shortcut attribute, ``None`` if it has none."""
    for attr in _SHORTCUT_ATTRS:
        if not hasattr(module, attr):
            continue
        s = getattr(module, attr)
        if s is None or isinstance(s, nn.Identity) or (isinstance(s, nn.Sequential) and len(s) == 0):
            return True, ""
        if isinstance(s, nn.Module):
            parts = [type(m).__name__ for m in s.children()] or [type(s).__name__]
            kind = "projection" if any(isinstance(m, _CONV_TYPES + (nn.Linear,)) for m in s.modules()) else "padding"
            return False, f"{kind} shortcut '{attr}' ({', '.join(parts)})"
        if callable(s):  # e.g. a lambda that pads channels
            return False, f"padding shortcut '{attr}' (a function)"
    return None


def _select(names: Sequence[str], selectors: Sequence[str]) -> list[str]:
    chosen: list[str] = []
    for sel in selectors:
        if not isinstance(sel, str):
            raise TypeError(f"blocks: entries must be module paths (strings), got {sel!r}")
        hits = [n for n in names if n and fnmatch.fnmatchcase(n, sel)]
        if not hits:
            raise ValueError(f"blocks: no module of the network matches {sel!r}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


@torch.no_grad()
def find_residual_blocks(
    net: nn.Module, example_input: torch.Tensor, blocks: Sequence[str] | None = None
) -> list[ResidualBlock]:
    """The residual blocks of ``net`` in execution order, removable or not (with the reason).

    :param net: the network (not modified; run once in eval mode on one example to read shapes).
    :param example_input: an input batch on the network's device (the first example is used).
    :param blocks: module paths (``fnmatch`` patterns allowed) of the blocks, for architectures whose blocks have
        neither a ``shortcut`` nor a ``downsample`` attribute; such a block counts as having an identity shortcut
        and is removable when its output has its input's shape. Blocks inside a block are not listed.
    :raises ValueError: (one line) if a path matches nothing or no residual block is found.
    """
    from .measure import count_macs, count_params

    modules = dict(net.named_modules())
    if blocks is not None:
        if isinstance(blocks, str):
            blocks = [blocks]
        found = _select(list(modules), blocks)
    else:
        found = [n for n, m in modules.items() if n and _shortcut(m) is not None]
    # outermost only: a block nested in another block goes with it
    found = [n for n in found if not any(n.startswith(f"{o}.") for o in found if o != n)]
    if not found:
        raise ValueError(
            "no residual block found: no submodule has a 'shortcut' or 'downsample' attribute; "
            "name the blocks with 'blocks'"
        )
    seen: dict[str, tuple[torch.Tensor, torch.Size]] = {}
    order: list[str] = []

    def hook(name):
        def fn(module, args, output):
            if name not in seen and args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                seen[name] = (args[0][:1].detach(), output.shape[1:])
                order.append(name)

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in found]
    was = net.training
    net.eval()
    try:
        net(example_input[:1])
    finally:
        net.train(was)
        for h in handles:
            h.remove()
    result = []
    for name in order + [n for n in found if n not in seen]:
        module = modules[name]
        stage = name.rpartition(".")[0]
        if name not in seen:
            result.append(
                ResidualBlock(name, stage, False, "not run by the forward pass", count_params(module), 0, (), ())
            )
            continue
        x, out_shape = seen[name]
        in_shape = tuple(x.shape[1:])
        shortcut = _shortcut(module)
        reason = ""
        if shortcut is not None and not shortcut[0]:
            reason = shortcut[1]
        if tuple(out_shape) != in_shape:
            changes = f"changes the shape {list(in_shape)} -> {list(out_shape)}"
            reason = f"{changes} ({reason})" if reason else changes
        result.append(
            ResidualBlock(
                name,
                stage,
                not reason,
                reason,
                count_params(module),
                int(count_macs(module, x)),
                in_shape,
                tuple(out_shape),
            )
        )
    return result


def remove_blocks(net: nn.Module, paths: Sequence[str], inplace: bool = False) -> nn.Module:
    """``net`` with the blocks at ``paths`` removed (a copy unless ``inplace``).

    A block in an ``nn.Sequential`` / ``nn.ModuleList`` is deleted from it, the others keeping their names; any
    other block is replaced by an ``nn.Identity``. The paths are appended to the network's
    :data:`REMOVED_BLOCKS_ATTR` list.

    :raises ValueError: if a path names no module, or the root.
    """
    if not inplace:
        net = copy.deepcopy(net)
    modules = dict(net.named_modules())
    for path in paths:
        if not path:
            raise ValueError("remove_blocks: cannot remove the root module")
        if path not in modules:
            raise ValueError(f"remove_blocks: the network has no module {path!r}")
    for path in paths:
        parent_path, _, attr = path.rpartition(".")
        parent = modules[parent_path] if parent_path else net
        if isinstance(parent, nn.Sequential | nn.ModuleList):
            del parent._modules[attr]
        else:
            setattr(parent, attr, nn.Identity())
    setattr(net, REMOVED_BLOCKS_ATTR, [*removed_blocks(net), *paths])
    return net


def removed_blocks(net: nn.Module) -> list[str]:
    """Paths of the blocks :func:`remove_blocks` removed from ``net`` (in order of removal)."""
    return list(getattr(net, REMOVED_BLOCKS_ATTR, []))


# -- re-initialisation ------------------------------------------------------------------------------------------


def _fan_in(w: torch.Tensor) -> int:
    return w.shape[1] * (math.prod(w.shape[2:]) if w.dim() > 2 else 1)


@torch.no_grad()
def _reset_norm(m: nn.Module) -> None:
    if getattr(m, "weight", None) is not None:
        m.weight.fill_(1.0)
    if getattr(m, "bias", None) is not None:
        m.bias.zero_()
    if getattr(m, "running_mean", None) is not None:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    if getattr(m, "num_batches_tracked", None) is not None:
        m.num_batches_tracked.zero_()


@torch.no_grad()
def kaiming_init(block: nn.Module, generator: torch.Generator) -> None:
    """The initialisation of the ResNets (He et al. 2016; :mod:`pyroprune.models` and torchvision): convolutions
    :math:`W \\sim \\mathcal N(0, 2/\\text{fan-out})` and zero bias, ``Linear`` layers PyTorch's default,
    normalisation layers weight 1, bias 0, running mean 0, running variance 1."""
    for m in block.modules():
        if isinstance(m, _CONV_TYPES):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Linear):
            _default_linear(m, generator)
        elif isinstance(m, _NORMS):
            _reset_norm(m)
        else:
            _check_handled(m)


@torch.no_grad()
def default_init(block: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation (what ``reset_parameters()`` does, here seeded): ``Linear`` and
    convolution weights and biases :math:`\\mathcal U(-1/\\sqrt{\\text{fan-in}}, 1/\\sqrt{\\text{fan-in}})`,
    normalisation layers weight 1, bias 0, running mean 0, running variance 1."""
    for m in block.modules():
        if isinstance(m, _CONV_TYPES + (nn.Linear,)):
            _default_linear(m, generator)
        elif isinstance(m, _NORMS):
            _reset_norm(m)
        else:
            _check_handled(m)


def _default_linear(m: nn.Module, generator: torch.Generator) -> None:
    bound = 1.0 / math.sqrt(_fan_in(m.weight))  # kaiming_uniform_(a=sqrt(5)) has exactly this bound
    nn.init.uniform_(m.weight, -bound, bound, generator=generator)
    if m.bias is not None:
        nn.init.uniform_(m.bias, -bound, bound, generator=generator)


def _check_handled(m: nn.Module) -> None:
    own = [n for n, _ in m.named_parameters(recurse=False)]
    if own:
        raise ValueError(
            f"cannot re-initialise parameter {own[0]!r} of a {type(m).__name__}: pass 'init' a function "
            "(block, generator) -> None that re-initialises it"
        )


#: Built-in re-initialisations by name (``init=`` of :func:`reinitialise`).
BLOCK_INITS: dict[str, Callable[[nn.Module, torch.Generator], None]] = {
    "kaiming": kaiming_init,
    "default": default_init,
}


def reinitialise(
    block: nn.Module, generator: torch.Generator, init: str | Callable[[nn.Module, torch.Generator], None] = "kaiming"
) -> dict[str, torch.Tensor]:
    """A fresh initialisation of ``block``'s parameters and buffers (running statistics included), as a state
    dict; ``block`` itself is not modified.

    :param generator: the random generator, on the block's device.
    :param init: a name in :data:`BLOCK_INITS` or a function ``(block, generator) -> None`` re-initialising a
        block in place.
    """
    fn = resolve_init(init)
    fresh = copy.deepcopy(block)
    fn(fresh, generator)
    return {k: v.detach() for k, v in fresh.state_dict().items()}


def resolve_init(init: str | Callable) -> Callable[[nn.Module, torch.Generator], None]:
    """The re-initialisation function ``init`` names (or ``init`` itself if callable)."""
    if callable(init):
        return init
    if init not in BLOCK_INITS:
        raise ValueError(f"unknown 'init' {init!r}; choose one of {', '.join(BLOCK_INITS)} or pass a function")
    return BLOCK_INITS[init]
