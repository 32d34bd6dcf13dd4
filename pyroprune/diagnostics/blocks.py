r"""The SR-init part of the reliability report: the block sensitivity of a run's depth stage, as a summary and a
figure.

A run with a depth stage (:class:`~pyroprune.infer.srinit.DepthStage`: SR-init alone, or SR-init before a width
method) carries the measured re-initialisation drops of its residual blocks
(:class:`~pyroprune.sensitivity.BlockSensitivity`) and the block plan decided from them. :func:`block_summary`
lays them out one row per block in network order (removable and fixed blocks together, fixed ones with the reason
they were never candidates) with the decision and, for several runs, the share of runs removing each block;
:func:`plot_block_drops` draws SR-init's main figure (Tang, Lu & Xuan 2023, the accuracy drop per block) with the
uncertainty: posterior mean, 95 % interval and the per-seed drops. :func:`check_depth_runs` rejects runs that
cannot be reported together.

The report (:mod:`~pyroprune.diagnostics.report`) calls these; they need no gate posterior.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from ..blocks import ResidualBlock
from .run import RunArtifacts

__all__ = [
    "BLOCK_FIGURE",
    "BLOCK_LEVEL",
    "block_summary",
    "check_depth_runs",
    "network_order",
    "plot_block_drops",
    "split_name",
]

#: File name of the block sensitivity figure, written into ``out_dir/figures``.
BLOCK_FIGURE = "block_drops.png"
#: Probability mass of the central intervals of the blocks' expected drops.
BLOCK_LEVEL = 0.95

_DECISION_COLORS = {"removed": "#d62728", "kept": "#1f77b4", "fixed": "#7f7f7f"}


def _describe(i: int, run: RunArtifacts) -> str:
    return f"runs[{i}] (method {run.method!r}, seed {run.seed})"


def _block_ids(run: RunArtifacts) -> list[tuple[str, bool]]:
    s = run.depth.sensitivity
    return [(b.path, True) for b in s.blocks] + [(b.path, False) for b in s.fixed]


def check_depth_runs(runs: Sequence[RunArtifacts]) -> None:
    """Check that ``runs`` can share one report as far as depth is concerned: all with a depth stage or none, all
    with a gate posterior or none, the same residual blocks (the same removable and fixed ones) and, when a width
    method followed the depth stage, the same removed blocks (the gate posteriors must be over one network).

    :raises ValueError: (one line) naming the first offending run.
    """
    first = runs[0]
    if first.depth is None and not first.has_gates:
        raise ValueError(f"{_describe(0, first)} has neither a gate posterior nor an SR-init depth stage")
    for i, run in enumerate(runs[1:], start=1):
        if (run.depth is None) != (first.depth is None):
            has, lacks = (_describe(i, run), "runs[0]") if run.depth is not None else ("runs[0]", _describe(i, run))
            raise ValueError(
                f"{has} has an SR-init depth stage but {lacks} has none; report runs with and without SR-init "
                "separately"
            )
        if run.has_gates != first.has_gates:
            gated, plain = (_describe(i, run), "runs[0]") if run.has_gates else ("runs[0]", _describe(i, run))
            raise ValueError(
                f"{gated} fitted a gate posterior (SR-init before a width method) but {plain} is SR-init alone; "
                "report them separately"
            )
    if first.depth is None:
        return
    reference = _block_ids(first)
    for i, run in enumerate(runs[1:], start=1):
        got = _block_ids(run)
        if got != reference:
            ref, other = dict(reference), dict(got)
            extra = [p for p, _ in got if p not in ref]
            missing = [p for p, _ in reference if p not in other]
            flipped = [p for p, r in got if p in ref and ref[p] != r]
            if extra:
                why = f"has block {extra[0]!r}, which runs[0] does not have"
            elif missing:
                why = f"has no block {missing[0]!r} (runs[0] has)"
            elif flipped:
                why = f"counts block {flipped[0]!r} as {'removable' if other[flipped[0]] else 'fixed'}, runs[0] not"
            else:
                why = "lists the blocks in a different order than runs[0]"
            raise ValueError(f"{_describe(i, run)}: its block sensitivity {why}; report the runs separately")
        if first.has_gates and sorted(run.depth.removed) != sorted(first.depth.removed):
            raise ValueError(
                f"{_describe(i, run)} removed blocks {sorted(run.depth.removed)} but runs[0] removed "
                f"{sorted(first.depth.removed)}: the width posteriors are over different networks and cannot be "
                "pooled; report the runs separately"
            )


def split_name(split: str) -> str:
    """The readable name of a split (``"val"`` -> ``"validation"``)."""
    return {"val": "validation"}.get(split, split)


def _natural_key(path: str) -> tuple:
    # "layer2.10" after "layer2.9": digits compare as numbers
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", path) if p)


def network_order(blocks: Sequence[ResidualBlock], fixed: Sequence[ResidualBlock], net: nn.Module | None = None):
    """The removable and the fixed blocks merged into one list in network order.

    Sorted by the blocks' positions among ``net``'s modules (registration order) when ``net`` holds them all,
    else by their paths with numbers compared as numbers.
    """
    position = {}
    if net is not None:
        names = {name: i for i, (name, _) in enumerate(net.named_modules())}
        if all(b.path in names for b in [*blocks, *fixed]):
            position = names

    def key(b: ResidualBlock):
        return (position[b.path],) if position else _natural_key(b.path)

    return sorted([*blocks, *fixed], key=key)


def block_summary(
    runs: Sequence[RunArtifacts], level: float = BLOCK_LEVEL, uncertain_range: tuple[float, float] = (0.1, 0.9)
) -> dict[str, Any]:
    """The block sensitivity of the first run's depth stage, one row per block in network order.

    :param runs: runs with a depth stage (checked by :func:`check_depth_runs`).
    :param level: mass of the central posterior intervals.
    :param uncertain_range: with a ``tau`` rule, a decision is flagged uncertain if
        :math:`P(\\Delta \\le \\tau)` lies in this closed interval.
    :returns: ``setup`` (the scoring: split, examples, re-initialisations, init, bootstrap and draws, baseline
        accuracy, the rule), ``totals`` (blocks, removable, fixed, removed, removed parameters and MACs and their
        fractions), ``removed_per_run`` and ``rows``: the rows of
        :meth:`~pyroprune.sensitivity.BlockSensitivity.table` (same keys and numbers) with ``seed_drops`` (the
        per-seed drops), ``decision`` (``"removed"``, ``"kept"`` or ``"fixed"``), ``reason`` (why a fixed block
        is never a candidate, else ``""``), ``uncertain`` (with a ``tau`` rule) and, with >= 2 runs,
        ``run_removed_share`` (``None`` for fixed blocks). Numbers are plain Python floats and ints.
    """
    first = runs[0]
    depth = first.depth
    s = depth.sensitivity
    rule = {k: v for k, v in depth.plan.params.items() if k != "fixed_blocks"}
    tau = rule.get("tau")
    table = {row["block"]: row for row in s.table(level, tau)}
    removed = set(depth.removed)
    index = {b.path: i for i, b in enumerate(s.blocks)}
    low, high = uncertain_range
    rows = []
    for b in network_order(s.blocks, s.fixed, first.dense):
        row = dict(table[b.path])
        row.pop("fixed", None)
        if b.removable:
            row["seed_drops"] = [float(v) for v in s.drops[index[b.path]]]
            row["decision"] = "removed" if b.path in removed else "kept"
            row["reason"] = ""
            if tau is not None:
                row["uncertain"] = bool(low <= row["p_below"] <= high)
        else:
            row["decision"] = "fixed"
            row["reason"] = b.reason
        if len(runs) > 1:
            # fixed blocks are never candidates: no share rather than a misleading 0
            row["run_removed_share"] = sum(b.path in r.depth.removed for r in runs) / len(runs) if b.removable else None
        rows.append(row)
    removed_params = sum(b.params for b in s.blocks if b.path in removed)
    removed_macs = sum(b.macs for b in s.blocks if b.path in removed)
    return {
        "setup": {
            "run_seed": int(first.seed),
            "split": s.split,
            "num_examples": int(s.num_examples),
            "num_seeds": len(s.seeds),
            "init": s.init,
            "bootstrap": s.bootstrap,
            "num_draws": int(s.draws.shape[1]),
            "baseline_accuracy": float(s.baseline_accuracy),
            "interval_level": float(level),
            "uncertain_range": list(uncertain_range),
            "rule": rule,
            "before_width_method": bool(first.has_gates),
            "depth_finetune_epochs": len(depth.finetune_history),
        },
        "totals": {
            "blocks": len(rows),
            "removable": len(s.blocks),
            "fixed": len(s.fixed),
            "removed": len(removed),
            "uncertain": sum(bool(r.get("uncertain")) for r in rows),
            "removed_params": removed_params,
            "removed_macs": removed_macs,
            "total_params": int(s.total_params),
            "total_macs": int(s.total_macs),
            "removed_params_fraction": removed_params / s.total_params if s.total_params else None,
            "removed_macs_fraction": removed_macs / s.total_macs if s.total_macs else None,
        },
        "removed_per_run": {f"seed {r.seed}": list(r.depth.removed) for r in runs},
        "num_runs": len(runs),
        "rows": rows,
    }


def plot_block_drops(ax, blocks: dict[str, Any]) -> None:
    """SR-init's figure with uncertainty on ``ax``: per block in network order, the mean drop (point), its
    central interval (bar) and the per-seed drops (small dots), coloured by decision; fixed blocks as grey bands
    labelled "fixed" (no drop is measured for them); :math:`\\tau` as a dashed line when the rule used one.

    :param ax: a matplotlib ``Axes`` (its figure should use the constrained layout: the legend goes below the
        axes, outside).
    :param blocks: :func:`block_summary`'s result (or its JSON form).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    setup, rows = blocks["setup"], blocks["rows"]
    rule = setup["rule"]
    tau = rule.get("tau")
    x = np.arange(len(rows))
    rng = np.random.default_rng(0)  # jitter of the per-seed dots only: the figure is reproducible
    band = blended_transform_factory(ax.transData, ax.transAxes)
    handles: dict[str, Any] = {}
    for decision in ("kept", "removed"):
        idx = [i for i, r in enumerate(rows) if r["decision"] == decision]
        if not idx:
            continue
        color = _DECISION_COLORS[decision]
        mean = np.array([rows[i]["mean"] for i in idx])
        ax.vlines(x[idx], [rows[i]["low"] for i in idx], [rows[i]["high"] for i in idx], color=color, lw=2.2)
        ax.plot(x[idx], mean, "o", color=color, ms=7, mec="white", zorder=3)
        for i in idx:
            seeds = np.asarray(rows[i]["seed_drops"], dtype=float)
            jitter = rng.uniform(-0.15, 0.15, seeds.size) if seeds.size > 1 else np.zeros(1)
            ax.plot(x[i] + 0.22 + jitter, seeds, ".", color=color, ms=4, alpha=0.6)
        handles[decision] = Line2D(
            [], [], color=color, marker="o", mec="white", lw=2.2, label=f"{decision} ({len(idx)}): mean drop"
        )
    fixed = [i for i, r in enumerate(rows) if r["decision"] == "fixed"]
    for i in fixed:
        ax.axvspan(x[i] - 0.4, x[i] + 0.4, color=_DECISION_COLORS["fixed"], alpha=0.15, lw=0)
        ax.text(x[i], 0.5, "fixed", transform=band, rotation=90, ha="center", va="center", color="#505050")
    if fixed:
        handles["fixed"] = Patch(
            color=_DECISION_COLORS["fixed"], alpha=0.3, label=f"fixed ({len(fixed)}): shortcut changes the shape"
        )
    level = int(round(100 * setup["interval_level"]))
    handles["interval"] = Line2D([], [], color="black", lw=2.2, label=f"{level} % interval of the expected drop")
    seeds_label = f"drop of one re-initialisation ({setup['num_seeds']} per block)"
    handles["seeds"] = Line2D([], [], color="black", marker=".", ls="", alpha=0.6, label=seeds_label)
    ax.axhline(0.0, color="black", lw=0.6)
    if tau is not None:
        ax.axhline(tau, color="black", ls="--", lw=1.2)
        handles["tau"] = Line2D(
            [], [], color="black", ls="--", lw=1.2, label=f"τ = {tau:g} pp (removed if P(Δ ≤ τ) ≥ {rule['prob']:g})"
        )
        budget = ""
    else:
        key, value = next(iter(rule.items()), ("rule", ""))
        budget = f"; budget {key.replace('_', ' ')} {value:g}" if isinstance(value, (int, float)) else ""
    ax.set_xticks(x, [r["block"] for r in rows], rotation=45, ha="right", rotation_mode="anchor")
    for label, r in zip(ax.get_xticklabels(), rows, strict=True):
        if r["decision"] == "fixed":
            label.set_color("#505050")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set(
        xlabel="residual block (network order)",
        ylabel="accuracy drop when re-initialised (percentage points)",
        title=(
            f"SR-init block sensitivity (seed {setup['run_seed']})\n{split_name(setup['split'])} split, "
            f"{setup['num_examples']} examples{budget}"
        ),
    )
    ax.grid(alpha=0.3, axis="y")
    ax.figure.legend(handles=list(handles.values()), loc="outside lower center", ncols=2, fontsize="small")
