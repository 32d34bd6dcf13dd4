"""Reliability diagnostics of fitted gate posteriors and pruned networks (ArviZ data, metrics, report)."""
