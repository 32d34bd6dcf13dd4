"""What the diagnostics need from one fitted run (one seed of one method)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..gates import GatedNet
from ..plan import PruningPlan
from ..posterior import GatePosterior

__all__ = ["RunArtifacts"]


@dataclass
class RunArtifacts:
    """One fitted run: the gated model and its posterior, the decision and both networks.

    :param gated: the gated network (Pyro model) whose weights were fitted with the gates.
    :param guide: the fitted guide (used for PSIS k-hat; ``TruncatedLogNormalGuide`` or any guide with
        marginals known to :func:`~pyroprune.posterior.posterior_from_guide`).
    :param posterior: the posterior over the gates.
    :param plan: the pruning decision.
    :param pruned: the physically pruned (and fine-tuned) plain network.
    :param dense: the deterministic dense network before gating, if available.
    :param method: the decision rule's name.
    :param seed: the run's seed.
    """

    gated: GatedNet
    guide: nn.Module
    posterior: GatePosterior
    plan: PruningPlan
    pruned: nn.Module
    dense: nn.Module | None
    method: str
    seed: int
