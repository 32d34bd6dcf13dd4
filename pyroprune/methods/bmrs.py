"""BMRS: Bayesian model reduction for structured pruning (Wright, Igel & Selvan, NeurIPS 2024).

For each gate, the change in log-evidence when the log-uniform prior :math:`p` on :math:`x=\\log\\theta \\in
[a,b]` is replaced by a reduced prior :math:`\\tilde p` that puts the gate at (or near) zero is

.. math::

    \\Delta F = \\log \\int q(x)\\, \\frac{\\tilde p(x)}{p(x)}\\, dx,

and the structure is pruned iff :math:`\\Delta F \\ge 0` -- the reduced model is at least as probable, so no
threshold is tuned. The closed forms are in :mod:`pyroprune.reduction`; for posteriors that are not truncated
normals the same quantity is computed by quadrature (BMRS_U, or BMRS_N with ``reduced_scale > 0``), by the
exact limit :math:`\\log[(b-a)\\,q(x=a)]` (BMRS_N with a spike), or by Monte Carlo over draws (BMRS_U).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from ..distributions import TruncatedNormal
from ..plan import PruningPlan
from ..posterior import GatePosterior
from ..reduction import delta_f_bmrs_n, delta_f_bmrs_u, delta_f_quadrature
from ._common import plan_from_scores

__all__ = ["bmrs_n", "bmrs_u"]

_LOG2 = math.log(2.0)


def bmrs_n(
    posterior: GatePosterior, gated=None, *, include_log_2pi: bool = True, reduced_scale: float = 0.0
) -> PruningPlan:
    """BMRS_N: reduced prior :math:`\\tilde p = \\mathcal N_{[a,b]}(a, \\sigma_p^2)`, by default its
    :math:`\\sigma_p \\to 0` limit, :math:`\\Delta F = \\log[(b-a)\\, q(x=a)]`.

    :param include_log_2pi: ``False`` reproduces the authors' public code, which drops the
        :math:`-\\tfrac12\\log 2\\pi` term (prunes slightly more).
    :param reduced_scale: :math:`\\sigma_p` (0 = the limit).
    :returns: a plan with ``score`` = :math:`\\Delta F` (prune where :math:`\\ge 0`).
    """
    if reduced_scale < 0:
        raise ValueError(f"'reduced_scale' must be >= 0, got {reduced_scale}")
    a, b = posterior.low, posterior.high
    score = {}
    for site in posterior.sites:
        m = posterior.marginals.get(site.name)
        if isinstance(m, TruncatedNormal):
            df = delta_f_bmrs_n(m.loc, m.scale, a, b, reduced_scale=reduced_scale, include_log_2pi=include_log_2pi)
        elif m is not None and reduced_scale == 0.0:
            at_a = torch.full((site.size,), a, dtype=torch.float64)
            df = math.log(b - a) + m.log_prob(at_a.to(_dtype(m))).double()
            if not include_log_2pi:
                df = df + 0.5 * math.log(2 * math.pi)
        elif m is not None:
            like = torch.zeros((), dtype=_dtype(m))
            prior = dist.Uniform(like + a, like + b)
            reduced = TruncatedNormal(like + a, like + reduced_scale, like + a, like + b)
            df = delta_f_quadrature(m, prior, reduced)
            if not include_log_2pi:
                df = df + 0.5 * math.log(2 * math.pi)
        else:
            raise ValueError(
                f"BMRS_N needs the posterior density of gate site {site.name!r}, but guide "
                f"{posterior.guide_name} gives only draws; use bmrs-u or a guide with known marginals"
            )
        score[site.name] = df
    keep = {k: ~(v >= 0) for k, v in score.items()}
    params = {"include_log_2pi": include_log_2pi, "reduced_scale": reduced_scale}
    return plan_from_scores("bmrs-n", params, posterior, score, keep, {k: -v for k, v in score.items()})


def bmrs_u(posterior: GatePosterior, gated=None, *, k: int = 8) -> PruningPlan:
    """BMRS_U-k: reduced prior log-uniform on :math:`[a', b'] = [\\log 2^{-23}, \\log 2^{-k}]`,
    :math:`\\Delta F = \\log Q([a',b']) - \\log\\frac{b'-a'}{b-a}` with :math:`Q` the posterior mass.

    :param k: 8 or 4 in the paper (any positive integer with :math:`b' > a'` is accepted).
    :returns: a plan with ``score`` = :math:`\\Delta F` (prune where :math:`\\ge 0`).
    """
    if not isinstance(k, int) or isinstance(k, bool) or not 0 < k < 23:
        raise ValueError(f"'k' must be an integer in 1..22 (reduced prior on [log 2^-23, log 2^-k]), got {k!r}")
    a, b = posterior.low, posterior.high
    a_r, b_r = -23 * _LOG2, -k * _LOG2
    score = {}
    for site in posterior.sites:
        m = posterior.marginals.get(site.name)
        if isinstance(m, TruncatedNormal):
            df = delta_f_bmrs_u(m.loc, m.scale, a, b, k=k)
        elif m is not None:
            like = torch.zeros((), dtype=_dtype(m))
            df = delta_f_quadrature(m, dist.Uniform(like + a, like + b), dist.Uniform(like + a_r, like + b_r))
        else:
            x = posterior.samples[site.name].log()
            inside = ((x >= a_r) & (x <= b_r)).double().mean(0)
            df = inside.log() - math.log((b_r - a_r) / (b - a))
        score[site.name] = df
    keep = {name: ~(v >= 0) for name, v in score.items()}
    return plan_from_scores(f"bmrs-u{k}", {"k": k}, posterior, score, keep, {n: -v for n, v in score.items()})


def _dtype(m) -> torch.dtype:
    for name in ("loc", "low"):
        v = getattr(m, name, None)
        if isinstance(v, torch.Tensor):
            return v.dtype
    base = getattr(m, "base_dist", None)
    return _dtype(base) if base is not None else torch.get_default_dtype()
