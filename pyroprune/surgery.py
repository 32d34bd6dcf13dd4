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

Input-feature sites (``"<path>:in"``, kind ``"feature"``) fold into the columns of their ``Linear``,
:math:`W_{:,j} \\leftarrow z_j W_{:,j}`. Their pruned features cannot go through a Torch-Pruning group rooted at
the ``Linear``'s inputs (that would prune the producer's whole channel), so removal runs in three steps:

1. *unused channels*: an upstream channel all of whose features are pruned (e.g. every one of the 16
   positions that conv2's channel :math:`c` contributes to LeNet-5's ``fc1``) and that feeds nothing else is
   removed with its producer's other pruned channels -- exact, since its only consumer columns are gated to 0;
2. the output sites' groups are pruned as usual (Torch-Pruning also drops the ``Linear``'s columns that belong
   to removed channels). The ``Linear``'s weight carries an integer tag per entry meanwhile, so the original
   index of every surviving column is read off exactly afterwards;
3. the surviving columns whose feature the plan prunes are dropped and the ``Linear`` becomes a
   :class:`~pyroprune.layers.FeatureSelectLinear`, which selects its kept inputs with an index buffer.

Block sites (kind ``"block"``, SR-init) remove whole residual blocks with an identity shortcut, last, by
:func:`~pyroprune.blocks.remove_blocks`: the stage is rebuilt shallower (the block is deleted from its
``nn.Sequential``, the other blocks keep their names) or the block becomes an ``nn.Identity``. This is exact
for a block whose branch is zero, :math:`\\mathrm{ReLU}(0 + x) = x` for the non-negative inputs of a ResNet block.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from .blocks import remove_blocks
from .gates import _NORM_TYPES, _PRODUCER_TYPES, GatedNet, dependency_graph
from .layers import FeatureSelectLinear
from .plan import PruningPlan, SitePlan

__all__ = ["remove", "fold_gates"]


def _prune_fn(module: nn.Module):
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_conv_out_channels


@torch.no_grad()
def fold_gates(net: nn.Module, plan: PruningPlan) -> None:
    """Multiply each gated module's output channels by the plan's fold values (in place); an input-feature
    site multiplies its ``Linear``'s weight columns, :math:`W_{:,j} \\leftarrow z_j W_{:,j}`."""
    modules = dict(net.named_modules())
    for sp in plan.sites:
        if sp.fold is None:
            continue
        if sp.site.is_feature:
            linear = _feature_linear(modules, sp)
            w = linear.weight
            w.mul_(torch.as_tensor(sp.fold, dtype=w.dtype, device=w.device))
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


