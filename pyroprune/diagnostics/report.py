r"""The reliability report of one pruning method: several seeds, one architecture, one data set.

:func:`diagnose` puts the building blocks of :mod:`pyroprune.diagnostics` together and returns a
:class:`Diagnostics`; :func:`write_report` renders it into a folder::

    out_dir/
        report.md                      the human-readable report (Markdown, figures linked relatively)
        diagnostics.json               Diagnostics.summary (JSON-safe: numbers, strings, lists, null)
        posterior.nc                   the ArviZ DataTree of the dense Bayesian model (save_datatree)
        figures/reliability_diagram.png
        figures/keep_probability_forest.png
        figures/gate_posteriors.png
        figures/accuracy_coverage.png
        figures/khat.png
        figures/block_drops.png        with an SR-init depth stage: the drop of each residual block

Three predictors are compared on the test split:

* **dense network** -- the deterministic network before gating (``RunArtifacts.dense``, if given);
* **dense Bayesian** -- the gated network averaged over the gate posterior: the mean of the class probabilities
  over every draw of every run (runs are ArviZ *chains*, see :func:`~pyroprune.diagnostics.datatree.build_datatree`);
  gates fixed at zero by the masks of a ``"continuous"`` schedule stay at zero, as during training (the report
  counts them);
* **pruned** -- the physically pruned and fine-tuned network of the first run (softmax of its logits); with two
  runs or more also the **pruned ensemble**, the mean of the runs' pruned networks' probabilities.

**Keep probability.** The decision rules differ (BMRS, SNR, magnitude...), so the report uses one rule-agnostic
proxy for "the posterior wants this structure": the share of posterior draws in which the gate is *active*,
:math:`P(\theta > 2^{-8})`. The threshold :math:`2^{-8}` is the upper end of the reduced region
:math:`[0, 2^{-8}]` of BMRS_U-8 (Wright, Igel & Selvan 2024): a gate below it is one the reduced model of
BMRS_U-8 would switch off. A structure's decision is **uncertain** if its keep probability lies in
:math:`[0.1, 0.9]`, or if the plan's decision disagrees with "keep probability > 0.5".

The variational draws are independent samples of :math:`q`, not Markov chains, so no :math:`\hat R` or MCMC
effective sample size is reported; the quality of :math:`q` is judged by the PSIS :math:`\hat k`
(:mod:`~pyroprune.diagnostics.approximation`) and the reproducibility of the decisions by the agreement of the
seeds' plans (:mod:`~pyroprune.diagnostics.stability`).

**SR-init** (``RunArtifacts.depth``): a run whose residual blocks were scored by re-initialisation gets the
section "Block sensitivity (SR-init)" and ``figures/block_drops.png`` (:mod:`~pyroprune.diagnostics.blocks`). A
run of SR-init alone fits no gate posterior: there is no dense Bayesian model, no ``posterior.nc`` and none of
the gate figures; the report compares the dense network with the pruned one, and each section about the gate
posterior says that it does not apply.
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..data import DataSplits, TensorSplit
from ..guides import TruncatedLogNormalGuide
from ..infer.svgd import SVGD
from ..plan import atomic_write_text, write_atomic
from .approximation import (
    KHAT_BAD,
    KHAT_GOOD,
    importance_ess,
    interpret_khat,
    log_importance_ratios,
    pareto_khat,
)
from .blocks import BLOCK_FIGURE, BLOCK_LEVEL, block_summary, check_depth_runs, plot_block_drops, split_name
from .conformal import conformal_report
from .datatree import (
    build_datatree,
    package_version,
    posterior_predictive_draws,
    predictive_probabilities,
    save_datatree,
)
from .metrics import accuracy_coverage_curve, compare_predictive, reliability_diagram_data, reliability_summary
from .run import RunArtifacts
from .stability import stability_report

__all__ = [
    "ACTIVE_THRESHOLD",
    "ALPHAS",
    "BLOCK_FIGURE",
    "FIGURES",
    "GATE_FIGURES",
    "HDI_PROB",
    "SECTIONS",
    "UNCERTAIN_RANGE",
    "Diagnostics",
    "diagnose",
    "write_report",
]

#: A gate counts as *active* in a draw when :math:`\theta > 2^{-8}` (upper end of BMRS_U-8's reduced region).
ACTIVE_THRESHOLD = 2.0**-8
#: Keep probabilities in this closed interval make a decision uncertain.
UNCERTAIN_RANGE = (0.1, 0.9)
#: Probability mass of the highest density intervals of :math:`\theta`.
HDI_PROB = 0.94
#: Miscoverage levels of the conformal prediction sets (90 % and 95 % coverage).
ALPHAS = (0.1, 0.05)
#: File names of the figures, written into ``out_dir/figures``.
FIGURES = (
    "reliability_diagram.png",
    "keep_probability_forest.png",
    "gate_posteriors.png",
    "accuracy_coverage.png",
    "khat.png",
)
#: The figures of :data:`FIGURES` that show the gate posterior (not drawn for SR-init alone, which fits none).
GATE_FIGURES = ("keep_probability_forest.png", "gate_posteriors.png", "khat.png")
#: Headings of the sections of ``report.md``, in order.
SECTIONS = (
    "Setup",
    "Predictive performance",
    "Accuracy across posterior draws",
    "Dense Bayesian vs pruned",
    "Conformal prediction sets",
    "Variational approximation (PSIS k-hat)",
    "Uncertain pruning decisions",
    "Block sensitivity (SR-init)",
    "Stability across seeds",
    "Figures",
)

_MODEL_LABELS = {
    "dense_network": "dense network",
    "dense_bayesian": "dense Bayesian",
    "pruned": "pruned",
    "pruned_ensemble": "pruned ensemble",
}
_STABILITY_NOTE = "stability needs >= 2 seeds (independent runs of the method); only one run was given"
#: Why the gate-posterior parts of the report are missing from a run of SR-init alone.
_NO_GATES = "not applicable: SR-init fits no gate posterior"


@dataclass
class Diagnostics:
    """Everything :func:`diagnose` computed.

    :param summary: the JSON-safe summary (nested dicts of floats, ints, bools, strings, lists and ``None`` for
        undefined numbers); written as ``diagnostics.json``. Top-level keys: ``setup``, ``models`` (per predictor
        :func:`~pyroprune.diagnostics.metrics.reliability_summary`), ``comparison``
        (:func:`~pyroprune.diagnostics.metrics.compare_predictive` of dense Bayesian vs pruned), ``conformal``
        (per predictor, per :math:`\\alpha` as a string), ``structures`` (per site: keep probabilities, HDIs,
        decisions, uncertain decisions; plus ``total``), ``khat``, ``stability``; with an SR-init depth stage
        also ``blocks`` (:func:`~pyroprune.diagnostics.blocks.block_summary`). For SR-init alone (no gate
        posterior) ``comparison`` is dense network vs pruned (its ``reference`` names the dense model), and
        ``draws``, ``structures`` and ``khat`` are ``{"available": false, "reason": ...}``.
    :param datatree: the ArviZ :class:`xarray.DataTree` of the dense Bayesian model on the test split (chains =
        runs); ``None`` for SR-init alone.
    :param arrays: numpy arrays for the figures: ``labels``; ``probs`` (predictor -> ``[N, K]``); ``reliability``
        (predictor -> :func:`~pyroprune.diagnostics.metrics.reliability_diagram_data`); ``accuracy_coverage``
        (predictor -> ``(coverage, accuracy)``); ``active_share`` (site -> ``[chain, draw]`` share of active gates);
        ``theta`` (site -> ``[draw, C]`` draws of the first run); ``plan_keep`` (site -> ``[C]`` bool, first run);
        ``plan_kept_share`` (site -> ``[runs]``); ``log_weights`` (``[S]`` PSIS log ratios, or ``None``).
    """

    summary: dict[str, Any]
    datatree: xr.DataTree | None
    arrays: dict[str, Any] = field(default_factory=dict)


# -- helpers ---------------------------------------------------------------------------------------------------


#: Fewest posterior draws for Pareto-smoothed importance sampling (k-hat, approximate LOO).
MIN_PSIS_DRAWS = 25


def _check_runs(runs: Sequence[RunArtifacts]) -> list[RunArtifacts]:
    """Validate the runs: non-empty, :class:`RunArtifacts`, all with or all without a depth stage and a gate
    posterior, the same residual blocks (:func:`~pyroprune.diagnostics.blocks.check_depth_runs`) and the same
    gate sites (and plan sites) as run 0."""
    runs = list(runs)
    if not runs:
        raise ValueError("runs is empty: pass at least one RunArtifacts (one per seed)")
    for i, run in enumerate(runs):
        if not isinstance(run, RunArtifacts):
            raise TypeError(f"runs[{i}] is a {type(run).__name__}, not a RunArtifacts")
    check_depth_runs(runs)
    if not runs[0].has_gates:  # SR-init alone: the block plans are compared by check_depth_runs
        return runs
    reference = [(s.name, s.size) for s in runs[0].gated.sites]
    names = [n for n, _ in reference]
    for i, run in enumerate(runs):
        sites = [(s.name, s.size) for s in run.gated.sites]
        for what, got in (("gated network", sites), ("plan", [(sp.site.name, sp.site.size) for sp in run.plan.sites])):
            if got == reference:
                continue
            other = dict(got)
            for name, size in reference:
                if name not in other:
                    raise ValueError(f"runs[{i}]: the {what} has no gate site {name!r} (runs[0] has)")
                if other[name] != size:
                    raise ValueError(
                        f"runs[{i}]: gate site {name!r} of the {what} has {other[name]} structures, {size} in runs[0]"
                    )
            extra = [n for n, _ in got if n not in names]
            if extra:
                raise ValueError(f"runs[{i}]: the {what} has gate site {extra[0]!r}, which runs[0] does not have")
            raise ValueError(f"runs[{i}]: the {what}'s gate sites are in a different order than in runs[0]")
    return runs


def _check_positive(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's CPU generator (and ``device``'s, if CUDA) inside the block; the caller's state is restored."""
    cuda = device.type == "cuda"
    index = device.index if device.index is not None else (torch.cuda.current_device() if cuda else None)
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        torch.manual_seed(seed)
        yield


