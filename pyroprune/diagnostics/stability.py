r"""Are the pruning decisions reproducible? Agreement of :class:`~pyroprune.plan.PruningPlan` s across runs.

Run the same method ``R`` times with different seeds (network initialisation, minibatch order, Monte Carlo
noise of SVI) on the same gated architecture and compare the ``R`` plans site by site:

* :func:`jaccard_per_site` -- overlap of the kept sets, :math:`J(A, B) = |A \cap B| / |A \cup B|`
  (Jaccard 1901), for every pair of runs;
* :func:`keep_frequency` / :func:`flipping_structures` -- per structure, the share of runs that keep it, and
  the structures whose decision flips (kept in some runs, pruned in others): the decisions that are not
  determined by the data and the method but by the seed;
* :func:`between_run_variance` -- the share of the variance of the rule's per-structure score that is
  run-to-run disagreement (the complement of a one-way intraclass correlation, Shrout & Fleiss 1979);
* :func:`stability_report` -- all of it, per site, plus totals.

These are agreement statistics of *decisions*, computed from independent runs; they are not convergence
diagnostics of a sampler (no :math:`\hat R`: the runs are not Markov chains targeting one distribution).

Note: structures carry no identity across independently *initialised* networks (hidden unit 3 of one run
need not compute what unit 3 of another does); these statistics are meaningful when the runs start from the
same pretrained weights, the usual pruning setting, and otherwise measure agreement of the layer widths only
through the kept counts.

References
----------
* P. Jaccard (1901), "Étude comparative de la distribution florale dans une portion des Alpes et du Jura",
  Bulletin de la Société Vaudoise des Sciences Naturelles 37.
* P. E. Shrout, J. L. Fleiss (1979), "Intraclass correlations: uses in assessing rater reliability",
  Psychological Bulletin 86(2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..plan import PruningPlan

__all__ = [
    "validate_plans",
    "jaccard_per_site",
    "keep_frequency",
    "flipping_structures",
    "between_run_variance",
    "stability_report",
]


def validate_plans(plans: Sequence[PruningPlan]) -> list[str]:
    """Check that ``plans`` are at least two plans over the same gate sites; return the site names.

    Sites are matched by name (the order within a plan does not matter); every plan must have the same site
    names and, per site, the same size, with one keep entry per structure.

    :raises ValueError: naming the offending plan and site.
    :raises TypeError: for something that is not a :class:`~pyroprune.plan.PruningPlan`.
    """
    plans = list(plans)
    for i, p in enumerate(plans):
        if not isinstance(p, PruningPlan):
            raise TypeError(f"plans[{i}] is a {type(p).__name__}, not a PruningPlan")
    if len(plans) < 2:
        raise ValueError(f"stability needs at least 2 plans (independent runs), got {len(plans)}")
    ref = plans[0]
    names = [sp.site.name for sp in ref.sites]
    if len(set(names)) != len(names):
        raise ValueError(f"plans[0] lists a gate site twice: {names}")
    sizes = {sp.site.name: sp.site.size for sp in ref.sites}
    for i, p in enumerate(plans):
        other = [sp.site.name for sp in p.sites]
        missing, extra = sorted(set(names) - set(other)), sorted(set(other) - set(names))
        if missing or extra or len(other) != len(names):
            raise ValueError(
                f"plans[{i}] has different gate sites than plans[0]: missing {missing}, extra {extra} "
                f"(plans[0]: {names}, plans[{i}]: {other})"
            )
        for sp in p.sites:
            name = sp.site.name
            if sp.site.size != sizes[name]:
                raise ValueError(
                    f"gate site {name!r} has size {sp.site.size} in plans[{i}] but {sizes[name]} in plans[0]"
                )
            if len(sp.keep) != sp.site.size:
                raise ValueError(
                    f"gate site {name!r} in plans[{i}]: {len(sp.keep)} keep entries for {sp.site.size} structures"
                )
    return names


def _keep_matrix(plans: Sequence[PruningPlan], name: str) -> torch.Tensor:
    """``[R, C]`` bool: run ``r`` keeps structure ``c`` of site ``name``."""
    return torch.tensor([[bool(k) for k in p[name].keep] for p in plans], dtype=torch.bool)


def _score_matrix(plans: Sequence[PruningPlan], name: str) -> torch.Tensor:
    rows = []
    for i, p in enumerate(plans):
        sp = p[name]
        if len(sp.score) != sp.site.size:
            raise ValueError(
                f"gate site {name!r} in plans[{i}]: {len(sp.score)} scores for {sp.site.size} structures "
                "(use scores=False to compare the keep decisions)"
            )
        rows.append([float(s) for s in sp.score])
    scores = torch.tensor(rows, dtype=torch.float64)
    if not torch.isfinite(scores).all():
        raise ValueError(
            f"gate site {name!r}: non-finite scores; use scores=False to compare the keep decisions instead"
        )
    return scores


def _pairwise_jaccard(keep: torch.Tensor) -> torch.Tensor:
    """``[R, R]`` Jaccard indices of the rows of a bool matrix, all pairs at once (1 where both are empty)."""
    k = keep.to(torch.float64)
    inter = k @ k.T
    sizes = k.sum(-1)
    union = sizes[:, None] + sizes[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))


def jaccard_per_site(plans: Sequence[PruningPlan]) -> dict[str, dict]:
    r"""Pairwise Jaccard indices of the kept sets, per site.

    .. math::

        J(A, B) = \frac{|A \cap B|}{|A \cup B|}, \qquad J(\emptyset, \emptyset) = 1,

    with :math:`A, B` the structures kept by two runs. 1: identical decisions; 0: disjoint kept sets.

    :returns: per site ``{"mean": mean over the R(R-1)/2 pairs of distinct runs, "min": the worst pair,
        "matrix": the R x R matrix as nested lists (diagonal 1)}``.
    """
    plans = list(plans)
    names = validate_plans(plans)
    out = {}
    for name in names:
        jac = _pairwise_jaccard(_keep_matrix(plans, name))
        r = jac.shape[0]
        iu = torch.triu_indices(r, r, offset=1)
        pairs = jac[iu[0], iu[1]]
        out[name] = {"mean": float(pairs.mean()), "min": float(pairs.min()), "matrix": jac.tolist()}
    return out


def keep_frequency(plans: Sequence[PruningPlan]) -> dict[str, torch.Tensor]:
    """Per site, the share of runs that keep each structure, ``Tensor[C]`` with values in ``[0, 1]``."""
    plans = list(plans)
    names = validate_plans(plans)
    return {name: _keep_matrix(plans, name).to(torch.float64).mean(0) for name in names}


def flipping_structures(plans: Sequence[PruningPlan]) -> dict[str, list[int]]:
    """Per site, the indices of the structures kept in some runs and pruned in others (the unstable decisions).

    A structure with keep frequency strictly between 0 and 1 is flagged: its fate depends on the seed.
    """
    return {name: torch.nonzero((f > 0) & (f < 1)).flatten().tolist() for name, f in keep_frequency(plans).items()}


def between_run_variance(plans: Sequence[PruningPlan], scores: bool = True) -> dict[str, float]:
    r"""Share of the per-structure score variance that is disagreement between runs, per site.

    With :math:`s_{rc}` the rule's score of structure :math:`c` in run :math:`r` (:math:`R` runs, :math:`C`
    structures), :math:`\bar s_c` its mean over runs and :math:`\bar s` the grand mean, the law of total
    variance (population variances) splits

    .. math::

        \underbrace{\frac{1}{RC}\sum_{r,c} (s_{rc} - \bar s)^2}_{V_{\text{total}}}
        = \underbrace{\frac{1}{C}\sum_c \frac{1}{R}\sum_r (s_{rc} - \bar s_c)^2}_{V_{\text{between runs}}}
        + \underbrace{\frac{1}{C}\sum_c (\bar s_c - \bar s)^2}_{V_{\text{between structures}}},

    and the statistic is :math:`V_{\text{between runs}} / V_{\text{total}} \in [0, 1]`: the variance across
    runs, averaged over structures, as a share of the total. It is :math:`1 - \mathrm{ICC}` for a one-way
    intraclass correlation with structures as the groups and runs as the repeated measurements.

    * 0 -- every run gives every structure the same score: the ranking the rule thresholds is reproducible.
    * small (say < 0.1) -- the runs agree on which structures score high or low; flips, if any, are
      structures near the threshold.
    * near 1 -- the seed explains the scores as much as the structure does: the rule's ranking is noise.

    The share is invariant to rescaling the scores, so it can be compared between sites and methods. It is not
    :math:`\hat R`: the runs are independent fits, not chains of one sampler.

    :param scores: use the rules' per-structure ``score`` (default); ``False`` uses the 0/1 keep decisions
        (then :math:`V_{\text{between runs}}` is the mean Bernoulli variance :math:`f_c (1 - f_c)` of the keep
        frequencies).
    :returns: per site the share; 0 when the scores do not vary at all (:math:`V_{\text{total}} = 0`).
    :raises ValueError: for non-finite scores or a score list of the wrong length.
    """
    plans = list(plans)
    names = validate_plans(plans)
    out = {}
    for name in names:
        s = _score_matrix(plans, name) if scores else _keep_matrix(plans, name).to(torch.float64)
        total = s.var(correction=0)
        between_runs = s.var(dim=0, correction=0).mean()
        out[name] = float(between_runs / total) if float(total) > 0 else 0.0
    return out


def stability_report(plans: Sequence[PruningPlan], scores: bool = True) -> dict:
    """Decision stability of ``R >= 2`` runs of one method, per site and in total.

    :returns: ``{"num_runs", "methods", "sites": {name: {"size", "kept" (per run), "jaccard_mean",
        "jaccard_min", "jaccard_matrix", "keep_frequency" (list), "flipping" (indices), "num_flipping",
        "between_run_variance_share"}}, "total": {"structures", "num_flipping", "flip_fraction",
        "jaccard_mean"}}``. ``methods`` lists the distinct method names (one when the runs are of the same
        method, as intended); ``total.jaccard_mean`` is the mean over sites of the per-site means. See
        :func:`jaccard_per_site`, :func:`keep_frequency`, :func:`flipping_structures` and
        :func:`between_run_variance`.
    :raises ValueError: for fewer than 2 plans or plans over different sites (naming the mismatch).
    """
    plans = list(plans)
    names = validate_plans(plans)
    jac = jaccard_per_site(plans)
    freq = keep_frequency(plans)
    flips = flipping_structures(plans)
    share = between_run_variance(plans, scores=scores)
    sites = {}
    for name in names:
        sites[name] = {
            "size": plans[0][name].site.size,
            "kept": [p[name].kept for p in plans],
            "jaccard_mean": jac[name]["mean"],
            "jaccard_min": jac[name]["min"],
            "jaccard_matrix": jac[name]["matrix"],
            "keep_frequency": freq[name].tolist(),
            "flipping": flips[name],
            "num_flipping": len(flips[name]),
            "between_run_variance_share": share[name],
        }
    structures = sum(v["size"] for v in sites.values())
    num_flipping = sum(v["num_flipping"] for v in sites.values())
    return {
        "num_runs": len(plans),
        "methods": sorted({p.method for p in plans}),
        "sites": sites,
        "total": {
            "structures": structures,
            "num_flipping": num_flipping,
            "flip_fraction": num_flipping / structures if structures else 0.0,
            "jaccard_mean": sum(v["jaccard_mean"] for v in sites.values()) / len(sites),
        },
    }
