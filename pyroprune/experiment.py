"""Running a recipe: load the data, pretrain the dense network, prune, measure, save a run directory.

One function, :func:`run_recipe`, used by ``pyroprune prune`` and by ``benchmarks/paper_tables.py`` so that a
table row and a command-line run are the same computation.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from torch import nn

from .data import DataSplits
from .infer import train_plain
from .models import build_model
from .pipeline import PruneResult, prune_and_measure
from .plan import atomic_write_text
from .recipes import Recipe, recipe_to_dict
from .runs import load_data, save_run
from .serialization import load_pruned, save_pruned

__all__ = ["RecipeRun", "run_recipe", "pretrain_dense"]


@dataclass
class RecipeRun:
    """What :func:`run_recipe` produced (everything is also written to ``out``)."""

    recipe: Recipe
    data: DataSplits
    dense: nn.Module
    result: PruneResult
    metrics: dict
    out: Path


def pretrain_dense(recipe: Recipe, data: DataSplits, device: torch.device, progress: bool = True) -> nn.Module:
    """Build the recipe's architecture on ``device`` and train it plainly for ``pretrain.epochs`` (0: untrained).

    Seeded by ``prune.seed`` (the caller sets Pyro's/torch's RNG state first).
    """
    model = recipe.model
    dense = build_model(model["name"], **dict(model.get("kwargs", {}))).to(device)
    pre = recipe.pretrain
    if pre.get("epochs", 0) > 0:
        train_plain(
            dense,
            data.train,
            epochs=pre["epochs"],
            batch_size=pre.get("batch_size", 128),
            lr=pre.get("lr", 1e-3),
            val=data.val,
            seed=recipe.prune.seed,
            progress=progress,
            description="pretrain",
        )
    return dense


def run_recipe(
    recipe: Recipe,
    out: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    data_root: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    metadata: dict | None = None,
    dense: nn.Module | None = None,
) -> RecipeRun:
    """Run ``recipe`` into the run directory ``out`` (which the caller has checked or created).

    Writes ``dense/`` right after pretraining (so ``resume`` never pretrains twice), a checkpoint after every SVI
    epoch, then ``metrics.json``, ``plan.json``, ``run.json``, ``model/`` and ``posterior/``
    (see :mod:`pyroprune.runs`). With ``resume`` the SVI stage continues from ``out/checkpoint`` and ends with
    the same plan as an uninterrupted run with the same seed.

    :param dense: an already pretrained network of the recipe's architecture (e.g. shared by several recipes
        with the same pretraining); it is copied, and the recipe's ``pretrain`` stage is skipped.
    """
    out = Path(out)
    device = torch.device(device)
    spec = dict(recipe.data)
    # the same loader load_run uses, so a reloaded run sees exactly these splits
    data = load_data(spec, device, root=data_root)
    arch = {"name": recipe.model["name"], "kwargs": dict(recipe.model.get("kwargs", {}))}
    pyro.set_rng_seed(recipe.prune.seed)
    if dense is not None:
        dense = copy.deepcopy(dense).to(device)
        save_pruned(dense, out / "dense", arch=arch)
    elif resume and (out / "dense" / "model.json").is_file():
        dense = load_pruned(out / "dense").to(device)
    else:
        dense = pretrain_dense(recipe, data, device, progress=progress)
        save_pruned(dense, out / "dense", arch=arch)  # kept for resume: pretraining is not repeated
    fingerprint = {"recipe": recipe_to_dict(recipe)}
    fingerprint["recipe"]["prune"].pop("epochs", None)  # more epochs may be asked for when resuming
    result, metrics = prune_and_measure(
        dense,
        data,
        recipe.prune,
        model=arch["name"],
        progress=progress,
        dense_trained=recipe.pretrain.get("epochs", 0) > 0,
        checkpoint_dir=out / "checkpoint",
        resume=resume,
        fingerprint=fingerprint,
    )
    metrics = {"recipe": recipe.name, **metrics, "dataset": spec["name"], "device": str(device)}
    meta = {"recipe": recipe.name, **(metadata or {})}
    save_run(out, result, dense, arch=arch, data=spec, metadata=meta)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    return RecipeRun(recipe, data, dense, result, metrics, out)
