"""Physical removal of pruned structures.

Given a :class:`~pyroprune.plan.PruningPlan`, the structures it prunes are cut out of a copy of the network
with Torch-Pruning's dependency graph -- the producer's rows, the matching input columns of every consumer,
``BatchNorm`` entries and every channel coupled through residual additions -- and the gate value of each kept
structure (posterior :math:`E[\\theta]`) is folded into the weights, so that the result is a smaller plain
``nn.Module`` computing exactly what the gated network computes with its gates fixed at :math:`E[\\theta]`
(pruned gates at 0):

.. math::

    f_{\\text{pruned}}(x) = f_W\\big(x;\\, \\theta = E_q[\\theta] \\odot m\\big), \\qquad m = \\text{keep mask}.

Folding a gate :math:`z_c` multiplies output channel :math:`c` of the gated module: rows of a ``Linear``/``Conv``
weight and bias, or the affine weight and bias of the ``BatchNorm`` after a convolution. Exactness of removal
needs the activation after a pruned structure to map 0 to 0 (ReLU, tanh, GELU...), which holds for every
architecture in :mod:`pyroprune.models`.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from .gates import _NORM_TYPES, GatedNet, dependency_graph
from .plan import PruningPlan

__all__ = ["remove", "fold_gates"]


def _prune_fn(module: nn.Module):
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_conv_out_channels


@torch.no_grad()
def fold_gates(net: nn.Module, plan: PruningPlan) -> None:
    """Multiply each gated module's output channels by the plan's fold values (in place)."""
    modules = dict(net.named_modules())
    for sp in plan.sites:
        if sp.fold is None:
            continue
        for path in sp.site.gated_modules:
            if path not in modules:
                raise ValueError(f"plan site {sp.site.name!r}: module {path!r} not found in the network")
            m = modules[path]
            ref = next(m.parameters(), None)
            if ref is None and isinstance(m, _NORM_TYPES):  # non-affine BatchNorm: give it an affine part
                m.affine = True
                ref = m.running_mean
                m.weight = nn.Parameter(torch.ones_like(ref))
                m.bias = nn.Parameter(torch.zeros_like(ref))
            z = torch.as_tensor(sp.fold, dtype=ref.dtype, device=ref.device)
            if z.shape[0] != _channels(m):
                raise ValueError(
                    f"plan site {sp.site.name!r} has {z.shape[0]} gates but module {path!r} has {_channels(m)} "
                    "output channels: the plan does not belong to this network"
                )
            w = m.weight
            w.mul_(z.reshape(-1, *([1] * (w.dim() - 1))))
            if m.bias is not None:
                m.bias.mul_(z)


def _channels(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, _NORM_TYPES):
        return m.num_features
    return m.out_channels


def remove(net: nn.Module, plan: PruningPlan, example_input: torch.Tensor, fold: bool = True) -> nn.Module:
    """A smaller copy of ``net`` with the plan's pruned structures removed and the kept gates folded in.

    :param net: the original network or the :class:`~pyroprune.gates.GatedNet` the plan was made for (the
        input is never modified).
    :param plan: the decision.
    :param example_input: an input batch (for tracing the dependency graph), on the network's device.
    :param fold: fold the plan's :math:`E[\\theta]` into the kept structures (``False`` keeps the weights).
    :returns: a plain ``nn.Module`` (no Pyro inside), in the same train/eval mode as ``net``.
    """
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"plan must be a PruningPlan, got {type(plan).__name__}")
    net = net.plain_net() if isinstance(net, GatedNet) else copy.deepcopy(net)
    if fold:
        fold_gates(net, plan)
    modules = dict(net.named_modules())
    dg = dependency_graph(net, example_input)
    for sp in plan.sites:
        pruned = [i for i, k in enumerate(sp.keep) if not k]
        if not pruned:
            continue
        if len(pruned) == sp.site.size:
            raise ValueError(f"plan prunes every structure of site {sp.site.name!r}; the network would be cut")
        root = modules.get(sp.site.producers[0])
        if root is None:
            raise ValueError(f"plan site {sp.site.name!r}: module {sp.site.producers[0]!r} not found")
        group = dg.get_pruning_group(root, _prune_fn(root), idxs=pruned)
        if not dg.check_pruning_group(group):
            raise ValueError(f"Torch-Pruning refuses to prune site {sp.site.name!r} (would empty a layer)")
        with torch.no_grad():
            group.prune()
    return net
