"""The reliability report: diagnose() sections, write_report() files, overwrite protection, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pyroprune.data import load_digits
from pyroprune.diagnostics.datatree import load_datatree
from pyroprune.diagnostics.report import FIGURES, SECTIONS, Diagnostics, diagnose, write_report
from pyroprune.diagnostics.run import RunArtifacts
from pyroprune.infer import train_plain
from pyroprune.models import BMRSMLP
from pyroprune.pipeline import PruneConfig, prune_network

NUM_DRAWS = 20
KHAT_DRAWS = 100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = ("report.md", "diagnostics.json", "posterior.nc") + tuple(f"figures/{name}" for name in FIGURES)
SECTION_KEYS = ("setup", "models", "comparison", "conformal", "structures", "khat", "stability")


@pytest.fixture(scope="module")
def fitted():
    """Two seeds of bmrs-u8 on a briefly trained MLP (the same dense start), wrapped in RunArtifacts."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        data = load_digits()
        net = BMRSMLP(in_features=64, hidden=8, depth=2)
        train_plain(net, data.train, epochs=3, progress=False, seed=0)
        runs = []
        for seed in (0, 1):
            config = PruneConfig(method="bmrs-u8", epochs=3, finetune_epochs=1, seed=seed)
            r = prune_network(net, data, config, progress=False)
            runs.append(RunArtifacts(r.gated, r.guide, r.posterior, r.plan, r.pruned, net, "bmrs-u8", seed))
    return data, runs


@pytest.fixture(scope="module")
def diagnostics(fitted):
    data, runs = fitted
    return diagnose(runs, data, num_draws=NUM_DRAWS, khat_draws=KHAT_DRAWS)


@pytest.fixture(scope="module")
def single(fitted):
    data, runs = fitted
    return diagnose(runs[:1], data, num_draws=NUM_DRAWS, khat_draws=KHAT_DRAWS)


def _numbers(x):
    """Every number in a nested summary."""
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


def test_diagnose_returns_every_section(fitted, diagnostics):
    data, runs = fitted
    s = diagnostics.summary
    assert isinstance(diagnostics, Diagnostics)
    assert set(SECTION_KEYS) <= set(s)
    assert s["setup"]["seeds"] == [0, 1] and s["setup"]["sizes"]["test"] == len(data.test)
    assert set(s["models"]) == {"dense_network", "dense_bayesian", "pruned", "pruned_ensemble"}
    for name, metrics in s["models"].items():
        for key in ("accuracy", "nll", "brier", "ece", "adaptive_ece", "mean_entropy", "misclassification_auroc"):
            assert math.isfinite(metrics[key]), (name, key)
        assert 0 <= metrics["accuracy"] <= 1
    assert math.isfinite(s["models"]["dense_bayesian"]["mean_mutual_information"])
    assert "mean_mutual_information" not in s["models"]["pruned"]
    for key in ("agreement", "mean_kl", "mean_js", "accuracy_difference", "accuracy_difference_low"):
        assert math.isfinite(s["comparison"][key])
    for model in ("dense_bayesian", "pruned"):
        assert set(s["conformal"][model]) == {"0.1", "0.05"}
        for v in s["conformal"][model].values():
            assert 0 <= v["coverage"] <= 1 and v["mean_set_size"] >= 1
    assert s["khat"]["available"] and math.isfinite(s["khat"]["khat"])
    assert s["khat"]["num_draws"] == KHAT_DRAWS and 1 <= s["khat"]["ess_of_weights"] <= KHAT_DRAWS
    assert s["stability"]["available"] and s["stability"]["num_runs"] == 2
    assert all(math.isfinite(v) for v in _numbers(s))
    # the DataTree: chains = runs
    assert diagnostics.datatree["posterior"].sizes["chain"] == 2
    assert diagnostics.datatree["posterior"].sizes["draw"] == NUM_DRAWS
    assert diagnostics.arrays["probs"]["dense_bayesian"].shape == (len(data.test), data.num_classes)


