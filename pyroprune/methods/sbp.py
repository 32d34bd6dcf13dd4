"""SBP's signal-to-noise rule (Neklyudov et al., 2017, "Structured Bayesian Pruning via Log-Normal
Multiplicative Noise").

.. math::

    \\mathrm{SNR}(\\theta) = \\frac{E[\\theta]}{\\sqrt{\\mathrm{Var}[\\theta]}}, \\qquad
    \\text{prune iff } \\mathrm{SNR} < \\tau \\;(\\tau = 1).
"""

from __future__ import annotations

from ..plan import PruningPlan
from ..posterior import GatePosterior
from ._common import plan_from_scores

__all__ = ["snr"]


def snr(posterior: GatePosterior, gated=None, *, threshold: float = 1.0) -> PruningPlan:
    """Prune structures whose gate has :math:`E[\\theta]/\\mathrm{sd}[\\theta] < \\tau`.

    :param threshold: :math:`\\tau` (SBP: 1).
    :returns: a plan with ``score`` = SNR.
    """
    if not threshold > 0:
        raise ValueError(f"'threshold' must be > 0, got {threshold}")
    score = {s.name: posterior.mean(s.name) / posterior.stddev(s.name) for s in posterior.sites}
    keep = {n: ~(v < threshold) for n, v in score.items()}
    return plan_from_scores("snr", {"threshold": threshold}, posterior, score, keep)
