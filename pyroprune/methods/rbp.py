r"""RBP's decision rules (Zhou et al. 2018, "Network Compression via Recursive Bayesian Pruning"; ICCV 2019,
"Accelerate CNN via Recursive Bayesian Pruning") and the schedule of the Dirac-like prior's width.

The gates are real-valued Gaussian dropout noise, :math:`q(\theta_c) = \mathcal N(\mu_c, \sigma_c^2)`
(:class:`~pyroprune.guides.NormalNoiseGuide`), fitted under the Dirac-like prior :math:`p_\varepsilon =
\mathcal N(0, \varepsilon^2)` (:class:`~pyroprune.distributions.DiracLike`). Two rules:

* ``rbp`` -- the paper's "tiny noise" rule: prune iff :math:`|E_q[\theta_c]| = |\mu_c| < \tau` (``threshold``);
* ``rbp-bmr`` -- threshold-free Bayesian model reduction against the spike :math:`\tilde p = \mathcal N(0,
  \varepsilon_s^2)`: prune iff :math:`\Delta F = \log E_q[\tilde p(\theta)/p_{\varepsilon_f}(\theta)] \ge 0`
  (closed form :func:`~pyroprune.reduction.delta_f_dirac_like`).

The recursive, layer-by-layer fit that produces the posteriors is :func:`pyroprune.infer.recursive.fit_recursive`;
the whole model is written down in ``docs/methods/rbp.md``.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..distributions import DiracLike, _check_eps
from ..plan import PruningPlan
from ..posterior import GatePosterior
from ..reduction import delta_f_dirac_like, delta_f_quadrature
from ._common import plan_from_scores

__all__ = ["EPS_SCHEDULES", "eps_schedule", "rbp_bmr", "rbp_threshold"]

#: Kinds of :func:`eps_schedule`.
EPS_SCHEDULES = ("geometric", "constant")


def eps_schedule(eps_start: float, eps_end: float | None, epochs: int, kind: str = "geometric") -> list[float]:
    r"""The width :math:`\varepsilon_t` of the Dirac-like prior at each epoch :math:`t = 1..T` of one layer's fit.

    * ``"geometric"``: :math:`\varepsilon_t = \varepsilon_0\,(\varepsilon_1/\varepsilon_0)^{(t-1)/(T-1)}` --
      from the wide :math:`\varepsilon_0` (``eps_start``) down to the narrow :math:`\varepsilon_1` (``eps_end``),
      equal steps in :math:`\log\varepsilon`; :math:`T = 1` uses :math:`\varepsilon_1`.
    * ``"constant"``: :math:`\varepsilon_t = \varepsilon_0` (``eps_end`` must be ``None`` or equal).

    The last value is the prior the posterior was fitted under, :math:`\varepsilon_f` of the BMR rule.

    :raises ValueError: one line naming the parameter, for a width that is not finite and > 0, an unknown kind, a
        negative ``epochs`` or a constant schedule given two different widths.
    """
    if kind not in EPS_SCHEDULES:
        raise ValueError(f"'eps_schedule' must be one of {', '.join(EPS_SCHEDULES)}, got {kind!r}")
    _check_width(eps_start, "prior_eps")
    if eps_end is not None:
        _check_width(eps_end, "prior_eps_end")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"'epochs' must be an integer >= 0, got {epochs!r}")
    if kind == "constant":
        if eps_end is not None and eps_end != eps_start:
            raise ValueError(
                f"'prior_eps_end' ({eps_end}) differs from 'prior_eps' ({eps_start}) under the constant eps schedule"
            )
        return [float(eps_start)] * epochs
    end = float(eps_start if eps_end is None else eps_end)
    if epochs == 1:
        return [end]
    log0, log1 = math.log(eps_start), math.log(end)
    return [math.exp(log0 + (log1 - log0) * t / (epochs - 1)) for t in range(epochs)]


def _check_width(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"'{name}' must be a number, got {value!r}")
    _check_eps(float(value), name)


def _fitted_eps(posterior: GatePosterior, gated, eps_fit: float | None, name: str) -> torch.Tensor:
    if eps_fit is not None:
        return torch.as_tensor(float(eps_fit), dtype=torch.float64)
    if gated is None:
        raise ValueError("rbp-bmr needs the gated network (its Dirac-like prior gives eps_fit) or 'eps_fit'")
    prior = gated.prior(gated.site(name))
    if not isinstance(prior, DiracLike):
        raise ValueError(
            f"rbp-bmr: the prior of gate site {name!r} is {type(prior).__name__}, not DiracLike; pass 'eps_fit'"
        )
    return prior.eps.detach().double().cpu()


def rbp_threshold(posterior: GatePosterior, gated=None, *, threshold: float = 0.1) -> PruningPlan:
    r"""RBP's "tiny noise" rule: prune iff :math:`|E_q[\theta]| < \tau`.

    The gate multiplies the structure's output, so :math:`|E[\theta]|` is the scale the structure is kept at; the
    Dirac-like prior drives the gates of redundant structures into its spike (:math:`|\mu| \lesssim
    \varepsilon`). With the defaults (:math:`\mu_0 = 1`, :math:`\varepsilon_1 = 0.1`) :math:`\tau = 0.1` sits
    between the two populations.

    :param threshold: :math:`\tau > 0`.
    :returns: a plan with ``score`` = :math:`|E[\theta]|`.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold < math.inf:
        raise ValueError(f"'threshold' must be a finite number > 0, got {threshold!r}")
    score = {s.name: posterior.mean(s.name).abs() for s in posterior.sites}
    keep = {n: ~(v < threshold) for n, v in score.items()}
    return plan_from_scores("rbp", {"threshold": float(threshold)}, posterior, score, keep)