def _device(module: nn.Module) -> torch.device:
    ref = next(module.parameters(), None)
    return ref.device if ref is not None else torch.device("cpu")


@torch.no_grad()
def _network_probs(net: nn.Module, split: TensorSplit, batch_size: int) -> torch.Tensor:
    """Softmax of a plain network's logits on ``split``, ``[N, K]`` float64 on the CPU (eval mode, restored)."""
    ref = next(net.parameters(), None)
    was_training = net.training
    net.eval()
    out = []
    try:
        for x, _ in split.batches(batch_size):
            if ref is not None:
                x = x.to(device=ref.device, dtype=ref.dtype if x.is_floating_point() else None)
            out.append(torch.softmax(net(x).double(), dim=-1).cpu())
    finally:
        net.train(was_training)
    return torch.cat(out)


def _bayes_probs(runs: Sequence[RunArtifacts], split: TensorSplit, num_draws: int, batch_size: int, seed: int):
    """Mean class probabilities of the dense Bayesian model on ``split`` (run ``i`` seeded ``seed + i``, as in
    :func:`build_datatree`, so the gate draws are the test tree's), ``[N, K]`` float64 on the CPU."""
    total = None
    for i, run in enumerate(runs):
        p = posterior_predictive_draws(run.gated, run.posterior, split, num_draws, batch_size, seed + i)["probs"]
        p = p.double().sum(0).cpu()
        total = p if total is None else total + p
    return total / (num_draws * len(runs))


