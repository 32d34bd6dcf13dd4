r"""DLLP's decision rule and temperature schedule ("Efficient Stein Variational Inference for Reliable
Distribution-lossless Network Pruning", 2022; the model is :mod:`pyroprune.lossless`, the fit
:func:`pyroprune.infer.dllp.fit_dllp`, the whole method ``docs/methods/dllp.md``).

The posterior is :math:`K` SVGD particles, each a sub-network :math:`z^{(k)} = \mathbb 1[v^{(k)} > 0]`
(stored as the posterior's draws of :math:`\theta`). Two ways to choose the pruned network:

* ``select="inclusion"`` (default): keep structure :math:`c` iff its inclusion probability
  :math:`\hat P(z_c = 1) = \frac1K \sum_k z_c^{(k)}` is at least ``threshold`` (0.5: a structure is removed only if
  a strict majority of the particles remove it);
* ``select="best"``: the particle with the best validation score (the posterior's ``sample_scores``: mean
  :math:`-\mathrm{KL}` from the dense network's predictive distribution on the validation split).

Kept structures are used as trained (fold 1: :math:`z = 1`), not scaled by a posterior mean.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..plan import PruningPlan
from ..posterior import GatePosterior
from ._common import plan_from_scores

__all__ = ["DLLP_SELECT", "dllp", "temperature_schedule"]

#: The values of ``select``.
DLLP_SELECT = ("inclusion", "best")


def dllp(posterior: GatePosterior, gated=None, threshold: float = 0.5, select: str = "inclusion") -> PruningPlan:
    """DLLP's rule (module docstring). The score of a structure is its inclusion probability.

    :raises ValueError: for a posterior without stored particles, a ``threshold`` outside (0, 1], an unknown
        ``select``, or ``select="best"`` on a posterior without ``sample_scores``.
    """
    if select not in DLLP_SELECT:
        raise ValueError(f"dllp: 'select' must be one of {', '.join(DLLP_SELECT)}, got {select!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"dllp: 'threshold' must be in (0, 1], got {threshold!r}")
    if posterior.num_stored_draws is None:
        raise ValueError("dllp needs a posterior of particles (the SVGD fit of schedule 'svgd'), not marginals")
    inclusion = {s.name: (posterior.samples[s.name] > 0.5).double().mean(0) for s in posterior.sites}
    if select == "inclusion":
        keep = {name: p >= threshold - 1e-12 for name, p in inclusion.items()}
    else:
        scores = posterior.sample_scores
        if scores is None:
            raise ValueError("dllp: select='best' needs the particles' validation scores (posterior.sample_scores)")
        best = int(torch.argmax(scores))
        keep = {s.name: posterior.samples[s.name][best] > 0.5 for s in posterior.sites}
    ones = {s.name: torch.ones(s.size, dtype=torch.float64) for s in posterior.sites}
    return plan_from_scores(
        "dllp", {"threshold": threshold, "select": select}, posterior, inclusion, keep, inclusion, fold=ones
    )


def temperature_schedule(start: float, end: float, steps: int) -> list[float]:
    r"""The relaxation temperature :math:`\lambda_t` at SVGD steps :math:`t = 0..T-1`: geometric from
    :math:`\lambda_0` (``start``) to :math:`\lambda_1` (``end``),

    .. math:: \lambda_t = \lambda_0\, (\lambda_1/\lambda_0)^{t/(T-1)},

    equal steps in :math:`\log\lambda` (:math:`T = 1`: :math:`\lambda_1`). A warm start lets particles cross
    :math:`v = 0` while the relaxed gates are still soft; the cold end makes :math:`\sigma(v/\lambda)` nearly the
    hard indicator the final decision uses.

    :raises ValueError: for non-positive or non-finite temperatures or a negative ``steps``.
    """
    for name, value in (("temperature", start), ("temperature_end", end)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"'{name}' must be a finite number > 0, got {value!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"'steps' must be an integer >= 0, got {steps!r}")
    if steps == 1:
        return [float(end)]
    log0, log1 = math.log(start), math.log(end)
    return [math.exp(log0 + (log1 - log0) * t / (steps - 1)) for t in range(steps)]
