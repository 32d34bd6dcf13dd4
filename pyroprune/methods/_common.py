"""What every decision rule shares: turning per-structure scores into a :class:`~pyroprune.plan.PruningPlan`."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..plan import PruningPlan, SitePlan
from ..posterior import GatePosterior

__all__ = ["plan_from_scores", "matched_keep", "validate_amount"]


def plan_from_scores(
    method: str,
    params: dict,
    posterior: GatePosterior,
    score: Mapping[str, torch.Tensor],
    keep: Mapping[str, torch.Tensor],
    keepness: Mapping[str, torch.Tensor] | None = None,
    fold: Mapping[str, torch.Tensor] | None = None,
) -> PruningPlan:
    """Assemble a plan; every kept structure folds its posterior :math:`E[\\theta]` (or ``fold[site]``, e.g. 1 for
    rules whose kept structures are used as trained).

    A site is never emptied: if the rule prunes every structure of a site, the one with the highest
    ``keepness`` (default: ``score``) is kept and recorded in ``forced`` -- an empty layer would disconnect the
    network.
    """
    keepness = keepness or score
    sites = []
    for site in posterior.sites:
        k = keep[site.name].detach().to("cpu", torch.bool).clone()
        forced = []
        if not k.any():
            best = int(torch.argmax(keepness[site.name].detach().cpu()))
            k[best] = True
            forced = [best]
        folded = posterior.mean(site.name) if fold is None else fold[site.name]
        folded = torch.as_tensor(folded).detach().cpu()
        sites.append(
            SitePlan(
                site,
                k.tolist(),
                score[site.name].detach().cpu().double().tolist(),
                folded.double().tolist(),
                forced,
            )
        )
    return PruningPlan(method, dict(params), sites)


def validate_amount(amount: float | None, match: PruningPlan | None) -> None:
    if (amount is None) == (match is None):
        raise ValueError("give exactly one of 'amount' (fraction to prune per site) or 'match' (a plan)")
    if amount is not None and not 0.0 <= amount < 1.0:
        raise ValueError(f"'amount' must be in [0, 1), got {amount}")


def matched_keep(
    posterior: GatePosterior,
    keepness: Mapping[str, torch.Tensor],
    amount: float | None,
    match: PruningPlan | None,
) -> dict[str, torch.Tensor]:
    """Keep, per site, the structures with the highest ``keepness``: as many as ``match`` keeps there, or a
    fraction ``1 - amount`` of them."""
    validate_amount(amount, match)
    keep = {}
    for site in posterior.sites:
        n = match[site.name].kept if match is not None else max(1, round(site.size * (1.0 - amount)))
        if n > site.size:
            raise ValueError(f"matched plan keeps {n} structures of site {site.name!r}, which has {site.size}")
        idx = torch.argsort(keepness[site.name].detach().cpu(), descending=True)[:n]
        k = torch.zeros(site.size, dtype=torch.bool)
        k[idx] = True
        keep[site.name] = k
    return keep
