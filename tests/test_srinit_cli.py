"""SR-init from the command line, end to end on scikit-learn's digits as 8x8 images (seconds, no download):
``pyroprune prune`` of the built-in SR-init recipes with ``--set`` overrides, ``report``, ``compare``, the run
directories read back by ``load_run``, and one-line errors for bad settings."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

import pyroprune.experiment
import pyroprune.runs
from pyroprune.cli import main
from pyroprune.experiment import RecipeRun, run_recipe
from pyroprune.runs import load_run
from pyroprune.sensitivity import BlockSensitivity

#: The MNIST recipes shrunk to digits: 8x8 images (stride-1 stem), 300 validation images, 2 dense epochs, 2
#: re-initialisations per block, 50 bootstrap draws, 1 fine-tuning epoch.
DIGITS = [
    "data.name=digits",
    "data.flatten=false",
    "data.val_size=300",
    "model.kwargs.stem_stride=1",
    "pretrain.epochs=2",
    "prune.reinit_seeds=2",
    "prune.bootstrap_draws=50",
    "prune.finetune_epochs=1",
]
#: Removes the least sensitive blocks until 30 % of the parameters are gone (the drops on digits after two epochs
#: are 10-50 points, above the recipe's tau of 1 point, which would remove nothing).
BUDGET = "prune.method_params={params_reduction = 0.3}"
#: The combined recipe: the same budget for its depth stage, one fine-tuning epoch after it, one SVI epoch.
COMBINED = [*DIGITS, "prune.depth_params={params_reduction = 0.3}", "prune.depth_finetune_epochs=1", "prune.epochs=1"]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _prune(recipe: str, sets: list[str], out) -> RecipeRun:
    """``pyroprune prune`` in this process; returns what its ``run_recipe`` call produced (the networks in memory)."""
    runs = []

    def recording(*args, **kwargs):
        runs.append(run_recipe(*args, **kwargs))
        return runs[-1]

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(pyroprune.experiment, "run_recipe", recording)
        assert main(["prune", recipe, *_sets(sets), "--quiet", "--out", str(out)]) == 0
    runs[0].printed = printed.getvalue()  # what the command printed
    return runs[0]


@pytest.fixture(scope="module")
def srinit_run(tmp_path_factory):
    return _prune("srinit-resnet20-mnist", [*DIGITS, BUDGET], tmp_path_factory.mktemp("srinit") / "run")


@pytest.fixture(scope="module")
def combined_run(tmp_path_factory):
    return _prune("srinit-bmrs-resnet20-mnist", COMBINED, tmp_path_factory.mktemp("combined") / "run")


@pytest.fixture(scope="module")
def srinit_dir(srinit_run):
    return srinit_run.out


@pytest.fixture(scope="module")
def combined_dir(combined_run):
    return combined_run.out


def test_prune_srinit_writes_a_run_without_gates(srinit_dir):
    for name in ("run.json", "plan.json", "metrics.json", "model/model.json", "dense/model.json"):
        assert (srinit_dir / name).is_file(), name
    assert not (srinit_dir / "posterior").exists()  # SR-init fits no gates
    sensitivity = BlockSensitivity.load(srinit_dir / "depth" / "sensitivity.json")
    assert sensitivity.drops.shape == (7, 2) and sensitivity.draws.shape == (7, 50)  # 7 identity blocks, R = 2
    assert sensitivity.num_examples == 300 and sensitivity.split == "val"
    metrics = json.loads((srinit_dir / "metrics.json").read_text())
    assert metrics["method"] == "srinit" and metrics["dataset"] == "digits"
    depth = metrics["depth"]
    assert depth["blocks_total"] == "3-2-2" and metrics["dense"]["kept"] == "3-2-2"
    assert metrics["pruned"]["kept"] == depth["blocks_kept"]
    kept = [int(k) for k in depth["blocks_kept"].split("-")]
    assert sum(kept) == 7 - len(depth["removed_blocks"]) and depth["removed_blocks"]
    assert depth["params"]["params_reduction"] == 0.3
    assert metrics["params_reduction"] >= 1 / 0.7 - 1e-9  # the budget is met
    assert metrics["macs_reduction"] > 1


def test_prune_prints_the_blocks(srinit_run, combined_run):
    for run in (srinit_run, combined_run):
        depth = run.result.depth
        kept = f"removable blocks kept per stage {depth.plan.kept_string()} of {depth.plan.total_string()}"
        assert kept in run.printed
        assert f"SR-init: removed {', '.join(depth.removed)} (pyroprune report" in run.printed


def test_compare_lists_both_run_kinds(srinit_dir, combined_dir, capsys):
    capsys.readouterr()
    assert main(["compare", str(srinit_dir), str(combined_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0].split()[:4] == ["run", "model", "data", "method"]
    assert "srinit" in out[1] and "small-resnet" in out[1] and "digits" in out[1]
    assert "bmrs-n" in out[2]


def test_report_on_an_srinit_run(srinit_dir, tmp_path, capsys):
    assert main(["report", str(srinit_dir), "--out", str(tmp_path / "report"), "--draws", "10"]) == 0
    assert (tmp_path / "report" / "report.md").is_file()


def test_depth_then_width_recipe_end_to_end(srinit_dir, combined_dir):
    metrics = json.loads((combined_dir / "metrics.json").read_text())
    assert metrics["method"] == "bmrs-n"
    run = json.loads((combined_dir / "run.json").read_text())
    assert run["config"]["depth"] == "srinit" and len(run["depth"]["finetune"]) == 1  # depth_finetune_epochs
    for name in ("depth/plan.json", "depth/sensitivity.json", "posterior/guide.safetensors"):
        assert (combined_dir / name).is_file(), name
    # the same dense training and the same scoring as the SR-init run: the same blocks go
    alone = json.loads((srinit_dir / "metrics.json").read_text())
    assert metrics["depth"]["removed_blocks"] == alone["depth"]["removed_blocks"]
    assert metrics["dense"]["accuracy"] == alone["dense"]["accuracy"]
    # the width plan is over the channels of the shallower network
    assert metrics["pruned"]["params"] <= alone["pruned"]["params"]


@pytest.mark.parametrize("which", ["srinit_run", "combined_run"])
def test_load_run_round_trip(which, request):
    run = request.getfixturevalue(which)
    loaded, data = load_run(run.out)
    x = data.test.x
    assert torch.equal(data.test.y, run.data.test.y) and torch.equal(x, run.data.test.x)
    run.result.pruned.eval()
    with torch.no_grad():
        assert torch.equal(loaded.pruned(x), run.result.pruned(x))
        assert torch.equal(loaded.dense(x), run.dense.eval()(x))
    assert loaded.depth is not None
    assert loaded.depth.removed == run.result.depth.removed and loaded.depth.removed
    assert torch.equal(loaded.depth.sensitivity.drops, run.result.depth.sensitivity.drops.double())
    assert [sp.keep for sp in loaded.plan.sites] == [sp.keep for sp in run.result.plan.sites]
    if run.recipe.prune.schedule == "reinit":
        assert loaded.gated is None and loaded.posterior is None
    else:  # the gated network is the shallower one
        assert loaded.gated is not None and [s.name for s in loaded.gated.sites] == [
            sp.site.name for sp in run.result.plan.sites
        ]


@pytest.mark.parametrize(
    "recipe,item,expected",
    [
        ("srinit-resnet20-mnist", "prune.method_params.tau=-", "'prune.method_params.tau' must be a number"),
        ("srinit-resnet20-mnist", "prune.method_params.params_reduction=0.5", "exactly one of 'tau'"),
        ("srinit-resnet20-mnist", "prune.method_params.prob=0", "'prob' must be in (0, 1]"),
        ("srinit-resnet20-mnist", "prune.method_params={params_reduction = 1.5}", "must be a fraction in (0, 1)"),
        ("srinit-resnet20-mnist", "prune.method_params.taus=1", "did you mean 'prune.method_params.tau'"),
        ("srinit-resnet20-mnist", "prune.reinit_seeds=0", "'prune.reinit_seeds' must be >= 1"),
        ("srinit-resnet20-mnist", "prune.bootstrap_draws=0", "'prune.bootstrap_draws' must be >= 1"),
        ("srinit-resnet20-mnist", "prune.reinit_init=xavier", "'prune.reinit_init' must be one of"),
        ("srinit-resnet20-mnist", "prune.bootstrap=efron", "'prune.bootstrap' must be one of"),
        ("srinit-resnet20-mnist", "prune.schedule=post-training", "needs schedule 'reinit'"),
        ("srinit-resnet20-mnist", "prune.depth=srinit", "adds SR-init before a width method"),
        ("srinit-bmrs-resnet20-mnist", "prune.depth=deep", "'prune.depth' must be one of none, srinit"),
        (
            "srinit-bmrs-resnet20-mnist",
            "prune.depth_params.flops_reduction=0.2",
            "depth_params': srinit: give exactly one",
        ),
        ("srinit-bmrs-resnet20-mnist", "prune.depth_params.tau=x", "'prune.depth_params.tau' must be a number"),
        ("srinit-bmrs-resnet20-mnist", "prune.depth_finetune_epochs=-1", "'prune.depth_finetune_epochs' must be >= 0"),
    ],
)
def test_bad_settings_are_one_line_errors(recipe, item, expected, tmp_path, capsys):
    capsys.readouterr()
    assert main(["prune", recipe, "--set", item, "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyroprune: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not (tmp_path / "run").exists()  # rejected before anything is written


def test_budget_out_of_reach_is_a_one_line_error(tmp_path, capsys):
    sets = [*DIGITS, "pretrain.epochs=0", "prune.method_params={params_reduction = 0.99}"]
    capsys.readouterr()
    assert main(["prune", "srinit-resnet20-mnist", *_sets(sets), "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyroprune: error: ") and err.count("\n") == 1, err
    assert "'params_reduction' = 0.99 is out of reach" in err and "removing every removable block removes" in err
