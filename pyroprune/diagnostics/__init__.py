"""Reliability diagnostics of fitted gate posteriors and pruned networks: ArviZ data, calibration and
uncertainty metrics, conformal coverage, PSIS k-hat, decision stability, and the report."""

from .approximation import interpret_khat, khat_report, log_importance_ratios, pareto_khat
from .conformal import conformal_report, prediction_sets
from .datatree import build_datatree, load_datatree, posterior_predictive_draws, predictive_probabilities, save_datatree
from .metrics import compare_predictive, reliability_summary
from .report import Diagnostics, diagnose, write_report
from .run import RunArtifacts
from .stability import stability_report

__all__ = [
    "Diagnostics",
    "RunArtifacts",
    "build_datatree",
    "compare_predictive",
    "conformal_report",
    "diagnose",
    "interpret_khat",
    "khat_report",
    "load_datatree",
    "log_importance_ratios",
    "pareto_khat",
    "posterior_predictive_draws",
    "prediction_sets",
    "predictive_probabilities",
    "reliability_summary",
    "save_datatree",
    "stability_report",
    "write_report",
]