def _finite(x: Any) -> Any:
    """A JSON-safe copy: numpy/torch scalars to Python, non-finite floats to ``None``, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.ndarray):
        return _finite(x.tolist())
    if isinstance(x, torch.Tensor):
        return _finite(x.detach().cpu().tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    raise TypeError(f"cannot store a {type(x).__name__} in the JSON summary")


def _alpha_key(alpha: float) -> str:
    return f"{alpha:g}"


# -- diagnose --------------------------------------------------------------------------------------------------


def diagnose(
    runs: Sequence[RunArtifacts],
    data: DataSplits,
    *,
    num_draws: int = 100,
    khat_draws: int = 500,
    batch_size: int = 512,
    seed: int = 0,
    n_bins: int = 15,
) -> Diagnostics:
    """All reliability diagnostics of the runs (seeds) of one method on one architecture.

    1. **Dense Bayesian model**: :func:`~pyroprune.diagnostics.datatree.build_datatree` of all runs on
       ``data.test`` (``plan=None``; chains = runs, ``num_draws`` draws each, seeded ``seed + i``); its
       probabilities are the mean over chains and draws, the per-draw probabilities give the mutual information.
    2. **Pruned model**: the first run's pruned network (and, with >= 2 runs, the ensemble of all runs' pruned
       networks); the deterministic dense network if ``runs[0].dense`` is given.
    3. :func:`~pyroprune.diagnostics.metrics.compare_predictive` of dense Bayesian vs pruned (bootstrap seeded
       with ``seed``).
    4. :func:`~pyroprune.diagnostics.conformal.conformal_report` (APS), calibrated on ``data.val`` with the same
       model's validation probabilities, evaluated on the test split, :data:`ALPHAS`, for dense Bayesian and
       pruned.
    5. Per structure (first run's posterior draws, chain 0 of the tree): the keep probability
       :math:`P(\\theta > 2^{-8})` (see the module docstring; the value pooled over all runs too), the 94 % HDI
       of :math:`\\theta` (``arviz.hdi``), the posterior mean, the first run's plan decision, with >= 2 runs the
       share of runs whose plan keeps it, and the uncertain decisions.
    6. PSIS :math:`\\hat k` of the first run's guide (its posterior if the guide is not a
       :class:`~pyroprune.guides.TruncatedLogNormalGuide`) on ``data.train`` with ``khat_draws`` draws: the
       steps of :func:`~pyroprune.diagnostics.approximation.khat_report`, called one by one so the log ratios
       behind :math:`\\hat k` are kept for the figure; seeded with ``seed`` (the caller's random state is left
       untouched). If the ratios cannot be computed (a posterior without densities) ``khat.available`` is false
       with the reason.
    7. With >= 2 runs :func:`~pyroprune.diagnostics.stability.stability_report` of the plans (on the rules'
       scores; on the keep decisions if the scores are not finite); otherwise a note.
    8. With an SR-init depth stage (``RunArtifacts.depth``), the block sensitivity of the first run
       (:func:`~pyroprune.diagnostics.blocks.block_summary`: per block in network order the drops, their 95 %
       interval, the decision, the reason of fixed blocks, with >= 2 runs the share of runs removing it).

    **SR-init alone** (runs without a gate posterior) skips 1, 5 and 6, which need one (recorded as not
    applicable): the predictors are the dense network and the pruned network(s), 3 compares them, 4 builds
    their conformal sets, 7 compares the block plans, and 8 is computed.

    Every metric is computed on the CPU in float64 from probabilities gathered batch by batch, so the networks
    may live on any device.

    :param runs: the fitted runs, one per seed, with the same gate sites (and residual blocks).
    :param data: the data splits (``train`` for k-hat, ``val`` for conformal calibration, ``test`` for the rest).
    :param num_draws: posterior draws per run for the predictive quantities.
    :param khat_draws: draws of :math:`q` for the PSIS k-hat (>= 25; a few hundred for a stable fit).
    :param batch_size: examples per forward pass.
    :param seed: base seed of every random quantity.
    :param n_bins: bins of the ECEs and the reliability diagram.
    :returns: the :class:`Diagnostics`.
    :raises ValueError: for empty ``runs``, runs with different gate sites (naming the run and site), runs mixing
        SR-init and other methods or with different residual blocks (naming the run), or invalid counts.
    """
    runs = _check_runs(runs)
    _check_positive("num_draws", num_draws)
    _check_positive("khat_draws", khat_draws, MIN_PSIS_DRAWS)
    _check_positive("batch_size", batch_size)
    _check_positive("n_bins", n_bins)
    if not runs[0].has_gates:
        return _diagnose_without_gates(runs, data, batch_size=batch_size, seed=seed, n_bins=n_bins)
    first = runs[0]
    sites = first.gated.sites
    # A posterior of particles (SVGD) stores K draws: use them all, not more.
    stored = [r.posterior.num_stored_draws for r in runs if r.posterior.num_stored_draws is not None]
    num_draws = min([num_draws, *stored])
    particles = all(isinstance(r.guide, SVGD) for r in runs)
    labels = data.test.y.detach().cpu().long()
    val_labels = data.val.y.detach().cpu().long()

    # 1. dense Bayesian model
    dt = build_datatree(
        [(r.gated, r.posterior) for r in runs],
        data.test,
        method=first.method,
        prior=first.gated.prior(sites[0]),
        guide_name=first.posterior.guide_name or type(first.guide).__name__,
        num_draws=num_draws,
        batch_size=batch_size,
        seed=seed,
        extra_attrs={"seeds": [int(r.seed) for r in runs], "data_set": data.name},
    )
    draw_probs = torch.from_numpy(np.asarray(predictive_probabilities(dt).values))
    draw_probs = draw_probs.reshape(-1, *draw_probs.shape[-2:])  # [chains * draws, N, K]
    draws = _draw_accuracy(draw_probs, labels, seed)
    test_probs = {"dense_bayesian": draw_probs.mean(0, dtype=torch.float64)}
    val_probs = {"dense_bayesian": _bayes_probs(runs, data.val, num_draws, batch_size, seed)}

    # 2. pruned model(s) and the dense network
    _network_predictors(runs, data, batch_size, test_probs, val_probs, dense_val=False)
    models = _model_summaries(test_probs, labels, n_bins, draw_probs)

    # 3. dense Bayesian vs pruned, 4. conformal sets
    comparison = compare_predictive(test_probs["dense_bayesian"], test_probs["pruned"], labels, seed=seed)
    comparison["reference"] = "dense_bayesian"
    conformal = _conformal(("dense_bayesian", "pruned"), val_probs, val_labels, test_probs, labels, seed)

    # 5. per structure, 7. stability
    stability = _stability([r.plan for r in runs])
    structures, struct_arrays = _structures(dt, runs, stability)

    # 6. PSIS k-hat
    khat, log_weights = _khat(first, data.train, khat_draws, batch_size, seed)

    masked = {
        f"seed {r.seed}": {name: int((~m).sum()) for name, m in r.gated.masks.items() if int((~m).sum())} for r in runs
    }
    setup = {
        **_base_setup(runs, data, seed, n_bins),
        "num_draws_per_run": int(num_draws),
        "khat_draws": int(khat_draws),
        "guide": dt.attrs.get("guide_name", ""),
        "prior": dt.attrs.get("prior", ""),
        "gate_sites": [{"name": s.name, "size": s.size, "kind": s.kind} for s in sites],
        "kept": {f"seed {r.seed}": r.plan.kept_string() for r in runs},
        "masked_structures": masked,
        "active_threshold": ACTIVE_THRESHOLD,
        "particles": particles,
        "versions": {k: dt.attrs.get(k, "") for k in ("pyroprune_version", "torch_version", "arviz_version")},
    }
    khat["approximate_loo"] = _approximate_loo(dt, runs, data.train, batch_size)
    summary = {
        "setup": setup,
        "models": models,
        "comparison": comparison,
        "draws": draws,
        "conformal": conformal,
        "structures": structures,
        "khat": khat,
        "stability": stability,
    }
    if first.depth is not None:  # SR-init before the width method
        summary["blocks"] = block_summary(runs, BLOCK_LEVEL, UNCERTAIN_RANGE)
    arrays = {**_figure_arrays(labels, test_probs, n_bins), "log_weights": log_weights, **struct_arrays}
    return Diagnostics(_finite(summary), dt, arrays)


def _diagnose_without_gates(
    runs: list[RunArtifacts], data: DataSplits, *, batch_size: int, seed: int, n_bins: int
) -> Diagnostics:
    """:func:`diagnose` for runs of SR-init alone: no gate posterior, so no dense Bayesian model, draws, keep
    probabilities or k-hat (each recorded as not applicable). The dense network is compared with the pruned one,
    conformal sets are built for both, the block plans' stability is computed with >= 2 runs, and the block
    sensitivity is summarised."""
    labels = data.test.y.detach().cpu().long()
    val_labels = data.val.y.detach().cpu().long()
    test_probs: dict[str, torch.Tensor] = {}
    val_probs: dict[str, torch.Tensor] = {}
    _network_predictors(runs, data, batch_size, test_probs, val_probs, dense_val=True)
    models = _model_summaries(test_probs, labels, n_bins)
    if "dense_network" in test_probs:
        comparison = compare_predictive(test_probs["dense_network"], test_probs["pruned"], labels, seed=seed)
        comparison["reference"] = "dense_network"
    else:
        comparison = {"available": False, "reason": "no dense network was given (RunArtifacts.dense)"}
    conformal_models = [m for m in ("dense_network", "pruned") if m in val_probs]
    conformal = _conformal(conformal_models, val_probs, val_labels, test_probs, labels, seed)
    not_applicable = {"available": False, "reason": _NO_GATES}
    setup = {
        **_base_setup(runs, data, seed, n_bins),
        "kept": {f"seed {r.seed}": r.plan.kept_string() for r in runs},
        "versions": {
            "pyroprune_version": package_version("pyroprune"),
            "torch_version": str(torch.__version__),
            "arviz_version": package_version("arviz"),
        },
    }
    summary = {
        "setup": setup,
        "models": models,
        "comparison": comparison,
        "draws": dict(not_applicable),
        "conformal": conformal,
        "structures": dict(not_applicable),
        "khat": {**not_applicable, "approximate_loo": dict(not_applicable)},
        "stability": _stability([r.plan for r in runs]),
        "blocks": block_summary(runs, BLOCK_LEVEL, UNCERTAIN_RANGE),
    }
    return Diagnostics(_finite(summary), None, _figure_arrays(labels, test_probs, n_bins))


def _base_setup(runs: Sequence[RunArtifacts], data: DataSplits, seed: int, n_bins: int) -> dict[str, Any]:
    """The setup entries every report has, with or without a gate posterior."""
    first = runs[0]
    return {
        "method": first.method,
        "methods": sorted({r.method for r in runs}),
        "seeds": [int(r.seed) for r in runs],
        "num_runs": len(runs),
        "data_set": data.name,
        "num_classes": int(data.num_classes),
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "seed": int(seed),
        "n_bins": int(n_bins),
        "has_gates": first.has_gates,
        "depth": first.depth is not None,
    }


def _network_predictors(
    runs: Sequence[RunArtifacts],
    data: DataSplits,
    batch_size: int,
    test_probs: dict[str, torch.Tensor],
    val_probs: dict[str, torch.Tensor],
    dense_val: bool,
) -> None:
    """Add the plain networks' probabilities to ``test_probs`` / ``val_probs``: the first run's pruned network
    (test and validation), with >= 2 runs the pruned ensemble (test), the dense network if given (test, and
    validation when ``dense_val``, for its conformal sets)."""
    first = runs[0]
    test_probs["pruned"] = _network_probs(first.pruned, data.test, batch_size)
    val_probs["pruned"] = _network_probs(first.pruned, data.val, batch_size)
    if len(runs) > 1:
        test_probs["pruned_ensemble"] = torch.stack(
            [test_probs["pruned"]] + [_network_probs(r.pruned, data.test, batch_size) for r in runs[1:]]
        ).mean(0)
    if first.dense is not None:
        test_probs["dense_network"] = _network_probs(first.dense, data.test, batch_size)
        if dense_val:
            val_probs["dense_network"] = _network_probs(first.dense, data.val, batch_size)


def _model_summaries(
    test_probs: dict[str, torch.Tensor], labels: torch.Tensor, n_bins: int, draw_probs: torch.Tensor | None = None
) -> dict[str, dict]:
    """:func:`~pyroprune.diagnostics.metrics.reliability_summary` of each predictor, in the report's order (the
    per-draw probabilities go with the dense Bayesian model only)."""
    order = [m for m in _MODEL_LABELS if m in test_probs]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "misclassification AUROC is undefined", RuntimeWarning)
        return {
            m: reliability_summary(test_probs[m], labels, draw_probs if m == "dense_bayesian" else None, n_bins=n_bins)
            for m in order
        }


def _conformal(
    models: Sequence[str],
    val_probs: dict[str, torch.Tensor],
    val_labels: torch.Tensor,
    test_probs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    seed: int,
) -> dict[str, dict]:
    """APS conformal sets of each of ``models``, calibrated on its validation probabilities, per :data:`ALPHAS`."""
    return {
        m: {
            _alpha_key(a): v
            for a, v in conformal_report(
                val_probs[m], val_labels, test_probs[m], labels, alphas=ALPHAS, method="aps", seed=seed
            ).items()
        }
        for m in models
    }


def _stability(plans: Sequence) -> dict[str, Any]:
    """:func:`~pyroprune.diagnostics.stability.stability_report` of >= 2 plans (on the rules' scores; on the keep
    decisions if the scores are not finite), else a note."""
    if len(plans) < 2:
        return {"available": False, "note": _STABILITY_NOTE}
    try:
        stability = stability_report(plans)
        stability["scores_used"] = True
    except ValueError as e:  # non-finite scores: compare the decisions only
        stability = stability_report(plans, scores=False)
        stability["scores_used"] = False
        stability["note"] = f"rule scores not comparable ({e}); variance share computed on keep decisions"
    stability["available"] = True
    return stability


def _figure_arrays(labels: torch.Tensor, test_probs: dict[str, torch.Tensor], n_bins: int) -> dict[str, Any]:
    """The arrays behind the reliability diagram and the accuracy-coverage curves."""
    return {
        "labels": labels.numpy(),
        "probs": {m: p.numpy() for m, p in test_probs.items()},
        "reliability": {
            m: {k: v.numpy() for k, v in reliability_diagram_data(p, labels, n_bins).items()}
            for m, p in test_probs.items()
        },
        "accuracy_coverage": {
            m: tuple(t.numpy() for t in accuracy_coverage_curve(p, labels)) for m, p in test_probs.items()
        },
    }


def _draw_accuracy(draw_probs: torch.Tensor, labels: torch.Tensor, seed: int, num_boot: int = 1000) -> dict:
    """Spread of the test accuracy across posterior draws (e.g. SVGD particles): mean, sd, central 95 %, extremes,
    and a 95 % bootstrap interval of the mean resampling draws and test examples together."""
    correct = (draw_probs.argmax(-1) == labels.to(draw_probs.device)).double()  # [S, N]
    acc = correct.mean(1)
    s, n = correct.shape
    g = torch.Generator().manual_seed(seed)
    boot = torch.empty(num_boot, dtype=torch.float64)
    for b in range(num_boot):
        rows = torch.randint(s, (s,), generator=g)
        cols = torch.randint(n, (n,), generator=g)
        boot[b] = correct[rows][:, cols].mean()
    q = torch.quantile(acc, torch.tensor([0.025, 0.975], dtype=torch.float64))
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return {
        "num_draws": s,
        "mean": float(acc.mean()),
        "sd": float(acc.std()) if s > 1 else 0.0,
        "q025": float(q[0]),
        "q975": float(q[1]),
        "min": float(acc.min()),
        "max": float(acc.max()),
        "mean_low": float(lo),
        "mean_high": float(hi),
        "per_draw": acc.tolist(),
    }


def _structures(dt: xr.DataTree, runs: Sequence[RunArtifacts], stability: dict) -> tuple[dict, dict]:
    """Per-structure keep probabilities, HDIs, decisions and uncertain decisions (see :func:`diagnose`)."""
    import arviz as az

    first = runs[0]
    posterior = dt["posterior"]
    hdi = az.hdi(dt, prob=HDI_PROB, group="posterior", coords={"chain": [0]})
    low, high = UNCERTAIN_RANGE
    out: dict[str, Any] = {}
    arrays: dict[str, dict] = {"active_share": {}, "theta": {}, "plan_keep": {}, "plan_kept_share": {}}
    total_uncertain = total = 0
    for site in first.gated.sites:
        theta = np.asarray(posterior[site.name].values, dtype=np.float64)  # [chain, draw, C]
        active = theta > ACTIVE_THRESHOLD
        keep_prob = active[0].mean(0)
        plan_site = first.plan[site.name]
        keep = np.asarray(plan_site.keep, dtype=bool)
        bounds = hdi[site.name]
        hdi_low = np.asarray(bounds.sel(ci_bound="lower").values, dtype=np.float64)
        hdi_high = np.asarray(bounds.sel(ci_bound="upper").values, dtype=np.float64)
        mean = theta[0].mean(0)
        uncertain = []
        for c in range(site.size):
            reasons = []
            if low <= keep_prob[c] <= high:
                reasons.append(f"keep probability in [{low}, {high}]")
            if keep[c] != (keep_prob[c] > 0.5):
                reasons.append(
                    "plan keeps it, keep probability <= 0.5" if keep[c] else "plan prunes it, keep probability > 0.5"
                )
            if reasons:
                uncertain.append(
                    {
                        "index": c,
                        "keep_probability": float(keep_prob[c]),
                        "plan_keep": bool(keep[c]),
                        "posterior_mean": float(mean[c]),
                        "hdi": [float(hdi_low[c]), float(hdi_high[c])],
                        "reasons": reasons,
                    }
                )
        entry: dict[str, Any] = {
            "size": site.size,
            "kind": site.kind,
            "kept": int(keep.sum()),
            "plan_keep": keep.tolist(),
            "plan_forced": list(plan_site.forced),
            "keep_probability": keep_prob.tolist(),
            "keep_probability_all_runs": active.reshape(-1, site.size).mean(0).tolist(),
            "posterior_mean": mean.tolist(),
            "hdi_prob": HDI_PROB,
            "hdi_low": hdi_low.tolist(),
            "hdi_high": hdi_high.tolist(),
            "uncertain": uncertain,
            "num_uncertain": len(uncertain),
        }
        if stability.get("available"):
            entry["run_keep_share"] = stability["sites"][site.name]["keep_frequency"]
        out[site.name] = entry
        total += site.size
        total_uncertain += len(uncertain)
        arrays["active_share"][site.name] = active.mean(-1)
        arrays["theta"][site.name] = theta[0]
        arrays["plan_keep"][site.name] = keep
        arrays["plan_kept_share"][site.name] = np.array([r.plan[site.name].kept / site.size for r in runs])
    summary = {
        "sites": out,
        "total": {
            "structures": total,
            "kept": sum(v["kept"] for v in out.values()),
            "num_uncertain": total_uncertain,
        },
        "active_threshold": ACTIVE_THRESHOLD,
        "uncertain_range": list(UNCERTAIN_RANGE),
        "keep_probability_definition": (
            "share of the first run's posterior draws with theta > 2^-8 (the upper end of BMRS_U-8's reduced "
            "region); rule-agnostic proxy for the posterior's preference to keep the structure"
        ),
    }
    return summary, arrays


def _approximate_loo(dt, runs: Sequence[RunArtifacts], train: TensorSplit, batch_size: int) -> dict:
    """ArviZ's ``loo_approximate_posterior`` on the report's DataTree, where every run has posterior densities."""
    from .approximation import approximate_loo

    draws = int(dt.posterior.sizes["draw"])
    if draws < MIN_PSIS_DRAWS:  # Pareto smoothing needs a tail of draws to fit; ArviZ fails with an IndexError
        return {"available": False, "reason": f"needs at least {MIN_PSIS_DRAWS} posterior draws per run (got {draws})"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            elpd = approximate_loo(dt, [(r.gated, r.posterior) for r in runs], train, batch_size)
    except ValueError as e:
        return {"available": False, "reason": str(e)}
    return {"available": True, "elpd": float(elpd.elpd), "se": float(elpd.se), "p": float(elpd.p)}


def _khat(
    run: RunArtifacts, train: TensorSplit, num_draws: int, batch_size: int, seed: int
) -> tuple[dict, np.ndarray | None]:
    """PSIS k-hat of the first run's variational posterior and the log ratios (``None`` if unavailable)."""
    if isinstance(run.guide, SVGD):
        reason = "SVGD particles have no density q(theta), so importance ratios and PSIS k-hat do not apply"
        return {"available": False, "reason": reason, "num_draws": num_draws}, None
    q = run.guide if isinstance(run.guide, TruncatedLogNormalGuide) else run.posterior
    try:
        with _seeded(seed, _device(run.gated)):
            log_w = log_importance_ratios(run.gated, q, train, num_draws=num_draws, batch_size=batch_size)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            k = pareto_khat(log_w)
    except ValueError as e:
        return {"available": False, "reason": str(e), "num_draws": num_draws}, None
    return {
        "available": True,
        "khat": k,
        "interpretation": interpret_khat(k),
        "num_draws": int(log_w.shape[0]),
        "ess_of_weights": importance_ess(log_w),
        "ess_note": "importance-sampling efficiency (sum w)^2 / sum w^2 of q as a proposal, not an MCMC ESS",
        "threshold_good": KHAT_GOOD,
        "threshold_bad": KHAT_BAD,
        "proposal": type(q).__name__,
        "warnings": sorted({str(w.message) for w in caught}),
    }, log_w.detach().to("cpu", torch.float64).numpy()