def test_structures_keep_probabilities(fitted, diagnostics):
    _, runs = fitted
    structures = diagnostics.summary["structures"]
    assert set(structures["sites"]) == {site.name for site in runs[0].gated.sites}
    total_uncertain = 0
    for site in runs[0].gated.sites:
        entry = structures["sites"][site.name]
        for key in ("keep_probability", "keep_probability_all_runs", "run_keep_share", "hdi_low", "hdi_high"):
            assert len(entry[key]) == site.size
        for key in ("keep_probability", "keep_probability_all_runs", "run_keep_share"):
            assert all(0.0 <= p <= 1.0 for p in entry[key])
        assert all(0 <= lo <= hi <= 1 for lo, hi in zip(entry["hdi_low"], entry["hdi_high"], strict=True))
        assert entry["plan_keep"] == list(runs[0].plan[site.name].keep)
        for u in entry["uncertain"]:  # the flagging rule, checked on whatever the fit produced
            p, keep = u["keep_probability"], u["plan_keep"]
            assert 0.1 <= p <= 0.9 or keep != (p > 0.5)
        flagged = {u["index"] for u in entry["uncertain"]}
        for c, (p, keep) in enumerate(zip(entry["keep_probability"], entry["plan_keep"], strict=True)):
            assert (c in flagged) == (0.1 <= p <= 0.9 or keep != (p > 0.5))
        total_uncertain += entry["num_uncertain"]
        share = diagnostics.arrays["active_share"][site.name]
        assert share.shape == (2, NUM_DRAWS) and ((share >= 0) & (share <= 1)).all()
    assert structures["total"]["num_uncertain"] == total_uncertain


def test_write_report_files_and_overwrite_protection(fitted, diagnostics, tmp_path):
    out = tmp_path / "report"
    written = write_report(diagnostics, None, out)
    assert set(written) == set(FILES)
    for name in FILES:
        assert (out / name).is_file(), name
    for name in FIGURES:
        png = (out / "figures" / name).read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000, name
    text = (out / "report.md").read_text()
    for heading in SECTIONS:
        assert f"## {heading}" in text, heading
    for name in FIGURES:
        assert f"](figures/{name})" in text, name
    assert "not** an MCMC effective sample size" in text and "R-hat" in text
    summary = json.loads((out / "diagnostics.json").read_text())
    assert summary == json.loads(json.dumps(diagnostics.summary))
    tree = load_datatree(out / "posterior.nc")
    assert tree["posterior"].sizes["chain"] == 2
    assert tree.attrs["method"] == "bmrs-u8"
    # no temporary files left behind
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]

    before = {name: (out / name).read_bytes() for name in FILES}
    mtimes = {name: (out / name).stat().st_mtime_ns for name in FILES}
    with pytest.raises(FileExistsError, match="report.md|diagnostics.json|posterior.nc|figures"):
        write_report(diagnostics, None, out)
    assert {name: (out / name).read_bytes() for name in FILES} == before
    assert {name: (out / name).stat().st_mtime_ns for name in FILES} == mtimes

    # one existing file is enough to refuse, and it is named
    other = tmp_path / "partial"
    (other / "figures").mkdir(parents=True)
    (other / "figures" / "khat.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="khat.png"):
        write_report(diagnostics, None, other)
    assert sorted(p.name for p in other.rglob("*")) == ["figures", "khat.png"]
    assert (other / "figures" / "khat.png").read_bytes() == b"mine"

    written = write_report(diagnostics, None, out, force=True)
    assert all(Path(p).is_file() for p in written.values())
    assert json.loads((out / "diagnostics.json").read_text()) == summary


def test_single_run_says_stability_needs_two_seeds(fitted, single, tmp_path):
    data, _ = fitted
    s = single.summary
    assert not s["stability"]["available"]
    assert ">= 2 seeds" in s["stability"]["note"]
    assert "pruned_ensemble" not in s["models"]
    assert "run_keep_share" not in next(iter(s["structures"]["sites"].values()))
    assert single.datatree["posterior"].sizes["chain"] == 1
    write_report(single, data, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "stability needs >= 2 seeds" in text


def test_write_report_from_runs(fitted, tmp_path):
    data, runs = fitted
    written = write_report(runs[:1], data, tmp_path, num_draws=5, khat_draws=30)
    assert set(written) == set(FILES)
    assert json.loads((tmp_path / "diagnostics.json").read_text())["setup"]["num_draws_per_run"] == 5


def test_bad_input(fitted, tmp_path):
    data, runs = fitted
    with pytest.raises(ValueError, match="runs is empty"):
        diagnose([], data)
    with pytest.raises(ValueError, match="runs is empty"):
        write_report([], data, tmp_path)
    with pytest.raises(ValueError, match="data is required"):
        write_report(runs, None, tmp_path)
    with pytest.raises(ValueError, match="khat_draws"):
        diagnose(runs, data, khat_draws=10)
    assert not any(tmp_path.iterdir())


def test_runs_with_different_sites_are_rejected(fitted):
    data, runs = fitted
    other_net = BMRSMLP(in_features=64, hidden=6, depth=2)
    with torch.random.fork_rng(devices=[]):
        r = prune_network(
            other_net, data, PruneConfig(method="bmrs-u8", epochs=1, finetune_epochs=0, seed=0), progress=False
        )
    other = RunArtifacts(r.gated, r.guide, r.posterior, r.plan, r.pruned, None, "bmrs-u8", 5)
    with pytest.raises(ValueError, match=r"runs\[1\].*gate site 'features.0'.*6 structures"):
        diagnose([runs[0], other], data)
