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
    :param depth: the SR-init depth stage (:class:`~pyroprune.infer.srinit.DepthStage`: block sensitivity and
        block plan) of an SR-init or combined depth + width run, else ``None``. A pure SR-init run has no gates:
        ``gated``, ``guide`` and ``posterior`` are ``None`` and ``plan`` is the block plan.
    """

    gated: GatedNet | None
    guide: nn.Module | None
    posterior: GatePosterior | None
    plan: PruningPlan
    pruned: nn.Module
    dense: nn.Module | None
    method: str
    seed: int
    depth: object | None = None

    @property
    def has_gates(self) -> bool:
        """Whether the run fitted a gate posterior (every method but SR-init alone)."""
        return self.gated is not None