def rbp_bmr(
    posterior: GatePosterior, gated=None, *, spike_eps: float = 1e-3, eps_fit: float | None = None
) -> PruningPlan:
    r"""Threshold-free RBP: Bayesian model reduction of the fitted Dirac-like prior :math:`p_{\varepsilon_f}` to the
    narrow spike :math:`\tilde p = \mathcal N(0, \varepsilon_s^2)`; prune iff

    .. math::

        \Delta F = \log\varepsilon_f - \tfrac12\log D - \frac{(1 - r)\mu^2}{2D} \ge 0, \qquad
        r = \varepsilon_s^2/\varepsilon_f^2,\; D = \varepsilon_s^2 + (1 - r)\sigma^2

    (:func:`~pyroprune.reduction.delta_f_dirac_like`; quadrature for non-Normal marginals of :math:`\theta`).

    :param spike_eps: :math:`\varepsilon_s`, must be below :math:`\varepsilon_f`.
    :param eps_fit: :math:`\varepsilon_f`; default: read from ``gated``'s :class:`DiracLike` prior.
    :returns: a plan with ``score`` = :math:`\Delta F`.
    """
    _check_width(spike_eps, "spike_eps")
    if eps_fit is not None:
        _check_width(eps_fit, "eps_fit")
    score = {}
    for site in posterior.sites:
        eps_f = _fitted_eps(posterior, gated, eps_fit, site.name)
        if not bool((eps_f > spike_eps).all()):
            raise ValueError(
                f"'spike_eps' ({spike_eps}) must be < the fitted prior's eps ({float(eps_f.min()):.4g}) at gate "
                f"site {site.name!r}"
            )
        q = posterior.normal(site.name)
        if q is not None:
            df = delta_f_dirac_like(q.loc.double(), q.scale.double(), eps_f.to(q.loc.device), spike_eps)
        elif site.name in posterior.theta_marginals:
            m = posterior.theta_marginals[site.name]
            like = torch.zeros((), dtype=torch.float64)
            df = delta_f_quadrature(m, DiracLike(like + eps_f), DiracLike(like + spike_eps))
        else:
            raise ValueError(
                f"rbp-bmr needs the Gaussian posterior of real-valued gates at site {site.name!r} "
                f"(NormalNoiseGuide); guide {posterior.guide_name!r} does not give one"
            )
        score[site.name] = df
    keep = {n: ~(v >= 0) for n, v in score.items()}
    params = {"spike_eps": float(spike_eps)}
    if eps_fit is not None:
        params["eps_fit"] = float(eps_fit)
    return plan_from_scores("rbp-bmr", params, posterior, score, keep, {n: -v for n, v in score.items()})
