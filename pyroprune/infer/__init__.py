"""Inference: SVI and SVGD for gated networks, plain training for dense and pruned ones."""

from .svgd import SVGD, IMQKernel, RBFKernel, SteinKernel, SVGDDiverged, fit_svgd, make_kernel, stein_direction
from .svi import KL_WEIGHTINGS, FitHistory, SiteScale, TrainingDiverged, elbo_loss, fit_svi, site_scales
from .train import evaluate, train_plain

__all__ = [
    "SVGD",
    "SVGDDiverged",
    "SteinKernel",
    "RBFKernel",
    "IMQKernel",
    "fit_svgd",
    "make_kernel",
    "stein_direction",
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
