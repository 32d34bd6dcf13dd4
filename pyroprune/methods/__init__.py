"""Decision rules: each maps a fitted :class:`~pyroprune.posterior.GatePosterior` to a
:class:`~pyroprune.plan.PruningPlan` (``srinit`` maps a :class:`~pyroprune.sensitivity.BlockSensitivity`, the
measured re-initialisation drops of residual blocks).

==============  ===================================================  ==========================
name            rule                                                 paper
==============  ===================================================  ==========================
``bmrs-n``      :math:`\\Delta F \\ge 0` under a spike at :math:`a`     Wright et al. 2024
``bmrs-u8``     :math:`\\Delta F \\ge 0` under log-U[2^-23, 2^-8]      Wright et al. 2024
``bmrs-u4``     :math:`\\Delta F \\ge 0` under log-U[2^-23, 2^-4]      Wright et al. 2024
``snr``         :math:`E[\\theta]/\\mathrm{sd}[\\theta] < \\tau`         Neklyudov et al. 2017
``magnitude``   smallest :math:`E[\\theta]` at a given/matched rate     baseline
``weight-norm`` smallest incoming-weight L2 norm                      baseline
``random``      random at a given/matched rate                       baseline
``rbp``         :math:`|E[\\theta]| < \\tau` (Gaussian noise)         Zhou et al. 2018/2019
``rbp-bmr``     :math:`\\Delta F \\ge 0` against the Dirac-like spike  RBP + BMR (this package)
``dllp``        SVGD particles' inclusion probability >= 1/2          DLLP 2022 (model: this package)
``srinit``      :math:`P(\\Delta_b \\le \\tau) \\ge 0.95` (re-init drop)   Tang et al. 2023 (+ uncertainty)
==============  ===================================================  ==========================
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from ..plan import PruningPlan
from ..posterior import GatePosterior
from .bmrs import bmrs_n, bmrs_u
from .dllp import dllp
from .magnitude import expected_gate, random_rule, weight_norm
from .rbp import rbp_bmr, rbp_threshold
from .sbp import snr
from .srinit import srinit

__all__ = [
    "RULES",
    "decide",
    "bmrs_n",
    "bmrs_u",
    "snr",
    "expected_gate",
    "weight_norm",
    "random_rule",
    "rbp_threshold",
    "rbp_bmr",
    "dllp",
    "srinit",
]

#: Rule name -> function ``(posterior, gated, **params) -> PruningPlan``.
RULES: dict[str, Callable[..., PruningPlan]] = {
    "bmrs-n": bmrs_n,
    "bmrs-u8": partial(bmrs_u, k=8),
    "bmrs-u4": partial(bmrs_u, k=4),
    "snr": snr,
    "magnitude": expected_gate,
    "weight-norm": weight_norm,
    "random": random_rule,
    "rbp": rbp_threshold,
    "rbp-bmr": rbp_bmr,
    "dllp": dllp,
    "srinit": srinit,
}


def decide(posterior: GatePosterior, method: str, gated=None, **params) -> PruningPlan:
    """Apply the rule called ``method`` (see :data:`RULES`) to ``posterior`` (for ``srinit``, a
    :class:`~pyroprune.sensitivity.BlockSensitivity`)."""
    if method not in RULES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(RULES)}")
    try:
        return RULES[method](posterior, gated, **params)
    except TypeError as e:
        raise TypeError(f"method {method!r}: {e}") from e