# -- figures ---------------------------------------------------------------------------------------------------

_COLORS = {"dense_network": "#7f7f7f", "dense_bayesian": "#1f77b4", "pruned": "#d62728", "pruned_ensemble": "#ff7f0e"}


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    """The figure as PNG bytes (Agg canvas; the figure is cleared afterwards, it never touches pyplot)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110)
    finally:
        fig.clear()
    return buf.getvalue()


def _compared_models(d: Diagnostics) -> list[str]:
    """The two predictors of the figures: the dense reference (dense Bayesian, else the dense network) and the
    pruned network."""
    probs = d.arrays["probs"]
    reference = next((m for m in ("dense_bayesian", "dense_network") if m in probs), None)
    return [m for m in (reference, "pruned") if m is not None]


def _reliability_figure(d: Diagnostics) -> bytes:
    models = _compared_models(d)
    fig = _new_figure(7.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="perfect calibration")
    width = 1.0 / d.summary["setup"]["n_bins"] / (len(models) + 0.5)
    for j, m in enumerate(models):
        r = d.arrays["reliability"][m]
        nonempty = r["count"] > 0
        ece = d.summary["models"][m]["ece"]
        label = f"{_MODEL_LABELS[m]} (ECE {_fmt(ece, 3)})"
        top.plot(r["confidence"][nonempty], r["accuracy"][nonempty], "o-", color=_COLORS[m], label=label)
        bottom.bar(
            r["bin_lower"] + (j + 0.25) * width,
            r["count"],
            width=width,
            align="edge",
            color=_COLORS[m],
            label=_MODEL_LABELS[m],
        )
    n = len(d.arrays["labels"])
    top.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        ylabel="accuracy in bin (fraction correct)",
        title=f"Reliability diagram, test split (N = {n}, {d.summary['setup']['n_bins']} equal-width bins)",
    )
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    bottom.set(xlabel="confidence = max class probability", ylabel="examples per bin (count)")
    bottom.legend(loc="upper right", fontsize="small")
    bottom.grid(alpha=0.3, axis="y")
    return _png(fig)


def _accuracy_coverage_figure(d: Diagnostics) -> bytes:
    fig = _new_figure(7.0, 4.8)
    ax = fig.subplots()
    for m in _compared_models(d):
        cov, acc = d.arrays["accuracy_coverage"][m]
        area = d.summary["models"][m]["area_under_accuracy_coverage"]
        ax.plot(cov, acc, color=_COLORS[m], lw=2, label=f"{_MODEL_LABELS[m]} (area {_fmt(area, 4)})")
    ax.set(
        xlim=(0, 1),
        xlabel="coverage (fraction of test examples kept, most confident first)",
        ylabel="accuracy on kept examples (fraction)",
        title="Selective prediction: accuracy vs coverage (test split)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _png(fig)


def _forest_figure(d: Diagnostics) -> bytes:
    sites = list(d.arrays["active_share"])
    seeds = d.summary["setup"]["seeds"]
    fig = _new_figure(7.5, 1.2 + 0.9 * len(sites) * max(1, min(len(seeds), 4)) ** 0.5)
    ax = fig.subplots()
    colors = [f"C{i % 10}" for i in range(len(seeds))]
    step = 0.7 / max(len(seeds), 1)
    for row, name in enumerate(sites):
        share = d.arrays["active_share"][name]  # [chain, draw]
        for c in range(share.shape[0]):
            y = row + 0.35 - (c + 0.5) * step
            s = share[c]
            lo94, lo50, hi50, hi94 = np.quantile(s, [0.03, 0.25, 0.75, 0.97])
            kw = {"label": f"seed {seeds[c]}: posterior mean, 50 % / 94 % intervals"} if row == 0 else {}
            ax.plot([lo94, hi94], [y, y], color=colors[c], lw=1.2)
            ax.plot([lo50, hi50], [y, y], color=colors[c], lw=4, solid_capstyle="butt")
            ax.plot([s.mean()], [y], "o", color=colors[c], ms=6, mec="white", **kw)
            kw = {"label": f"seed {seeds[c]}: share kept by the plan"} if row == 0 else {}
            plan_share = d.arrays["plan_kept_share"][name][c]
            ax.plot([plan_share], [y + 0.3 * step], "^", color=colors[c], mec="black", mew=0.6, ms=8, **kw)
    info = {s["name"]: s for s in d.summary["setup"]["gate_sites"]}
    ax.set_yticks(range(len(sites)), [f"{n}\n({info[n]['size']} {info[n]['kind']}s)" for n in sites])
    ax.set_ylim(len(sites) - 0.5, -0.5)
    ax.set_xlim(-0.02, 1.02)
    ax.set(
        xlabel=r"share of the layer's structures with an active gate, $\theta > 2^{-8}$ (fraction)",
        ylabel="gate site (layer)",
        title="Per-layer keep probability: share of active gates per posterior draw",
    )
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(len(seeds), 2), fontsize="small")
    return _png(fig)


def _gate_figure(d: Diagnostics) -> bytes:
    sites = list(d.arrays["theta"])
    ncols = min(len(sites), 3)
    nrows = math.ceil(len(sites) / ncols)
    fig = _new_figure(4.6 * ncols, 3.8 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    threshold = math.log10(ACTIVE_THRESHOLD)
    for ax, name in zip(axes, sites, strict=False):
        log_theta = np.log10(np.clip(d.arrays["theta"][name], 1e-30, None))
        keep = d.arrays["plan_keep"][name]
        lo = min(float(log_theta.min()), threshold) - 0.2
        hi = max(float(log_theta.max()), 0.0) + 0.05
        bins = np.linspace(lo, hi, 40)
        for mask, label, color in ((keep, "kept", "#1f77b4"), (~keep, "pruned", "#d62728")):
            n = int(mask.sum())
            if n:
                plural = "s" if n > 1 else ""
                values = log_theta[:, mask].ravel()
                label = f"{label} by the plan ({n} structure{plural})"
                ax.hist(values, bins=bins, density=True, alpha=0.55, color=color, label=label)
            else:
                ax.plot([], [], color=color, lw=6, alpha=0.55, label=f"{label} by the plan (none)")
        ax.axvline(threshold, color="black", ls="--", lw=1, label=r"activity threshold $\theta = 2^{-8}$")
        ax.set(
            xlabel=r"$\log_{10}\,\theta$ (gate value, dimensionless)",
            ylabel="density of posterior draws (per decade)",
            title=f"{name}: {int(keep.sum())}/{keep.size} kept",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    for ax in axes[len(sites) :]:
        ax.set_visible(False)
    seed = d.summary["setup"]["seeds"][0]
    fig.suptitle(f"Gate posteriors of seed {seed}: " + r"$\log_{10}\,\theta$ draws, kept vs pruned")
    return _png(fig)


def _khat_figure(d: Diagnostics) -> bytes:
    kh = d.summary["khat"]
    fig = _new_figure(7.5, 6.0)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1])
    log_w = d.arrays.get("log_weights")
    if log_w is None or not kh.get("available"):
        # wrapped by hand: matplotlib's wrap=True collapses constrained-layout axes for long reasons
        reason = textwrap.fill(str(kh.get("reason", "")), 70)
        # in axes coordinates: the empty axes' data limits are not [0, 1], and a text placed outside them in
        # data coordinates makes the constrained layout collapse the axes
        top.text(
            0.5,
            0.5,
            f"k-hat unavailable:\n{reason}",
            transform=top.transAxes,
            ha="center",
            va="center",
            fontsize="small",
        )
        top.plot([], [], label="no importance weights")
        top.set(
            xlabel="rank of the weight (largest first)", ylabel="normalised importance weight", xticks=[], yticks=[]
        )
        top.legend()
    else:
        finite = log_w[np.isfinite(log_w)]
        w = np.exp(log_w - finite.max())
        w = np.sort(w / w.sum())[::-1]
        s = w.size
        rank = np.arange(1, s + 1)
        top.loglog(rank, np.clip(w, 1e-300, None), ".-", color="#1f77b4", label=f"sorted weights (S = {s} draws of q)")
        top.axhline(1.0 / s, color="black", ls="--", lw=1, label="1/S: equal weights (q = posterior)")
        tail = max(int(3 * math.sqrt(s)) if s > 225 else s // 5, 1)
        top.axvspan(1, tail, color="#ff7f0e", alpha=0.12, label=f"Pareto-fitted tail ({tail} largest)")
        top.set(
            xlabel="rank of the weight (1 = largest)",
            ylabel="normalised importance weight w / Σw",
            title="PSIS diagnostic of the variational posterior (first run)",
        )
        top.grid(alpha=0.3, which="both")
        top.legend(loc="lower left", fontsize="small")
        top.text(
            0.98,
            0.95,
            r"$\hat{k}$" + f" = {_fmt(kh.get('khat'), 2)}\n"
            f"importance-sampling ESS = {_fmt(kh.get('ess_of_weights'), 1)} of {s}",
            transform=top.transAxes,
            ha="right",
            va="top",
            bbox={"boxstyle": "round", "fc": "white", "alpha": 0.9},
        )
    k = kh.get("khat") if kh.get("available") else None
    kmin = min(-0.2, (k - 0.1) if k is not None else 0.0)
    kmax = max(1.2, (k + 0.1) if k is not None else 0.0)
    bottom.axvspan(kmin, KHAT_GOOD, color="#2ca02c", alpha=0.3, label=f"reliable (< {KHAT_GOOD})")
    bottom.axvspan(KHAT_GOOD, KHAT_BAD, color="#ff7f0e", alpha=0.3, label=f"usable with care ({KHAT_GOOD}-{KHAT_BAD})")
    bottom.axvspan(KHAT_BAD, kmax, color="#d62728", alpha=0.3, label=f"unreliable (> {KHAT_BAD})")
    if k is not None:
        bottom.plot([k], [0.5], "kv", ms=12, label=r"$\hat{k}$" + f" = {k:.2f}")
    elif kh.get("available"):  # -inf: constant ratios
        bottom.annotate(r"$\hat{k} = -\infty$ (q = posterior)", (kmin, 0.5), xytext=(kmin + 0.05, 0.5), va="center")
    bottom.set(xlim=(kmin, kmax), ylim=(0, 1), yticks=[], xlabel=r"Pareto shape $\hat{k}$ (dimensionless)")
    bottom.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    return _png(fig)


def _block_figure(d: Diagnostics) -> bytes:
    blocks = d.summary["blocks"]
    fig = _new_figure(max(7.0, 2.0 + 0.5 * len(blocks["rows"])), 5.6)
    plot_block_drops(fig.subplots(), blocks)
    return _png(fig)


_FIGURE_FUNCTIONS = {
    "reliability_diagram.png": _reliability_figure,
    "keep_probability_forest.png": _forest_figure,
    "gate_posteriors.png": _gate_figure,
    "accuracy_coverage.png": _accuracy_coverage_figure,
    "khat.png": _khat_figure,
    BLOCK_FIGURE: _block_figure,
}


def _has_gates(d: Diagnostics) -> bool:
    return d.summary["setup"].get("has_gates", True)  # summaries from before SR-init all had gates


def _figure_names(d: Diagnostics) -> list[str]:
    """The figures of this report: :data:`FIGURES` (less :data:`GATE_FIGURES` without a gate posterior), then
    :data:`BLOCK_FIGURE` with a depth stage."""
    names = [n for n in FIGURES if _has_gates(d) or n not in GATE_FIGURES]
    return names + ([BLOCK_FIGURE] if "blocks" in d.summary else [])


def _render_figures(d: Diagnostics) -> dict[str, bytes]:
    return {name: _FIGURE_FUNCTIONS[name](d) for name in _figure_names(d)}


# -- report.md -------------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


_TABLE_ROWS = (
    ("accuracy", "Accuracy ↑"),
    ("nll", "NLL (nats) ↓"),
    ("brier", "Brier ↓"),
    ("ece", "ECE ↓"),
    ("adaptive_ece", "Adaptive ECE ↓"),
    ("mean_entropy", "Mean predictive entropy (nats)"),
    ("mean_mutual_information", "Mutual information (nats, Bayesian only)"),
    ("misclassification_auroc", "Misclassification AUROC ↑"),
    ("area_under_accuracy_coverage", "Area under accuracy–coverage ↑"),
)


def _not_applicable(heading: str) -> list[str]:
    return [f"## {heading}", "", f"Not applicable: SR-init fits no gate posterior ({_NO_GATES_WHY[heading]}).", ""]


#: What each gate-posterior section would have shown, for its "not applicable" line in a report of SR-init alone.
_NO_GATES_WHY = {
    "Accuracy across posterior draws": "there are no posterior draws of gates to evaluate",
    "Variational approximation (PSIS k-hat)": "no variational distribution q, so no PSIS k̂ and no approximate LOO",
    "Uncertain pruning decisions": (
        "no keep probabilities; the uncertainty of the block decisions is in the section Block sensitivity (SR-init)"
    ),
}


def _md_setup(d: Diagnostics) -> list[str]:
    s = d.summary
    setup = s["setup"]
    sizes = setup["sizes"]
    lines = [f"## {_SETUP}", ""]
    if _has_gates(d):
        lines.append(f"- Method: `{setup['method']}`; guide `{setup['guide']}`; prior `{setup['prior']}`")
    else:
        lines.append(
            f"- Method: `{setup['method']}` (SR-init: depth pruning by re-initialising residual blocks; no gate "
            "posterior, so no dense Bayesian model and no `posterior.nc`)"
        )
    lines += [
        f"- Seeds{' (runs = ArviZ chains)' if _has_gates(d) else ''}: {', '.join(str(x) for x in setup['seeds'])}",
        f"- Data set: `{setup['data_set']}` ({setup['num_classes']} classes); train {sizes['train']}, "
        f"validation {sizes['val']}, test {sizes['test']} examples",
    ]
    if "blocks" in s:
        b = s["blocks"]
        t = b["totals"]
        where = "before the width method, which then pruned the shallower network" if _has_gates(d) else "alone"
        lines.append(
            f"- Depth stage (SR-init, {where}): {t['blocks']} residual blocks, {t['removable']} removable, "
            f"{t['fixed']} fixed; removed per run: "
            + "; ".join(f"{k}: " + (", ".join(f"`{p}`" for p in v) or "none") for k, v in b["removed_per_run"].items())
        )
    if not _has_gates(d):
        lines += [
            "- Blocks kept per stage: " + "; ".join(f"{k}: {v}" for k, v in setup["kept"].items()),
            f"- Base seed {setup['seed']}",
            "",
        ]
        return lines
    lines += [
        "- Gate sites: " + ", ".join(f"`{g['name']}` ({g['size']} {g['kind']}s)" for g in setup["gate_sites"]),
        "- Kept structures per layer: " + "; ".join(f"{k}: {v}" for k, v in setup["kept"].items()),
        f"- Posterior draws: {setup['num_draws_per_run']} per run; PSIS draws: {setup['khat_draws']}; "
        f"base seed {setup['seed']}",
    ]
    if setup.get("particles"):
        lines.append(
            f"- The posterior is {setup['num_draws_per_run']} SVGD particles per run, each a sub-network; the dense "
            "Bayesian model is their ensemble, a structure's keep probability its inclusion probability."
        )
    masked = {k: v for k, v in setup["masked_structures"].items() if v}
    if masked:
        lines.append(
            "- Gates fixed at zero during training (continuous schedule), also zero in the dense Bayesian model: "
            + "; ".join(f"{k}: " + ", ".join(f"`{n}` {c}" for n, c in v.items()) for k, v in masked.items())
        )
    lines.append("")
    return lines


def _md_performance(d: Diagnostics) -> list[str]:
    s = d.summary
    models = list(s["models"])
    lines = [f"## {_PERFORMANCE}", ""]
    lines.append(f"Test split, {s['setup']['sizes']['test']} examples; ↑ higher is better, ↓ lower is better.")
    lines.append("")
    lines.append("| Metric | " + " | ".join(_MODEL_LABELS[m] for m in models) + " |")
    lines.append("|---|" + "---:|" * len(models))
    for key, label in _TABLE_ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(s["models"][m].get(key)) for m in models) + " |")
    ensemble = " (pruned ensemble: mean over the runs' pruned networks)." if "pruned_ensemble" in models else "."
    if _has_gates(d):
        lines += [
            "",
            "Dense Bayesian: mean of the class probabilities over every posterior draw of every run. Pruned: the "
            "first run's pruned, fine-tuned network" + ensemble,
            "",
        ]
    else:
        lines += [
            "",
            "Dense network: the trained network before SR-init removed blocks. Pruned: the first run's shallower, "
            "fine-tuned network" + ensemble + " There is no dense Bayesian model: SR-init fits no gate posterior.",
            "",
        ]
    return lines


def _md_draws(d: Diagnostics) -> list[str]:
    s = d.summary
    if not _has_gates(d):
        return _not_applicable(_DRAWS)
    dr = s["draws"]
    what = "particle (sub-network)" if s["setup"].get("particles") else "posterior draw"
    return [
        f"## {_DRAWS}",
        "",
        f"Test accuracy of each {what} of the gates, {dr['num_draws']} in all (every run), the dense Bayesian "
        "model being their average.",
        "",
        "| Quantity | Value |",
        "|---|---:|",
        f"| Mean accuracy of one draw | {_fmt(dr['mean'])} (95 % bootstrap interval over draws and test examples "
        f"[{_fmt(dr['mean_low'])}, {_fmt(dr['mean_high'])}]) |",
        f"| Standard deviation across draws | {_fmt(dr['sd'])} |",
        f"| Central 95 % of the draws | [{_fmt(dr['q025'])}, {_fmt(dr['q975'])}] |",
        f"| Worst / best draw | {_fmt(dr['min'])} / {_fmt(dr['max'])} |",
        f"| Accuracy of their average (dense Bayesian) | {_fmt(s['models']['dense_bayesian']['accuracy'])} |",
        f"| ECE of their average (dense Bayesian) | {_fmt(s['models']['dense_bayesian']['ece'])} |",
        "",
    ]


def _md_comparison(d: Diagnostics) -> list[str]:
    c = d.summary["comparison"]
    lines = [f"## {_COMPARISON}", ""]
    if not _has_gates(d):
        na = "Not applicable: SR-init fits no gate posterior, so there is no dense Bayesian model."
        if not c.get("available", True):
            return lines + [f"{na} Dense network vs pruned is not computed either: {c['reason']}.", ""]
        lines += [f"{na} The table compares the dense network (before block removal) with the pruned one instead.", ""]
    reference = _MODEL_LABELS[c.get("reference", "dense_bayesian")]
    lines += [
        "| Quantity | Value |",
        "|---|---:|",
        f"| Agreement of the predicted classes | {_fmt(c['agreement'])} |",
        f"| Mean KL({reference} ‖ pruned) (nats) | {_fmt(c['mean_kl'])} |",
        f"| Mean Jensen–Shannon divergence (nats) | {_fmt(c['mean_js'])} |",
        f"| Accuracy difference, pruned − {reference} | {_fmt(c['accuracy_difference'])} "
        f"(95 % bootstrap interval [{_fmt(c['accuracy_difference_low'])}, {_fmt(c['accuracy_difference_high'])}]) |",
        "",
    ]
    return lines


def _md_conformal(d: Diagnostics) -> list[str]:
    lines = [f"## {_CONFORMAL}", ""]
    lines.append(
        "Split-conformal APS sets, calibrated on the validation split with each model's own probabilities, "
        "evaluated on the test split."
    )
    lines += ["", "| Model | Target coverage | Coverage | Mean set size |", "|---|---:|---:|---:|"]
    for m, per_alpha in d.summary["conformal"].items():
        for v in per_alpha.values():
            lines.append(
                f"| {_MODEL_LABELS[m]} | {_fmt(v['target_coverage'], 2)} | {_fmt(v['coverage'])} | "
                f"{_fmt(v['mean_set_size'], 3)} |"
            )
    lines.append("")
    return lines


def _md_khat(d: Diagnostics) -> list[str]:
    if not _has_gates(d):
        return _not_applicable(_KHAT)
    kh = d.summary["khat"]
    lines = [f"## {_KHAT}", ""]
    if kh.get("available"):
        k = kh["khat"]
        lines += [
            f"- Pareto k̂ = **{_fmt(k, 3) if k is not None else '-inf'}** ({kh['num_draws']} draws of q, first run, "
            "training split): " + kh["interpretation"] + ".",
            f"- Thresholds: k̂ < {kh['threshold_good']} reliable, ≤ {kh['threshold_bad']} usable with care, "
            "above unreliable (Yao et al. 2018; Vehtari et al. 2024).",
            f"- Importance-sampling ESS of the normalised weights: {_fmt(kh['ess_of_weights'], 1)} of "
            f"{kh['num_draws']}. This is the efficiency of q as an importance-sampling proposal, "
            "(Σw)²/Σw², **not** an MCMC effective sample size.",
        ]
        if kh.get("warnings"):
            lines.append("- Warnings of the Pareto fit: " + "; ".join(kh["warnings"]))
        loo = kh.get("approximate_loo") or {}
        if loo.get("available"):
            lines.append(
                f"- PSIS-LOO corrected for the approximation (ArviZ `loo_approximate_posterior`, test examples, the "
                f"report's posterior draws): elpd = {_fmt(loo['elpd'], 1)} ± {_fmt(loo['se'], 1)}, "
                f"p_loo = {_fmt(loo['p'], 1)}."
            )
        elif loo:
            lines.append(f"- Approximate-posterior LOO not available: {loo.get('reason', '')}")
    else:
        lines.append(f"k̂ could not be computed: {kh.get('reason', '')}")
    lines.append("")
    return lines


def _md_uncertain(d: Diagnostics, max_uncertain: int) -> list[str]:
    if not _has_gates(d):
        return _not_applicable(_UNCERTAIN)
    st = d.summary["structures"]
    lines = [f"## {_UNCERTAIN}", ""]
    lo, hi = st["uncertain_range"]
    total = st["total"]
    lines += [
        f"Keep probability: share of the first run's posterior draws in which the gate is active, θ > 2⁻⁸ (the "
        "upper end of BMRS_U-8's reduced region), a rule-agnostic proxy. A decision is uncertain if the keep "
        f"probability lies in [{lo}, {hi}] or the plan disagrees with keep probability > 0.5. HDIs are "
        f"{int(round(100 * HDI_PROB))} % highest density intervals of θ.",
        "",
        f"**{total['num_uncertain']} uncertain of {total['structures']} structures** "
        f"({total['kept']} kept by the first run's plan).",
        "",
    ]
    shown = 0
    for name, site in st["sites"].items():
        lines.append(f"- `{name}`: {site['num_uncertain']} uncertain of {site['size']} ({site['kept']} kept)")
        for u in site["uncertain"]:
            if shown >= max_uncertain:
                break
            shown += 1
            decision = "keep" if u["plan_keep"] else "prune"
            lines.append(
                f"  - {site['kind']} {u['index']}: keep probability {_fmt(u['keep_probability'], 2)}, "
                f"plan: {decision}, E[θ] = {_fmt(u['posterior_mean'], 4)}, "
                f"HDI [{u['hdi'][0]:.2e}, {u['hdi'][1]:.2e}]; " + "; ".join(u["reasons"])
            )
    if total["num_uncertain"] > shown:
        lines.append(f"- ... {total['num_uncertain'] - shown} more (all listed in `diagnostics.json`)")
    lines.append("")
    return lines


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")  # a '|' in a reason would split the table cell


def _md_blocks(d: Diagnostics) -> list[str]:
    lines = [f"## {_BLOCKS}", ""]
    if "blocks" not in d.summary:
        return lines + ["Not applicable: the runs have no SR-init depth stage (no residual block was removed).", ""]
    b = d.summary["blocks"]
    setup, totals, rows = b["setup"], b["totals"], b["rows"]
    rule = setup["rule"]
    tau = rule.get("tau")
    level = int(round(100 * setup["interval_level"]))
    boot = "a Bayesian bootstrap (Dirichlet weights" if setup["bootstrap"] == "bayesian" else "a bootstrap (resampling"
    split = split_name(setup["split"])
    lines += [
        f"Each removable residual block of the first run (seed {setup['run_seed']}) was re-initialised "
        f"{setup['num_seeds']} times (`{setup['init']}` initialisation, one seed each) and the accuracy drop measured "
        f"on the {split} split ({setup['num_examples']} examples; never the test split). Baseline {split} "
        f"accuracy of the trained network: {_fmt(setup['baseline_accuracy'])}. Drops are in percentage points "
        f"(pp); the {level} % interval is the central {level} % of {setup['num_draws']} draws of the block's "
        f"expected drop from {boot} on the examples and on the re-initialisations).",
        "",
    ]
    if tau is not None:
        lines.append(f"Rule: remove a block iff P(Δ ≤ τ) ≥ {rule['prob']:g}, with τ = {tau:g} pp.")
    else:
        key, value = next(iter(rule.items()))
        what = "parameters" if key == "params_reduction" else "multiply-accumulates"
        lines.append(
            f"Rule: budget `{key}` = {value:g}: the least sensitive blocks (smallest mean drop) removed until at "
            f"least {_fmt(100 * value, 1)} % of the network's {what} are gone."
        )
    pct = {k: _fmt(100 * v, 1) if v is not None else "n/a" for k, v in totals.items() if k.endswith("_fraction")}
    lines += [
        "",
        f"**Removed {totals['removed']} of {totals['removable']} removable blocks** ({totals['fixed']} fixed): "
        f"{totals['removed_params']} parameters ({pct['removed_params_fraction']} % of the network), "
        f"{totals['removed_macs']} MACs per example ({pct['removed_macs_fraction']} %).",
        "",
    ]
    several = b["num_runs"] > 1
    header = ["Block", "Stage", "Params", "MACs", "Mean drop (pp)", "SD over seeds (pp)", f"{level} % interval (pp)"]
    header += ["P(Δ ≤ τ)"] if tau is not None else []
    header += ["Decision (first run)"] + (["Share of runs removing it"] if several else [])
    align = "|---|---|" + "---:|" * (len(header) - 3 - several) + "---|" + "---:|" * several
    lines += ["| " + " | ".join(header) + " |", align]
    for r in rows:
        cells = [f"`{r['block']}`", f"`{r['stage']}`" if r["stage"] else "(root)", str(r["params"]), str(r["macs"])]
        if r["decision"] == "fixed":
            cells += ["—", "—", "—"] + (["—"] if tau is not None else [])
            cells.append(_md_cell(f"fixed: {r['reason']}"))
        else:
            cells += [_fmt(r["mean"], 2), _fmt(r["sd"], 2), f"[{_fmt(r['low'], 2)}, {_fmt(r['high'], 2)}]"]
            cells += [_fmt(r["p_below"], 3)] if tau is not None else []
            cells.append(r["decision"] + (" (uncertain)" if r.get("uncertain") else ""))
        if several:
            cells.append(_fmt(r["run_removed_share"], 2) if r["decision"] != "fixed" else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if tau is not None:
        lo, hi = setup["uncertain_range"]
        lines += [
            f"{totals['uncertain']} block decision(s) marked uncertain: P(Δ ≤ τ) in [{lo}, {hi}], the posterior "
            "does not settle on which side of τ the expected drop lies.",
            "",
        ]
    lines += [
        "Fixed blocks are never candidates: their shortcut changes the shape (stride or projection), so they cannot "
        "become the identity.",
        "",
    ]
    return lines


def _md_stability(d: Diagnostics) -> list[str]:
    stab = d.summary["stability"]
    lines = [f"## {_STABILITY}", ""]
    if stab.get("available"):
        t = stab["total"]
        what = "blocks" if not _has_gates(d) else "structures"
        lines += [
            f"{stab['num_runs']} runs. Mean Jaccard index of the kept sets: {_fmt(t['jaccard_mean'], 3)}; "
            f"{t['num_flipping']} of {t['structures']} {what} flip between seeds "
            f"({_fmt(100 * t['flip_fraction'], 1)} %).",
            "",
            "| Site | Kept per run | Jaccard mean | Jaccard min | Flipping | Between-run variance share |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, v in stab["sites"].items():
            lines.append(
                f"| `{name}` | {', '.join(str(k) for k in v['kept'])} | {_fmt(v['jaccard_mean'], 3)} | "
                f"{_fmt(v['jaccard_min'], 3)} | {v['num_flipping']} | {_fmt(v['between_run_variance_share'], 3)} |"
            )
        if stab.get("note"):
            lines += ["", stab["note"]]
    else:
        lines.append(f"Not computed: {stab['note']}.")
    if _has_gates(d):
        lines += [
            "",
            "The posterior draws are independent samples of a variational distribution, not Markov chains, and "
            "the chains are independent fits with different seeds; R-hat and MCMC effective sample sizes would "
            "be meaningless and are not shown.",
        ]
    else:
        lines += [
            "",
            "The sites are the stages holding the blocks, the structures the removable blocks; the variance share "
            "is computed on the blocks' mean drops.",
        ]
    lines.append("")
    return lines


_CAPTIONS = {
    "reliability_diagram.png": "Reliability diagram: accuracy vs confidence per bin, with bin counts.",
    "keep_probability_forest.png": "Per-layer share of active gates (θ > 2⁻⁸) per posterior draw, per seed.",
    "gate_posteriors.png": "Posterior draws of log₁₀ θ per layer, kept vs pruned structures.",
    "accuracy_coverage.png": "Accuracy vs coverage when abstaining on the least confident examples.",
    "khat.png": "Sorted normalised importance weights and the PSIS k̂.",
    BLOCK_FIGURE: (
        "SR-init block sensitivity: accuracy drop per residual block in network order (mean, 95 % interval, "
        "per-seed drops), removed vs kept, fixed blocks greyed."
    ),
}


def _md_figures(d: Diagnostics) -> list[str]:
    lines = [f"## {_FIGURES}", ""]
    drawn = _figure_names(d)
    for name in drawn:
        lines += [f"![{_CAPTIONS[name]}](figures/{name})", "", f"*{_CAPTIONS[name]}*", ""]
    missing = [n for n in FIGURES if n not in drawn]
    if missing:
        lines += [
            f"Not drawn ({_NO_GATES}): " + ", ".join(f"`{n}` ({_CAPTIONS[n].rstrip('.')})" for n in missing) + ".",
            "",
        ]
    return lines


(
    _SETUP,
    _PERFORMANCE,
    _DRAWS,
    _COMPARISON,
    _CONFORMAL,
    _KHAT,
    _UNCERTAIN,
    _BLOCKS,
    _STABILITY,
    _FIGURES,
) = SECTIONS


def _markdown(d: Diagnostics, max_uncertain: int) -> str:
    lines = [f"# Reliability report: {d.summary['setup']['method']}", ""]
    sections = {
        _SETUP: _md_setup,
        _PERFORMANCE: _md_performance,
        _DRAWS: _md_draws,
        _COMPARISON: _md_comparison,
        _CONFORMAL: _md_conformal,
        _KHAT: _md_khat,
        _UNCERTAIN: lambda d: _md_uncertain(d, max_uncertain),
        _BLOCKS: _md_blocks,
        _STABILITY: _md_stability,
        _FIGURES: _md_figures,
    }
    for heading in SECTIONS:
        lines += sections[heading](d)
    return "\n".join(lines)


# -- write_report ----------------------------------------------------------------------------------------------


def write_report(
    diagnostics_or_runs: Diagnostics | Sequence[RunArtifacts],
    data: DataSplits | None,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    num_draws: int = 100,
    khat_draws: int = 500,
    batch_size: int = 512,
    seed: int = 0,
    max_uncertain: int = 50,
) -> dict[str, Path]:
    """Write the reliability report into ``out_dir`` (created if needed); see the module docstring for the files.

    Everything is computed and rendered in memory first; then, unless ``force``, nothing is written if any of
    the files exists. Every file is written atomically (a temporary file in the same folder, then
    :func:`os.replace`). Figures are drawn on matplotlib's Agg canvas without pyplot (no global state).

    :param diagnostics_or_runs: a :class:`Diagnostics` from :func:`diagnose`, or the runs to diagnose (with
        ``data`` and the keyword arguments of :func:`diagnose`).
    :param data: the data splits; only needed when runs are given.
    :param out_dir: the output folder.
    :param force: overwrite existing files.
    :param max_uncertain: at most this many uncertain decisions are listed in ``report.md`` (all are in the JSON).
    :returns: the written files, relative name (``"report.md"``, ``"figures/khat.png"``...) -> path.
    :raises FileExistsError: naming the first existing file, if not ``force`` (nothing is written).
    :raises ValueError: for empty runs, runs with different gate sites or residual blocks, runs mixing SR-init
        and other methods, or runs without ``data``.
    """
    if isinstance(diagnostics_or_runs, Diagnostics):
        diagnostics = diagnostics_or_runs
    else:
        if data is None:
            raise ValueError("data is required when write_report is given runs instead of Diagnostics")
        diagnostics = diagnose(
            diagnostics_or_runs, data, num_draws=num_draws, khat_draws=khat_draws, batch_size=batch_size, seed=seed
        )
    out = Path(out_dir)
    # SR-init alone has no gate posterior: no posterior.nc and no gate figures
    files = ("report.md", "diagnostics.json") + (("posterior.nc",) if diagnostics.datatree is not None else ())
    targets = {name: out / name for name in files}
    targets.update({f"figures/{name}": out / "figures" / name for name in _figure_names(diagnostics)})
    if not force:
        for path in targets.values():
            if path.exists():
                raise FileExistsError(f"{path} exists; pass force=True to overwrite it")
    figures = _render_figures(diagnostics)
    text = _markdown(diagnostics, max_uncertain)
    summary_json = json.dumps(diagnostics.summary, indent=1, allow_nan=False, ensure_ascii=False)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        write_atomic(targets[f"figures/{name}"], png)
    if diagnostics.datatree is not None:
        save_datatree(diagnostics.datatree, targets["posterior.nc"], force=force)
    atomic_write_text(targets["diagnostics.json"], summary_json + "\n")
    atomic_write_text(targets["report.md"], text)
    return targets
