r"""The recursive, layer-by-layer schedule of RBP (Zhou et al. 2018, "Network Compression via Recursive Bayesian
Pruning"; ICCV 2019, "Accelerate CNN via Recursive Bayesian Pruning").

For the gate sites :math:`l = 1..L` in execution order (input side first):

1. build :math:`N_l`: the current network with the decisions of sites :math:`< l` applied -- their pruned
   structures **physically removed**, their kept gates folded in (:func:`~pyroprune.surgery.remove`) -- and
   their modules frozen. This realises the conditioning on :math:`\theta_{<l}`: the redundancy of layer
   :math:`l` is judged given the already-pruned layers before it, :math:`p(\theta_l \mid \theta_{l-1})`;
2. gate **only** site :math:`l` (``GatedNet(N_l, include=[site l])``) with the Dirac-like prior
   :math:`p_{\varepsilon_t}` (:class:`~pyroprune.distributions.DiracLike`, width annealed by
   :func:`~pyroprune.methods.rbp.eps_schedule`) and the Gaussian noise guide
   (:class:`~pyroprune.guides.NormalNoiseGuide`); fit it with :func:`~pyroprune.infer.fit_svi` (the network's
   unfrozen weights jointly);
3. decide with the rule (``rbp`` or ``rbp-bmr``, :func:`~pyroprune.methods.decide`), write the fitted weights
   back and fold :math:`E[\theta_l]` into the kept structures;
4. optionally fine-tune the pruned network briefly (:func:`~pyroprune.infer.train_plain`); continue with
   :math:`l + 1`. A site, once decided, is never gated again.

Bookkeeping: one network of the **original** shape, ``W``, holds the current weights (removed structures keep
their last values, and are never used again). Each :math:`N_l` is cut out of it with the same surgery as every
other method, and the weights fitted in :math:`N_l` are written back through index maps that the surgery itself
produces (:func:`_index_maps`). At the end the result is expressed against the original network's gate sites: a
:class:`~pyroprune.gates.GatedNet` over ``W``, a :class:`NormalNoiseGuide` over all sites, its
:class:`~pyroprune.posterior.GatePosterior`, and a :class:`~pyroprune.plan.PruningPlan` whose removal gives the
recursion's pruned network exactly (see ``docs/methods/rbp.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import TensorSplit
from ..distributions import DiracLike
from ..gates import GatedNet, GateSite, Selector, find_gate_sites
from ..guides import NormalNoiseGuide
from ..methods import decide
from ..methods.rbp import EPS_SCHEDULES, eps_schedule
from ..plan import PruningPlan, SitePlan
from ..posterior import GatePosterior, posterior_from_guide
from ..reduction import reduced_normal_posterior
from ..surgery import fold_gates, remove
from .svi import FitHistory, fit_svi
from .train import train_plain

__all__ = ["RecursiveFit", "RecursiveStep", "fit_recursive", "prune_recursive", "RBP_METHODS"]

#: The rules the recursive schedule decides with (they read Gaussian gate posteriors).
RBP_METHODS = ("rbp", "rbp-bmr")

#: Spike width of the reduced prior that pruned gates get in the final posterior when the rule has none.
DEFAULT_SPIKE_EPS = 1e-3


@dataclass
class RecursiveStep:
    """One layer step: the site, the widths :math:`\\varepsilon_t` used, what was kept, the histories."""

    index: int
    site: str
    eps: list[float]
    kept: int
    total: int
    history: list[dict] = field(default_factory=list)
    finetune: list[dict] = field(default_factory=list)


@dataclass
class RecursiveFit:
    """The outcome of :func:`fit_recursive`, expressed against the original network's gate sites.

    :param gated: a :class:`GatedNet` over the original-shape network ``W`` holding the final weights (kept gates'
        posterior means folded in), with the per-structure Dirac-like prior of the final model.
    :param guide: a :class:`NormalNoiseGuide` over every site: kept structures :math:`\\mathcal N(1,
        \\sigma^2/\\mu^2)` (the fitted noise relative to the folded mean), pruned ones the reduced posterior
        under the spike.
    :param posterior: ``posterior_from_guide(guide, gated)``.
    :param plan: the decisions per original site (``fold`` = the posterior mean above, so ``remove(gated,
        plan)`` equals ``pruned``).
    :param pruned: the physically pruned network (before any final fine-tuning).
    :param steps: one record per layer step, in the order visited.
    :param history: every epoch of every step (records carry ``site`` and ``eps``).
    """

    gated: GatedNet
    guide: NormalNoiseGuide
    posterior: GatePosterior
    plan: PruningPlan
    pruned: nn.Module
    steps: list[RecursiveStep]
    history: FitHistory


def _index_maps(net: nn.Module, plan: PruningPlan, example_input: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """For every floating parameter and buffer of ``remove(net, plan)``: per dimension, the indices of the
    original tensor it keeps. Found by the surgery itself: each dimension ``d`` is filled with its index and cut.
    """
    maps: dict[str, list[torch.Tensor]] = {}
    max_dim = max((t.dim() for t in _tensors(net).values()), default=0)
    for d in range(max_dim):
        probe = copy.deepcopy(net)
        with torch.no_grad():
            for t in _tensors(probe).values():
                if t.dim() > d:
                    shape = [1] * t.dim()
                    shape[d] = -1
                    idx = torch.arange(t.shape[d], dtype=torch.float64 if t.dtype == torch.float64 else t.dtype)
                    t.copy_(idx.to(t.device).reshape(shape).expand_as(t))
        small = remove(probe, plan, example_input, fold=False)
        for name, t in _tensors(small).items():
            if t.dim() > d:
                line = t.detach().movedim(d, 0).reshape(t.shape[d], -1)[:, 0]
                maps.setdefault(name, []).append(line.round().long().cpu())
    return maps


def _tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.data for n, p in net.named_parameters()}
    out.update({n: b for n, b in net.named_buffers() if b.is_floating_point()})
    return out


@torch.no_grad()
def _write_back(big: nn.Module, small: nn.Module, maps: dict[str, list[torch.Tensor]]) -> None:
    """Copy every tensor of ``small`` (cut out of ``big``) into its place in ``big``."""
    target = _tensors(big)
    for name, t in _tensors(small).items():
        if t.dim() == 0:
            target[name].copy_(t)
            continue
        idx = [m.to(t.device) for m in maps[name]]
        grid = torch.meshgrid(*idx, indexing="ij")
        target[name].index_put_(grid, t.to(target[name].dtype))


def _cut(big: nn.Module, decided: list[SitePlan], example: torch.Tensor):
    """``remove(big, decisions so far)`` without folding, and the index maps back into ``big``."""
    plan = PruningPlan("rbp-recursive", {}, [SitePlan(sp.site, sp.keep, sp.score, None) for sp in decided])
    small = remove(big, plan, example, fold=False)
    return small, _index_maps(big, plan, example)


def _frozen_modules(sites: Sequence[GateSite]) -> set[str]:
    return {path for s in sites for path in (*s.producers, *s.gated_modules)}


def fit_recursive(
    net: nn.Module,
    train: TensorSplit,
    example_input: torch.Tensor,
    *,
    method: str = "rbp-bmr",
    method_params: dict | None = None,
    epochs: int = 10,
    eps_start: float = 1.0,
    eps_end: float | None = 0.1,
    eps_kind: str = "geometric",
    batch_size: int = 128,
    lr: float = 1e-3,
    guide_lr: float | None = 0.01,
    kl_weighting: str = "elbo",
    init_log_scale: float = -5.0,
    finetune_epochs_per_layer: int = 0,
    finetune_lr: float = 1e-3,
    val: TensorSplit | None = None,
    include: Sequence[Selector] | None = None,
    exclude: Sequence[Selector] | None = None,
    seed: int | None = 0,
    progress: bool = True,
    on_step: Callable[[RecursiveStep, PruningPlan], None] | None = None,
    checkpoint_dir=None,
) -> RecursiveFit:
    r"""RBP's recursive fit (module docstring): layer by layer from the input side, each layer's Gaussian
    dropout noise fitted under the Dirac-like prior with the earlier layers already pruned, removed and fixed.

    :param net: the (trained) network; not modified.
    :param train: training data on the device.
    :param example_input: an input batch for tracing.
    :param method: ``"rbp"`` (tiny-noise threshold) or ``"rbp-bmr"`` (BMR against the spike).
    :param method_params: the rule's parameters.
    :param epochs: SVI epochs per layer.
    :param eps_start: :math:`\varepsilon_0` of :func:`~pyroprune.methods.rbp.eps_schedule`.
    :param eps_end: :math:`\varepsilon_1`.
    :param eps_kind: ``"geometric"`` or ``"constant"``.
    :param finetune_epochs_per_layer: plain training epochs of the pruned network after each layer's decision.
    :param include: gate only these sites (``fnmatch`` patterns / types, as in :func:`find_gate_sites`).
    :param on_step: called after each layer step with the step record and the partial plan of the sites decided
        so far (e.g. to print the kept structures).
    :param checkpoint_dir: if given, each layer's SVI writes its checkpoints into ``checkpoint_dir/<site>``
        (the recursion itself is not resumable).
    :raises ValueError: for an unknown method, bad widths or schedule (one line naming the parameter).
    """
    if method not in RBP_METHODS:
        raise ValueError(f"'method' must be one of {', '.join(RBP_METHODS)} for the recursive schedule, got {method!r}")
    if eps_kind not in EPS_SCHEDULES:
        raise ValueError(f"'eps_schedule' must be one of {', '.join(EPS_SCHEDULES)}, got {eps_kind!r}")
    eps_values = eps_schedule(eps_start, eps_end, epochs, eps_kind)
    if finetune_epochs_per_layer < 0:
        raise ValueError(f"'finetune_epochs_per_layer' must be >= 0, got {finetune_epochs_per_layer}")
    method_params = dict(method_params or {})
    eps_final = eps_values[-1] if eps_values else float(eps_start if eps_end is None else eps_end)
    spike = float(method_params.get("spike_eps", DEFAULT_SPIKE_EPS))
    if method == "rbp-bmr" and not spike < eps_final:
        raise ValueError(f"'spike_eps' ({spike}) must be < the final prior width 'prior_eps_end' ({eps_final})")

    big = copy.deepcopy(net)
    sites = find_gate_sites(big, example_input, include, exclude)
    if not sites:
        raise ValueError(f"nothing to prune in {type(net).__name__}; check include/exclude")
    ref = next(big.parameters())
    decided: list[SitePlan] = []
    fitted: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (loc, scale, eps_f) per site
    steps: list[RecursiveStep] = []
    history = FitHistory()
    for index, site in enumerate(sites):
        small, maps = _cut(big, decided, example_input)
        frozen = _frozen_modules(sites[:index])
        for name, module in small.named_modules():
            if name in frozen:
                for p in module.parameters(recurse=False):
                    p.requires_grad_(False)
        holder = {"eps": eps_values[0] if eps_values else eps_final}
        gated = GatedNet(
            small,
            example_input,
            prior=lambda _site, h=holder: DiracLike(h["eps"]),
            include=[site.producers[0]],
            num_data=len(train),
        )
        if [s.name for s in gated.sites] != [site.name] or gated.sites[0].size != site.size:
            raise RuntimeError(f"recursive step {index}: site {site.name!r} changed shape before its turn")
        guide = NormalNoiseGuide(gated, init_loc=1.0, init_log_scale=init_log_scale).to(ref)

        def on_epoch_end(epoch: int, record: dict, h=holder, name=site.name) -> dict:
            used = h["eps"]
            if epoch < len(eps_values):
                h["eps"] = eps_values[epoch]  # the width of the next epoch
            return {"site": name, "eps": used}

        fit = fit_svi(
            gated,
            guide,
            train,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            guide_lr=guide_lr,
            kl_weighting=kl_weighting,
            seed=None if seed is None else seed + index,
            on_epoch_end=on_epoch_end,
            progress=progress,
            description=f"RBP {site.name} ({index + 1}/{len(sites)})",
            checkpoint_dir=None if checkpoint_dir is None else f"{checkpoint_dir}/{site.name}",
        )
        history.epochs.extend(fit.epochs)
        posterior = posterior_from_guide(guide, gated)
        step_plan = decide(posterior, method, gated, **method_params)
        sp = step_plan.sites[0]
        decided.append(SitePlan(site, list(sp.keep), list(sp.score), None, list(sp.forced)))
        q = posterior.normal(site.name)
        fitted.append((q.loc.detach().clone(), q.scale.detach().clone(), float(holder["eps"])))
        # the weights fitted in N_l go back into W; then E[theta_l] is folded into W's kept structures of site l
        _write_back(big, gated.net, maps)
        keep = torch.tensor(sp.keep, device=q.loc.device)
        fold = torch.where(keep, q.loc, torch.ones_like(q.loc))
        fold_gates(big, PruningPlan("rbp-fold", {}, [SitePlan(site, [True] * site.size, sp.score, fold.tolist())]))
        finetune: list[dict] = []
        if finetune_epochs_per_layer > 0:
            small, maps = _cut(big, decided, example_input)
            finetune = train_plain(
                small,
                train,
                epochs=finetune_epochs_per_layer,
                batch_size=batch_size,
                lr=finetune_lr,
                val=val,
                seed=None if seed is None else seed + index,
                progress=progress,
                description=f"fine-tune after {site.name}",
            )
            _write_back(big, small, maps)
        step = RecursiveStep(index, site.name, list(eps_values), sp.kept, site.size, fit.epochs, finetune)
        steps.append(step)
        if on_step is not None:
            on_step(step, PruningPlan(method, dict(method_params), list(decided)))

    return _assemble(
        big,
        sites,
        decided,
        fitted,
        example_input,
        train,
        method,
        method_params,
        spike,
        include,
        exclude,
        steps,
        history,
    )


def _assemble(
    big, sites, decided, fitted, example, train, method, method_params, spike, include, exclude, steps, history
) -> RecursiveFit:
    """The final model over the original sites: kept gates relative to their folded mean, pruned ones reduced."""
    eps_vec, locs, scales = {}, {}, {}
    for site, sp, (loc, scale, eps_f) in zip(sites, decided, fitted, strict=True):
        keep = torch.tensor(sp.keep, device=loc.device)
        mag = loc.abs().clamp_min(torch.finfo(loc.dtype).tiny)
        r_loc, r_scale = reduced_normal_posterior(loc, scale, eps_f, min(spike, 0.5 * eps_f))
        locs[site.name] = torch.where(keep, torch.ones_like(loc), r_loc.to(loc.dtype))
        scales[site.name] = torch.where(keep, scale / mag, r_scale.to(loc.dtype))
        eps_vec[site.name] = torch.where(keep, eps_f / mag, torch.full_like(loc, min(spike, 0.5 * eps_f)))
    ref = next(big.parameters())
    gated = GatedNet(
        big,
        example,
        prior={k: DiracLike(v.to(ref)) for k, v in eps_vec.items()},
        include=include,
        exclude=exclude,
        num_data=len(train),
    )
    guide = NormalNoiseGuide(gated).to(ref)
    with torch.no_grad():
        for k in guide.loc:
            name = k.replace("__", ".")
            guide.loc[k].copy_(locs[name])
            guide.log_scale[k].copy_(scales[name].log())
    posterior = posterior_from_guide(guide, gated)
    plan_sites = [
        SitePlan(site, list(sp.keep), list(sp.score), posterior.mean(site.name).double().cpu().tolist(), sp.forced)
        for site, sp in zip(sites, decided, strict=True)
    ]
    plan = PruningPlan(method, dict(method_params), plan_sites)
    pruned = remove(gated, plan, example)
    return RecursiveFit(gated, guide, posterior, plan, pruned, steps, history)


def prune_recursive(net, data, config, progress: bool = True, checkpoint_dir=None, resume: bool = False):
    """:func:`~pyroprune.pipeline.prune_network` for ``schedule="recursive"``: :func:`fit_recursive`, then the
    final fine-tuning of the pruned network (``config.finetune_epochs``), as a
    :class:`~pyroprune.pipeline.PruneResult`."""
    from ..pipeline import PruneResult, finetune_pruned

    if resume:
        raise ValueError("'resume' is not supported by the recursive schedule (each layer step starts afresh)")
    example = data.train.x[:2]
    fit = fit_recursive(
        net,
        data.train,
        example,
        method=config.method,
        method_params=config.method_params,
        epochs=config.epochs,
        eps_start=config.prior_eps,
        eps_end=config.prior_eps_end,
        eps_kind=config.eps_schedule,
        batch_size=config.batch_size,
        lr=config.lr,
        guide_lr=config.guide_lr,
        kl_weighting=config.kl_weighting,
        init_log_scale=config.init_log_scale,
        finetune_epochs_per_layer=config.finetune_epochs_per_layer,
        finetune_lr=config.finetune_lr,
        val=data.val,
        seed=config.seed,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
    )
    finetune = finetune_pruned(fit.pruned, data, config, progress=progress)
    return PruneResult(fit.gated, fit.guide, fit.posterior, fit.plan, fit.pruned, fit.history, finetune, config)
