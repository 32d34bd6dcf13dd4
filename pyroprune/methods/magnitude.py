"""Baselines: gate magnitude :math:`E[\\theta]`, L2 norm of incoming weights, and random pruning.

They need a pruning rate: either a fraction ``amount`` pruned per site, or ``match`` -- another plan whose
per-site kept counts are reproduced (so a baseline is compared with, e.g., BMRS_N at the same compression).
"""

from __future__ import annotations

import torch

from ..gates import GatedNet
from ..plan import PruningPlan
from ..posterior import GatePosterior
from ._common import matched_keep, plan_from_scores

__all__ = ["expected_gate", "weight_norm", "random_rule"]


def expected_gate(
    posterior: GatePosterior, gated=None, *, amount: float | None = None, match: PruningPlan | None = None
) -> PruningPlan:
    """Keep the structures with the largest posterior :math:`E[\\theta]`."""
    score = {s.name: posterior.mean(s.name) for s in posterior.sites}
    keep = matched_keep(posterior, score, amount, match)
    return plan_from_scores("magnitude", _rate(amount, match), posterior, score, keep)


def weight_norm(
    posterior: GatePosterior,
    gated: GatedNet | None = None,
    *,
    amount: float | None = None,
    match: PruningPlan | None = None,
) -> PruningPlan:
    """Keep the structures whose incoming weights (summed over coupled producers) have the largest
    :math:`\\lVert W_c \\rVert_2`; for an input-feature site (kind ``"feature"``) the outgoing weights of
    feature :math:`j`, the column norm :math:`\\lVert W_{:,j} \\rVert_2` of its ``Linear``."""
    if gated is None:
        raise ValueError("weight-norm needs the gated network ('gated')")
    modules = dict(gated.net.named_modules())
    score = {}
    for s in posterior.sites:
        sq = 0.0
        for path in s.producers:
            w = modules[path].weight.detach()
            if s.kind == "feature":
                sq = sq + w.pow(2).sum(0)
            else:
                sq = sq + w.reshape(w.shape[0], -1).pow(2).sum(1)
        score[s.name] = sq.sqrt().cpu()
    keep = matched_keep(posterior, score, amount, match)
    return plan_from_scores("weight-norm", _rate(amount, match), posterior, score, keep)


def random_rule(
    posterior: GatePosterior,
    gated=None,
    *,
    amount: float | None = None,
    match: PruningPlan | None = None,
    seed: int = 0,
) -> PruningPlan:
    """Keep a uniformly random subset per site, at the given or matched rate."""
    g = torch.Generator().manual_seed(seed)
    score = {s.name: torch.rand(s.size, generator=g, dtype=torch.float64) for s in posterior.sites}
    keep = matched_keep(posterior, score, amount, match)
    return plan_from_scores("random", {**_rate(amount, match), "seed": seed}, posterior, score, keep)


def _rate(amount: float | None, match: PruningPlan | None) -> dict:
    return {"amount": amount} if match is None else {"match": match.method, "match_kept": match.kept}
