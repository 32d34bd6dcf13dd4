"""Finding prunable structures and gating them: the :class:`GatedNet` Pyro model.

A *gate site* is one vector of multiplicative noise :math:`\\theta \\in (0, 1]^C` that scales ``C`` coupled
structures: the hidden neurons of a ``Linear`` layer or the output channels of a ``Conv`` layer (multiplied
after the ``BatchNorm`` that follows it, if any). Structures whose channels are coupled -- e.g. every layer
whose output is added into the same residual stream -- share one gate site, so that a decision removes them
together. Coupling is read off Torch-Pruning's dependency graph, the same graph :mod:`pyroprune.surgery` uses
for physical removal, so what is gated is exactly what can be removed.

Opt-in *input-feature* sites (``input_gates``, as in SBP) gate the ``in_features`` inputs of chosen ``Linear``
layers: :math:`y = W (x \\odot \\theta) + b`. Such a site is called ``"<module path>:in"`` (e.g.
``"classifier.0:in"``); ``:`` never occurs in the paths ``nn.Module`` gives its submodules in practice, and a
collision is refused.

The gated network is the generative model of SBP (Neklyudov et al., 2017) and BMRS (Wright, Igel & Selvan,
2024):

.. math::

    \\theta_s \\sim p(\\theta_s) \\quad (\\text{each site } s), \\qquad
    y_n \\mid x_n, \\theta \\sim \\mathrm{Categorical}(\\mathrm{softmax}\\, f_W(x_n; \\theta)),

with the network weights :math:`W` point-estimated (ordinary ``torch`` parameters). The labels are observed
inside ``pyro.plate("data", N, subsample=...)`` so that a minibatch of size :math:`B` is scaled by
:math:`N/B` and the ELBO is :math:`N\\cdot\\overline{\\mathrm{CE}} + \\sum_s \\mathrm{KL}(q_s \\| p_s)`.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch_pruning as tp
from torch import nn

from .distributions import LogUniform

__all__ = [
    "GateSite",
    "GatedNet",
    "find_gate_sites",
    "gate",
    "feature_site_name",
    "input_gate_layers",
    "FEATURE_SUFFIX",
]

_PRODUCER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: A selector for ``include`` / ``exclude``: a module path (``fnmatch`` patterns allowed, e.g. ``"layer1.*"``)
#: or a module type (e.g. ``nn.Conv2d``).
Selector = str | type

#: Suffix of an input-feature site's name: the site gating the inputs of ``Linear`` ``"fc1"`` is ``"fc1:in"``.
FEATURE_SUFFIX = ":in"

_DIM_SUFFIX = {"neuron": "unit", "channel": "channel", "feature": "feature", "block": "block"}


def feature_site_name(path: str) -> str:
    """Name of the input-feature gate site of the ``Linear`` at module path ``path`` (``"fc1"`` -> ``"fc1:in"``).

    ``.`` cannot be used (it separates module paths); ``:`` is a valid Pyro site name, ``nn.ParameterDict`` key
    (after :class:`~pyroprune.guides.TruncatedLogNormalGuide` replaces ``.`` by ``__``), safetensors key and
    netCDF variable name.
    """
    return f"{path}{FEATURE_SUFFIX}"


@dataclass(frozen=True)
class GateSite:
    """One gate site: ``size`` coupled structures sharing one vector of noise.

    :param name: the Pyro sample site name, the module path of the first producer (e.g. ``"features.0"``); for
        an input-feature site the ``Linear``'s path followed by ``":in"`` (:func:`feature_site_name`).
    :param size: the number of structures (neurons, channels or input features).
    :param kind: ``"neuron"`` (``Linear`` outputs), ``"channel"`` (``Conv`` outputs), ``"feature"`` (the
        ``in_features`` inputs of one ``Linear``) or ``"block"`` (the removable residual blocks of one stage, in
        SR-init's plans; :mod:`pyroprune.blocks`).
    :param producers: module paths of the ``Linear``/``Conv`` layers whose outputs are the structures; for a
        ``"feature"`` site the gated ``Linear`` itself (whose inputs are the structures).
    :param gated_modules: module paths whose outputs are multiplied by the gate (a producer, or the
        ``BatchNorm`` right after it); for a ``"feature"`` site the ``Linear`` whose *input* is multiplied.
    """

    name: str
    size: int
    kind: str
    producers: tuple[str, ...]
    gated_modules: tuple[str, ...]

    @property
    def dim_name(self) -> str:
        """Name of the structure dimension, e.g. ``fc1_unit``, ``conv1_channel`` or ``fc1_in_feature`` (for site
        ``fc1:in``; ArviZ-friendly)."""
        stem = self.name.replace(".", "_").replace(":", "_")
        return f"{stem}_{_DIM_SUFFIX.get(self.kind, 'channel')}"

    @property
    def is_block(self) -> bool:
        """Whether the site's structures are whole residual blocks (kind ``"block"``, named by module path in
        ``producers``)."""
        return self.kind == "block"

    @property
    def is_feature(self) -> bool:
        """Whether the site gates the input features of a ``Linear`` (kind ``"feature"``)."""
        return self.kind == "feature"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": self.size,
            "kind": self.kind,
            "producers": list(self.producers),
            "gated_modules": list(self.gated_modules),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> GateSite:
        return cls(d["name"], int(d["size"]), d["kind"], tuple(d["producers"]), tuple(d["gated_modules"]))


def _matches(name: str, module: nn.Module, selectors: Sequence[Selector]) -> bool:
    for sel in selectors:
        if isinstance(sel, type):
            if isinstance(module, sel):
                return True
        elif isinstance(sel, str):
            if fnmatch.fnmatchcase(name, sel):
                return True
        else:
            raise TypeError(f"include/exclude entries must be module paths or types, got {sel!r}")
    return False


def _check_selectors(net: nn.Module, selectors: Sequence[Selector], which: str) -> None:
    names = dict(net.named_modules())
    for sel in selectors:
        if isinstance(sel, str) and not any(fnmatch.fnmatchcase(n, sel) for n in names):
            raise ValueError(f"{which}: no module of the network matches {sel!r}")


def input_gate_layers(net: nn.Module, selectors: Sequence[Selector]) -> list[str]:
    """Module paths of the ``Linear`` layers whose input features ``selectors`` ask to gate.

    A selector is a module path (``fnmatch`` patterns allowed) or a module type, as for ``include`` /
    ``exclude``. A pattern with wildcards picks the ``Linear`` layers among the modules it matches; a plain path
    or a type must name ``Linear`` layers only. A single selector may be given without a list.

    :returns: the paths, in the order of ``net.named_modules()``, each once.
    :raises ValueError: (one line, naming the selector) if a selector matches no ``Linear`` layer, or a plain
        path or type selects a module that is not a ``Linear``.
    :raises TypeError: for a selector that is neither a string nor a type.
    """
    if isinstance(selectors, str | type):  # one selector
        selectors = [selectors]
    modules = dict(net.named_modules())
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    chosen: list[str] = []
    for sel in selectors:
        if isinstance(sel, type):
            if not issubclass(sel, nn.Linear):
                raise ValueError(
                    f"input_gates: {sel.__name__} is not a Linear type (input features are gated on Linear)"
                )
            hits = [n for n in linears if isinstance(modules[n], sel)]
        elif isinstance(sel, str):
            matched = [n for n in modules if fnmatch.fnmatchcase(n, sel)]
            hits = [n for n in matched if isinstance(modules[n], nn.Linear)]
            others = [n for n in matched if not isinstance(modules[n], nn.Linear)]
            if others and (not hits or not any(c in sel for c in "*?[")):
                where = others[0] or "<root>"
                raise ValueError(
                    f"input_gates: {sel!r} matches {where!r} ({type(modules[others[0]]).__name__}), not a Linear layer"
                )
        else:
            raise TypeError(f"input_gates entries must be module paths or types, got {sel!r}")
        if not hits:
            shown = ", ".join(linears[:8]) + (", ..." if len(linears) > 8 else "")
            raise ValueError(f"input_gates: no Linear layer of the network matches {sel!r} (Linear layers: {shown})")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in linears if n in chosen]


def _channel_dim(module: nn.Module) -> int:
    # Linear layers put features last ([B, C] or [B, T, C]); conv and batch-norm put channels at dim 1.
    return -1 if isinstance(module, nn.Linear) else 1


def find_gate_sites(
    net: nn.Module,
    example_input: torch.Tensor,
    include: Sequence[Selector] | None = None,
    exclude: Sequence[Selector] | None = None,
    input_gates: Sequence[Selector] | None = None,
) -> list[GateSite]:
    """Find the prunable structures of ``net``, grouped by coupling.

    Every output neuron of a ``Linear`` layer and every output channel of a ``Conv`` layer is a candidate,
    except those of the layers that produce the network's output (the final classifier): a group of channels
    that no downstream ``Linear``/``Conv`` consumes is never gated.

    With ``input_gates``, every ``Linear`` layer they select also gets an input-feature site (kind
    ``"feature"``, name ``"<path>:in"``, size ``in_features``), placed in execution order right before that
    layer's own output site, so that kept counts read like SBP's (``245-160-55`` for LeNet-500-300). The
    ``include``/``exclude`` selectors do not apply to these sites.

    :param net: any ``nn.Module``.
    :param example_input: an input batch, used to trace the network (Torch-Pruning's dependency graph).
    :param include: if given, keep only groups with a producer matching one of these module paths (``fnmatch``
        patterns) or types.
    :param exclude: drop groups with a producer matching one of these.
    :param input_gates: ``Linear`` layers whose input features to gate: module paths (``fnmatch`` patterns
        allowed) or types; see :func:`input_gate_layers`.
    :returns: the gate sites in execution order.
    :raises ValueError: if a selector matches no module, an ``input_gates`` selector no ``Linear`` layer, or a
        feature site's name is the path of a module.
    """
    include = list(include or [])
    exclude = list(exclude or [])
    _check_selectors(net, include, "include")
    _check_selectors(net, exclude, "exclude")
    feature_layers = input_gate_layers(net, input_gates or [])
    names = {m: n for n, m in net.named_modules()}
    order = _execution_order(net, example_input)
    dg = dependency_graph(net, example_input)

    sites: list[GateSite] = []
    seen: set[nn.Module] = set()
    for group in dg.get_all_groups(root_module_types=_PRODUCER_TYPES):
        producers, consumed = [], False
        for dep, _ in group:
            module = dep.target.module
            if not isinstance(module, _PRODUCER_TYPES):
                continue
            if dep.handler in (tp.prune_linear_out_channels, tp.prune_conv_out_channels):
                if module not in producers:
                    producers.append(module)
            elif dep.handler in (tp.prune_linear_in_channels, tp.prune_conv_in_channels):
                consumed = True
        if not producers or any(p in seen for p in producers):
            continue
        seen.update(producers)
        if not consumed:  # feeds the network output: never prune the classifier's outputs
            continue
        if include and not any(_matches(names[p], p, include) for p in producers):
            continue
        if exclude and any(_matches(names[p], p, exclude) for p in producers):
            continue
        producers.sort(key=lambda m: order.get(m, len(order)))
        producer_names = [names[p] for p in producers]
        gated = [names[_norm_after(dg, p) or p] for p in producers]
        size = _out_features(producers[0])
        kind = "neuron" if isinstance(producers[0], nn.Linear) else "channel"
        sites.append(GateSite(producer_names[0], size, kind, tuple(producer_names), tuple(gated)))
    modules = dict(net.named_modules())
    for path in feature_layers:
        name = feature_site_name(path)
        if name in modules:
            raise ValueError(f"input_gates: the feature site name {name!r} is the path of a module; rename that module")
        sites.append(GateSite(name, modules[path].in_features, "feature", (path,), (path,)))
    # A feature site comes right before the output site of the same Linear (its inputs come first).
    sites.sort(key=lambda s: (order.get(modules[s.producers[0]], len(order)), 0 if s.is_feature else 1))
    return sites


def _out_features(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _norm_after(dg: tp.DependencyGraph, producer: nn.Module) -> nn.Module | None:
    """The BatchNorm that directly and exclusively consumes ``producer``'s output, if any."""
    node = dg.module2node[producer]
    if len(node.outputs) == 1 and isinstance(node.outputs[0].module, _NORM_TYPES):
        return node.outputs[0].module
    return None


def dependency_graph(net: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``net``, traced in eval mode.

    Tracing runs a forward pass; in train mode it would update BatchNorm running statistics.
    """
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():  # the tracer follows autograd
            return tp.DependencyGraph().build_dependency(net, example_inputs=example_input)
    finally:
        net.train(was_training)


def _execution_order(net: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, int]:
    order: dict[nn.Module, int] = {}

    def record(mod: nn.Module, _inputs, _output) -> None:  # must return None: a value would replace the output
        order.setdefault(mod, len(order))

    handles = [m.register_forward_hook(record) for m in net.modules()]
    try:
        with torch.no_grad():
            was_training = net.training
            net.eval()
            net(example_input)
            net.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return order


class _GateValues:
    """The gate values of the forward pass in progress (a small holder the hooks read; no global state)."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] | None = None
        self.masks: dict[str, torch.Tensor] = {}  # site -> bool keep-mask


class _GateHook:
    """Forward hook multiplying a module's output by its site's gate, vectorised over leading sample dims."""

    def __init__(self, holder: _GateValues, site: str, dim: int) -> None:
        self.holder, self.site, self.dim = holder, site, dim

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return self.apply(output)

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` multiplied along ``self.dim`` by the site's gate (``t`` unchanged when no values are set)."""
        values = self.holder.values
        if values is None or self.site not in values:
            return t
        z = values[self.site]
        mask = self.holder.masks.get(self.site)
        if mask is not None:
            z = torch.where(mask.to(z.device), z, torch.zeros((), dtype=z.dtype, device=z.device))
        num_samples = z.numel() // z.shape[-1]
        z = z.reshape(num_samples, z.shape[-1])
        dim = self.dim % t.dim()
        # Fold the sample dimension out of the batch: [S*B, ..., C, ...] -> [S, B, ..., C, ...].
        shape = [1] * (t.dim() + 1)
        shape[0], shape[dim + 1] = num_samples, z.shape[-1]
        out = t.reshape(num_samples, t.shape[0] // num_samples, *t.shape[1:])
        return (out * z.reshape(shape)).reshape(t.shape)


class _GateInputHook(_GateHook):
    """Forward *pre*-hook multiplying a ``Linear``'s input features (last dim) by an input-feature site's gate."""

    def __init__(self, holder: _GateValues, site: str) -> None:
        super().__init__(holder, site, -1)

    def __call__(self, module: nn.Module, inputs: tuple) -> tuple | None:  # type: ignore[override]
        if self.holder.values is None or self.site not in self.holder.values:
            return None
        return (self.apply(inputs[0]), *inputs[1:])


PriorSpec = dist.Distribution | Callable[[GateSite], dist.Distribution] | Mapping[str, dist.Distribution]


class GatedNet(nn.Module):
    """A network with multiplicative gates on its prunable structures, as a Pyro model.

    ``GatedNet(net, x)(x_batch, y_batch)`` samples every gate :math:`\\theta_s \\sim p(\\theta_s)` (site name
    = module path), multiplies the structures' outputs by it and observes the labels:

    .. math::

        \\log p(y, \\theta) = \\sum_s \\log p(\\theta_s)
            + \\frac{N}{B} \\sum_{n \\in \\text{batch}} \\log \\mathrm{Cat}(y_n \\mid f_W(x_n; \\theta)).

    Gate values may carry leading sample dimensions (e.g. ``[S, 1, C]`` under a vectorised particle plate):
    the input batch is then repeated ``S`` times inside the network (the sample dimension folded into the
    batch), so ``S`` draws cost one batched forward pass.

    :param net: the network; deep-copied (the user's module is never modified), its weights stay ordinary
        parameters (point estimates).
    :param example_input: an input batch used to trace the network.
    :param prior: the prior over each site's gates, a distribution over :math:`\\theta` with scalar batch shape
        (expanded to the site size), a mapping from site name to distribution, or a callable
        ``site -> distribution``. Default :class:`~pyroprune.distributions.LogUniform` ``(-20, 0)``.
    :param include: see :func:`find_gate_sites`.
    :param exclude: see :func:`find_gate_sites`.
    :param num_data: size :math:`N` of the training set, for the likelihood scaling; may also be passed per
        call.
    :param input_gates: ``Linear`` layers whose input features also get a gate site (SBP), see
        :func:`find_gate_sites`. Such a gate :math:`z \\in (0, 1]^{d}` multiplies the layer's input,
        :math:`W (x \\odot z) + b`, i.e. the weight's columns.
    :raises ValueError: if nothing is prunable.
    """

    def __init__(
        self,
        net: nn.Module,
        example_input: torch.Tensor,
        prior: PriorSpec | None = None,
        include: Sequence[Selector] | None = None,
        exclude: Sequence[Selector] | None = None,
        num_data: int | None = None,
        input_gates: Sequence[Selector] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if not isinstance(example_input, torch.Tensor):
            raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
        net = copy.deepcopy(net)
        self.sites: tuple[GateSite, ...] = tuple(
            find_gate_sites(net, example_input, include, exclude, input_gates=input_gates)
        )
        if not self.sites:
            raise ValueError(
                f"nothing to prune in {type(net).__name__}: no Linear/Conv layer has outputs that feed another "
                "prunable layer (the final classifier's outputs are never pruned); check include/exclude"
            )
        self.net = net
        self.num_data = num_data
        self._holder = _GateValues()
        modules = dict(net.named_modules())
        self._site_modules = {s.name: [(p, modules[p]) for p in s.gated_modules] for s in self.sites}
        self._feature_sites = {s.name: s.is_feature for s in self.sites}
        self._hooks = []
        for site in self.sites:
            for path in site.gated_modules:
                if site.is_feature:
                    pre = _GateInputHook(self._holder, site.name)
                    self._hooks.append(modules[path].register_forward_pre_hook(pre))
                else:
                    hook = _GateHook(self._holder, site.name, _channel_dim(modules[path]))
                    self._hooks.append(modules[path].register_forward_hook(hook))
        self._prior_spec = prior if prior is not None else LogUniform(-20.0, 0.0)
        self._validate_prior()

    # -- the model -------------------------------------------------------------------------------------------

    def site(self, name: str) -> GateSite:
        """The gate site called ``name``."""
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no gate site {name!r}; sites are {[s.name for s in self.sites]}")

    def prior(self, site: GateSite) -> dist.Distribution:
        """The prior of ``site``: a distribution over :math:`\\theta` with batch shape ``[site.size]``."""
        spec = self._prior_spec
        if isinstance(spec, Mapping):
            if site.name not in spec:
                raise KeyError(f"prior mapping has no entry for gate site {site.name!r}")
            d = spec[site.name]
        elif isinstance(spec, dist.Distribution):
            d = spec
        else:
            d = spec(site)
        ref = next(iter(self.net.parameters()), None)
        if ref is not None:
            d = _move_distribution(d, ref)
        return d.expand([site.size]) if d.batch_shape != (site.size,) else d

    def set_prior(self, prior: PriorSpec) -> None:
        """Replace the prior over the gates (same forms as the constructor's ``prior``); validated at once."""
        previous = self._prior_spec
        self._prior_spec = prior
        try:
            self._validate_prior()
        except (ValueError, KeyError, TypeError):
            self._prior_spec = previous
            raise

    def _validate_prior(self) -> None:
        for site in self.sites:
            d = self.prior(site)
            if d.event_shape != ():
                raise ValueError(f"prior for gate site {site.name!r} must be univariate (event_shape ())")

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        gates = {s.name: pyro.sample(s.name, self.prior(s).to_event(1)) for s in self.sites}
        logits = self.forward_with_gates(x, gates)
        n = num_data or self.num_data or x.shape[0]
        with pyro.plate("data", size=n, subsample=torch.arange(x.shape[0], device=x.device)):
            # No argument validation: a NaN in the logits must surface as a NaN loss (which fit_svi handles),
            # and validating the logits every step costs a device sync.
            pyro.sample("obs", dist.Categorical(logits=logits, validate_args=False), obs=y)
        return logits

    def forward_with_gates(self, x: torch.Tensor, gates: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run the network with given gate values (no Pyro involved).

        Gate values of shape ``[C]`` apply to every example; ``[S, C]`` or ``[S, 1, C]`` evaluate ``S`` gate
        draws at once and return logits of shape ``[S, B, K]``.
        """
        lead = None
        for name, z in gates.items():
            shape = tuple(z.shape[:-1])
            if lead is None:
                lead = shape
            elif shape != lead:
                raise ValueError(f"gate {name!r} has leading shape {shape}, others {lead}")
        lead = lead or ()
        num_samples = 1
        for d in lead:
            num_samples *= d
        if not lead:
            overrides = self._scaled_parameters(gates)
            if overrides is not None:
                return torch.func.functional_call(self.net, overrides, (x,), strict=False, tie_weights=True)
        else:
            x = x.unsqueeze(0).expand(num_samples, *x.shape).reshape(num_samples * x.shape[0], *x.shape[1:])
        with self.gate_values(gates):
            out = self.net(x)
        if not lead:
            return out
        batch_lead = lead[:-1] if lead[-1] == 1 else lead
        return out.reshape(*batch_lead, out.shape[0] // num_samples, *out.shape[1:])

    def _scaled_parameters(self, gates: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """One gate vector per site, applied in weight space.

        Scaling output channel c of a gated module by :math:`z_c` equals scaling row c of its weight and bias (a
        ``Linear``/``Conv``) or its affine weight and bias (a ``BatchNorm``): the parameters are far smaller
        than the activations, so this is much cheaper than multiplying the output, forward and backward. An
        input-feature gate scales the columns instead, :math:`W (x \\odot z) = (W \\operatorname{diag} z)\\, x`
        (bias untouched); a ``Linear`` with both an output and an input gate gets both.
        ``None`` when a gated module has no weight to scale (non-affine BatchNorm): then the hooks do it.
        """
        unknown = set(gates) - set(self._site_modules)
        if unknown:
            raise KeyError(f"unknown gate sites {sorted(unknown)}")
        overrides = {}
        for name, z in gates.items():
            mask = self._holder.masks.get(name)
            if mask is not None:
                z = torch.where(mask.to(z.device), z, torch.zeros((), dtype=z.dtype, device=z.device))
            feature = self._feature_sites.get(name, False)
            for path, module in self._site_modules[name]:
                weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
                if not isinstance(weight, torch.Tensor):
                    return None
                wkey, bkey = (f"{path}.weight", f"{path}.bias") if path else ("weight", "bias")
                w = overrides.get(wkey, weight)
                if feature:  # input features: columns of the Linear's weight
                    overrides[wkey] = w * z
                    continue
                overrides[wkey] = w * z.reshape(-1, *([1] * (weight.dim() - 1)))
                if isinstance(bias, torch.Tensor):
                    overrides[bkey] = overrides.get(bkey, bias) * z
        return overrides

    @contextmanager
    def gate_values(self, gates: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Context in which calls of ``self.net`` use ``gates`` (site name -> values)."""
        unknown = set(gates) - {s.name for s in self.sites}
        if unknown:
            raise KeyError(f"unknown gate sites {sorted(unknown)}")
        previous = self._holder.values
        self._holder.values = dict(gates)
        try:
            yield
        finally:
            self._holder.values = previous

    # -- masks (continuous schedule: pruned structures stay at zero) -----------------------------------------

    def set_masks(self, masks: Mapping[str, torch.Tensor] | None) -> None:
        """Fix gates to zero where ``masks[site]`` is ``False`` (``None`` clears all masks)."""
        if masks is None:
            self._holder.masks = {}
            return
        for name, m in masks.items():
            if m.shape != (self.site(name).size,):
                raise ValueError(
                    f"mask for gate site {name!r} has shape {tuple(m.shape)}, expected ({self.site(name).size},)"
                )
        self._holder.masks = {k: torch.as_tensor(v, dtype=torch.bool) for k, v in masks.items()}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return dict(self._holder.masks)

    def plain_net(self) -> nn.Module:
        """A deep copy of the underlying network without the gate hooks (a plain ``nn.Module``)."""
        clone = copy.deepcopy(self.net)
        for m in clone.modules():
            for hooks in (m._forward_hooks, m._forward_pre_hooks):
                for key in [k for k, h in hooks.items() if isinstance(h, _GateHook)]:
                    del hooks[key]
        return clone


def _move_distribution(d: dist.Distribution, ref: torch.Tensor) -> dist.Distribution:
    """``d`` with its parameters on ``ref``'s device and dtype.

    Priors are usually written with Python numbers (CPU, default dtype); rebuilding them from their
    ``arg_constraints`` parameters lets the same prior serve a network on CUDA or in float64.
    """
    params = {
        name: getattr(d, name)
        for name in getattr(d, "arg_constraints", {})
        if isinstance(getattr(d, name, None), torch.Tensor)
    }
    if all(v.device == ref.device and v.dtype == ref.dtype for v in params.values()):
        return d
    try:
        return type(d)(**{k: v.to(ref) for k, v in params.items()})
    except TypeError as e:
        raise TypeError(
            f"cannot move prior {type(d).__name__} to {ref.device}/{ref.dtype}; build it there "
            "or pass a callable site -> distribution"
        ) from e


def gate(
    net: nn.Module,
    example_input: torch.Tensor,
    prior: PriorSpec | None = None,
    include: Sequence[Selector] | None = None,
    exclude: Sequence[Selector] | None = None,
    num_data: int | None = None,
    input_gates: Sequence[Selector] | None = None,
) -> GatedNet:
    """Attach gates to ``net``'s prunable structures; see :class:`GatedNet`."""
    return GatedNet(
        net,
        example_input,
        prior=prior,
        include=include,
        exclude=exclude,
        num_data=num_data,
        input_gates=input_gates,
    )
