"""pyroprune: Bayesian structured pruning of neural networks, written as probabilistic programs in Pyro.

The flow (one function per arrow)::

    nn.Module --gate()--> GatedNet --fit_svi()--> guide --posterior_from_guide()--> GatePosterior
              --decide()--> PruningPlan --remove()--> smaller plain nn.Module

(or ``fit_svgd()`` of an :class:`SVGD` engine: particles instead of a guide; DLLP's ``fit_dllp()``.)

Depth (SR-init): ``find_residual_blocks()`` --> ``block_sensitivity()`` (re-initialisation drops with their
posterior) --``decide(..., "srinit")``--> PruningPlan of blocks --``remove()``--> a shallower network.
"""

from importlib.metadata import PackageNotFoundError, version

from . import distributions, reduction
from .blocks import ResidualBlock, find_residual_blocks, remove_blocks
from .data import DataSplits, TensorSplit, load_digits
from .distributions import DiracLike, LogUniform, TruncatedLogNormal, TruncatedNormal
from .gates import GatedNet, GateSite, feature_site_name, find_gate_sites, gate
from .guides import NormalNoiseGuide, TruncatedLogNormalGuide, auto_guide
from .infer import (
    SVGD,
    FitHistory,
    IMQKernel,
    RBFKernel,
    SiteScale,
    SteinKernel,
    SVGDDiverged,
    TrainingDiverged,
    elbo_loss,
    evaluate,
    fit_svgd,
    fit_svi,
    train_plain,
)
from .infer.dllp import DLLPFit, fit_dllp
from .layers import FeatureSelectLinear
from .lossless import LosslessGateModel, keep_prior_logits, structure_saliency
from .measure import count_macs, count_params, measure_latency
from .methods import RULES, decide
from .pipeline import PruneConfig, PruneResult, network_metrics, prune_network
from .plan import PruningPlan, SitePlan
from .posterior import GatePosterior, posterior_from_guide
from .reduction import delta_f_bmrs_n, delta_f_bmrs_u, delta_f_dirac_like, delta_f_quadrature
from .sensitivity import BlockSensitivity, block_sensitivity
from .serialization import load_pruned, save_pruned
from .surgery import fold_gates, remove

try:
    __version__ = version("pyroprune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "distributions",
    "reduction",
    "DataSplits",
    "TensorSplit",
    "load_digits",
    "LogUniform",
    "TruncatedLogNormal",
    "TruncatedNormal",
    "DiracLike",
    "GatedNet",
    "GateSite",
    "find_gate_sites",
    "feature_site_name",
    "gate",
    "FeatureSelectLinear",
    "TruncatedLogNormalGuide",
    "auto_guide",
    "NormalNoiseGuide",
    "FitHistory",
    "SiteScale",
    "TrainingDiverged",
    "elbo_loss",
    "evaluate",
    "fit_svi",
    "train_plain",
    "SVGD",
    "SVGDDiverged",
    "SteinKernel",
    "RBFKernel",
    "IMQKernel",
    "fit_svgd",
    "DLLPFit",
    "fit_dllp",
    "LosslessGateModel",
    "structure_saliency",
    "keep_prior_logits",
    "count_macs",
    "count_params",
    "measure_latency",
    "RULES",
    "decide",
    "PruneConfig",
    "PruneResult",
    "network_metrics",
    "prune_network",
    "PruningPlan",
    "SitePlan",
    "GatePosterior",
    "posterior_from_guide",
    "delta_f_bmrs_n",
    "delta_f_bmrs_u",
    "delta_f_quadrature",
    "delta_f_dirac_like",
    "load_pruned",
    "save_pruned",
    "fold_gates",
    "remove",
    "ResidualBlock",
    "find_residual_blocks",
    "remove_blocks",
    "BlockSensitivity",
    "block_sensitivity",
]
