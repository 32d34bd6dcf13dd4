r"""SR-init's decision rule (Tang, Lu & Xuan 2023, "SR-init: An Interpretable Layer Pruning Method"): remove the
residual blocks whose re-initialisation hardly hurts accuracy. It reads a
:class:`~pyroprune.sensitivity.BlockSensitivity` (the re-initialisation drops and their posterior, measured by
:func:`~pyroprune.sensitivity.block_sensitivity`), not a gate posterior. Two ways to decide:

* **threshold with a probability** (``tau``): remove block :math:`b` iff
  :math:`P(\Delta_b \le \tau) \ge p` (``prob``, default 0.95), with :math:`\Delta_b` the expected drop in
  percentage points. The paper removes iff its one measured drop is :math:`\le \tau`; :math:`p = 0.5` is the
  closest to that (the posterior median below :math:`\tau`).
* **budget** (``params_reduction`` or ``flops_reduction``): remove the least sensitive blocks (smallest mean drop
  :math:`\bar\delta_b`, ties broken by the upper end of the 95 % interval) until at least that fraction of the
  whole network's parameters (multiply-accumulates) is gone.

Blocks that change shape are never candidates. The plan has one site per stage (the module holding the blocks,
kind ``"block"``), one structure per removable block; the score is :math:`\bar\delta_b` and nothing is folded.
"""

from __future__ import annotations

import numbers

import torch

from ..gates import GateSite
from ..plan import PruningPlan, SitePlan
from ..sensitivity import BlockSensitivity

__all__ = ["srinit", "block_plan", "check_srinit_params", "ROOT_STAGE"]

#: Site name of blocks held directly by the network's root module.
ROOT_STAGE = "<root>"


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise ValueError(f"srinit: '{name}' must be a fraction in (0, 1), got {value!r}")
    return float(value)


def check_srinit_params(
    tau: float | None = None,
    prob: float = 0.95,
    params_reduction: float | None = None,
    flops_reduction: float | None = None,
) -> dict:
    """Validate :func:`srinit`'s parameters (before the scoring, which may take a while).

    :returns: the parameters the plan records (``tau`` and ``prob``, or the budget).
    :raises ValueError: (one line) unless exactly one of ``tau``, ``params_reduction``, ``flops_reduction`` is
        given and in range.
    """
    given = [
        n
        for n, v in (("tau", tau), ("params_reduction", params_reduction), ("flops_reduction", flops_reduction))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "srinit: give exactly one of 'tau' (drop threshold, percentage points), 'params_reduction' or "
            f"'flops_reduction' (got {', '.join(given) or 'none'})"
        )
    if tau is not None:
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
            raise ValueError(f"srinit: 'tau' must be a number (percentage points), got {tau!r}")
        if isinstance(prob, bool) or not isinstance(prob, numbers.Real) or not 0.0 < prob <= 1.0:
            raise ValueError(f"srinit: 'prob' must be in (0, 1], got {prob!r}")
        return {"tau": float(tau), "prob": float(prob)}
    key = given[0]
    return {key: _fraction(key, params_reduction if key == "params_reduction" else flops_reduction)}


def srinit(
    sensitivity: BlockSensitivity,
    gated=None,
    tau: float | None = None,
    prob: float = 0.95,
    params_reduction: float | None = None,
    flops_reduction: float | None = None,
) -> PruningPlan:
    """SR-init's rule (module docstring): give exactly one of ``tau`` (percentage points), ``params_reduction``
    or ``flops_reduction`` (fractions of the whole network to remove).

    :param sensitivity: the measured drops.
    :param gated: unused (rules share the signature ``(posterior, gated, **params)``).
    :raises TypeError: if ``sensitivity`` is not a :class:`~pyroprune.sensitivity.BlockSensitivity` (e.g. a gate
        posterior).
    :raises ValueError: (one line) for missing or conflicting parameters, values out of range, or a budget that
        removing every removable block does not reach.
    """
    if not isinstance(sensitivity, BlockSensitivity):
        raise TypeError(
            "srinit decides from a BlockSensitivity (pyroprune.block_sensitivity: re-initialisation drops), "
            f"not a {type(sensitivity).__name__}"
        )
    params = check_srinit_params(tau, prob, params_reduction, flops_reduction)
    mean = sensitivity.mean()
    if tau is not None:
        remove = sensitivity.prob_below(float(tau)) >= prob - 1e-12
    else:
        key, target = next(iter(params.items()))
        sizes = [b.params if key == "params_reduction" else b.macs for b in sensitivity.blocks]
        total = sensitivity.total_params if key == "params_reduction" else sensitivity.total_macs
        if total <= 0:
            raise ValueError(f"srinit: the sensitivity does not record the network's total for '{key}'")
        _, high = sensitivity.interval(0.95)
        order = sorted(range(len(sizes)), key=lambda i: (float(mean[i]), float(high[i])))
        remove = torch.zeros(len(sizes), dtype=torch.bool)
        removed = 0
        for i in order:
            if removed >= target * total:
                break
            remove[i] = True
            removed += sizes[i]
        if removed < target * total:
            raise ValueError(
                f"srinit: '{key}' = {target} is out of reach: removing every removable block removes "
                f"{removed / total:.1%} of the network"
            )
    params["fixed_blocks"] = {b.path: b.reason for b in sensitivity.fixed}
    return block_plan(sensitivity, ~remove, params)


def block_plan(sensitivity: BlockSensitivity, keep: torch.Tensor, params: dict, method: str = "srinit") -> PruningPlan:
    """A plan keeping the removable blocks where ``keep`` (``[B]`` bool) is true: one site per stage."""
    mean = sensitivity.mean()
    stages: dict[str, list[int]] = {}
    for i, b in enumerate(sensitivity.blocks):
        stages.setdefault(b.stage or ROOT_STAGE, []).append(i)
    sites = []
    for stage, idx in stages.items():
        paths = tuple(sensitivity.blocks[i].path for i in idx)
        site = GateSite(stage, len(idx), "block", paths, paths)
        sites.append(SitePlan(site, [bool(keep[i]) for i in idx], [float(mean[i]) for i in idx], None, []))
    return PruningPlan(method, params, sites)