def _feature_linear(modules: dict[str, nn.Module], sp: SitePlan) -> nn.Linear:
    """The ``Linear`` of input-feature site ``sp``, checked against the plan."""
    path = sp.site.gated_modules[0]
    m = modules.get(path)
    if m is None:
        raise ValueError(f"plan site {sp.site.name!r}: module {path!r} not found in the network")
    if not isinstance(m, nn.Linear):
        raise ValueError(f"plan site {sp.site.name!r}: module {path!r} is a {type(m).__name__}, not a Linear")
    if len(sp.keep) != m.in_features or (sp.fold is not None and len(sp.fold) != m.in_features):
        raise ValueError(
            f"plan site {sp.site.name!r} has {len(sp.keep)} gates but Linear {path!r} has {m.in_features} input "
            "features: the plan does not belong to this network"
        )
    return m


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
    :returns: a plain ``nn.Module`` (no Pyro inside), in the same train/eval mode as ``net``. A ``Linear`` with
        pruned input features (an input-feature site) whose features did not all go with their upstream channels
        is replaced by a :class:`~pyroprune.layers.FeatureSelectLinear`.
    :raises ValueError: if the plan does not belong to ``net`` or would empty a site.
    """
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"plan must be a PruningPlan, got {type(plan).__name__}")
    net = net.plain_net() if isinstance(net, GatedNet) else copy.deepcopy(net)
    if fold:
        fold_gates(net, plan)
    modules = dict(net.named_modules())
    blocks = [sp for sp in plan.sites if sp.site.is_block]
    plan = PruningPlan(plan.method, plan.params, [sp for sp in plan.sites if not sp.site.is_block], plan.version)
    for sp in blocks:
        for path in sp.site.producers:
            if path not in modules:
                raise ValueError(f"plan site {sp.site.name!r}: block {path!r} not found in the network")
    for sp in plan.sites:
        if all(sp.keep):
            continue
        if not any(sp.keep):
            raise ValueError(f"plan prunes every structure of site {sp.site.name!r}; the network would be cut")
        if sp.site.is_feature:
            _feature_linear(modules, sp)
        elif modules.get(sp.site.producers[0]) is None:
            raise ValueError(f"plan site {sp.site.name!r}: module {sp.site.producers[0]!r} not found")
    pruned_blocks = [path for sp in blocks for path, k in zip(sp.site.producers, sp.keep, strict=True) if not k]
    if all(all(sp.keep) for sp in plan.sites):  # nothing but blocks to remove
        return remove_blocks(net, pruned_blocks, inplace=True) if pruned_blocks else net
    dg = dependency_graph(net, example_input)
    features = [sp for sp in plan.sites if sp.site.is_feature and not all(sp.keep)]
    # 1. upstream channels none of whose features is kept: removed with the producer's pruned channels
    extra: dict[nn.Module, set[int]] = {}
    for sp in features:
        for producer, channels in _unused_channels(dg, modules[sp.site.gated_modules[0]], sp.keep):
            extra.setdefault(producer, set()).update(channels)
    # 2. the output sites' groups; feature Linears carry integer tags to trace their surviving columns
    tags = {sp.site.name: _Tagged(modules[sp.site.gated_modules[0]]) for sp in features}
    cuts: list[tuple[str, nn.Module, list[int]]] = []
    for sp in plan.sites:
        if sp.site.is_feature:
            continue
        root = modules.get(sp.site.producers[0])
        if root is None:  # nothing to prune there (checked above)
            continue
        pruned = {i for i, k in enumerate(sp.keep) if not k}
        more = extra.pop(root, set())
        if len(pruned | more) < sp.site.size:  # never empty a layer for unused channels
            pruned |= more
        if pruned:
            cuts.append((f"site {sp.site.name!r}", root, sorted(pruned)))
    for root, channels in extra.items():  # producers without an output site in the plan
        if len(channels) < _channels(root):
            cuts.append((f"unused channels of {_path(modules, root)!r}", root, sorted(channels)))
    for what, root, pruned in cuts:
        group = dg.get_pruning_group(root, _prune_fn(root), idxs=pruned)
        if not dg.check_pruning_group(group):
            raise ValueError(f"Torch-Pruning refuses to prune {what} (would empty a layer)")
        with torch.no_grad():
            group.prune()
    # 3. the remaining pruned features: FeatureSelectLinear
    for sp in features:
        linear = modules[sp.site.gated_modules[0]]
        columns = tags[sp.site.name].restore()
        keep = [p for p, c in enumerate(columns) if sp.keep[c]]
        if not keep:
            raise ValueError(
                f"plan site {sp.site.name!r}: no kept input feature of {sp.site.gated_modules[0]!r} survives the "
                "removal of its producer's channels; the network would be cut"
            )
        if len(keep) < len(columns):
            net = _replace(net, sp.site.gated_modules[0], FeatureSelectLinear.from_linear(linear, keep))
    # 4. whole residual blocks (SR-init), last: width cuts above may run through them
    return remove_blocks(net, pruned_blocks, inplace=True) if pruned_blocks else net


class _Tagged:
    """Swaps a ``Linear``'s weight for exact integer tags ``i * in_features + j`` (float64) while Torch-Pruning
    cuts rows and columns, then puts the matching entries of the real weight back.

    Torch-Pruning only ever selects rows and columns of a weight, never computes with it, so the tags that
    survive name the original row and column of every surviving entry.
    """

    def __init__(self, linear: nn.Linear) -> None:
        self.linear, self.weight = linear, linear.weight
        out, self.width = self.weight.shape
        if out * self.width >= 2**53:
            raise ValueError(f"Linear with {out}x{self.width} weights is too large to tag exactly")
        tag = torch.arange(out * self.width, dtype=torch.float64, device=self.weight.device).reshape(out, -1)
        linear.weight = nn.Parameter(tag, requires_grad=False)

    @torch.no_grad()
    def restore(self) -> list[int]:
        """Put the real weight back (the surviving entries) and return the original indices of the columns."""
        ids = self.linear.weight.detach().to(torch.long)
        rows = ids[:, 0] // self.width
        cols = ids[0, :] % self.width
        if not torch.equal(ids, rows[:, None] * self.width + cols[None, :]):
            raise RuntimeError("the pruned weight is not a selection of rows and columns of the original")
        w = self.weight.detach().index_select(0, rows).index_select(1, cols)
        self.linear.weight = nn.Parameter(w.clone(), requires_grad=self.weight.requires_grad)
        return cols.tolist()


def _unused_channels(dg: tp.DependencyGraph, linear: nn.Linear, keep: list[bool]) -> list[tuple[nn.Module, list[int]]]:
    """Upstream channels of ``linear``'s input none of whose features ``keep`` keeps, and that feed nothing else.

    Torch-Pruning widens a cut of input features to whole channels of the producer (a flattened conv channel
    is ``H*W`` features). A channel is returned when that widening stays inside the pruned features and the
    group holds no other consumer (another layer's inputs, a coupled producer): removing it then changes
    nothing but ``linear``'s zero-gated columns.
    """
    pruned = {i for i, k in enumerate(keep) if not k}
    if not any(
        _is_producer_cut(dg, dep)
        for dep, _ in dg.get_pruning_group(linear, tp.prune_linear_in_channels, sorted(pruned))
    ):
        return []  # nothing upstream to remove (e.g. the network's input)
    found: list[tuple[nn.Module, list[int]]] = []
    remaining = set(pruned)
    while remaining:
        p = min(remaining)
        group = dg.get_pruning_group(linear, tp.prune_linear_in_channels, [p])
        block: set[int] = set()
        producers: list[tuple[nn.Module, list[int]]] = []
        clean = True
        for dep, idxs in group:
            module, plain = dep.target.module, [int(getattr(i, "idx", i)) for i in idxs]
            if module is linear and dg.is_in_channel_pruning_fn(dep.handler):
                block.update(plain)
            elif _is_producer_cut(dg, dep):
                producers.append((module, plain))
            elif _has_state(module) and not (
                isinstance(module, _NORM_TYPES) and dg.is_out_channel_pruning_fn(dep.handler)
            ):
                clean = False  # another consumer, or a layer we cannot reason about
        remaining -= block | {p}
        if clean and block <= pruned and len(producers) == 1 and len(set(producers[0][1])) == 1:
            found.append(producers[0])
    return found


def _is_producer_cut(dg: tp.DependencyGraph, dep) -> bool:
    return isinstance(dep.target.module, _PRODUCER_TYPES) and dg.is_out_channel_pruning_fn(dep.handler)


def _has_state(module: object) -> bool:
    return isinstance(module, nn.Module) and any(True for _ in module.state_dict())


def _path(modules: dict[str, nn.Module], module: nn.Module) -> str:
    return next((n for n, m in modules.items() if m is module), type(module).__name__)


def _replace(net: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """``net`` with the submodule at ``path`` replaced by ``new`` (``new`` itself for the root)."""
    if not path:
        return new
    parent_path, _, attr = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    setattr(parent, attr, new)
    return net
