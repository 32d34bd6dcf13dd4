"""Inference: SVI for gated networks, plain training for dense and pruned ones."""

from .svi import KL_WEIGHTINGS, FitHistory, SiteScale, TrainingDiverged, elbo_loss, fit_svi, site_scales
from .train import evaluate, train_plain

__all__ = [
    "KL_WEIGHTINGS",
    "FitHistory",
    "SiteScale",
    "TrainingDiverged",
    "elbo_loss",
    "fit_svi",
    "site_scales",
    "evaluate",
    "train_plain",
]
