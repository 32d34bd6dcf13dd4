"""Run directories: a demo run is rebuilt exactly from its files; incomplete ones give clear errors."""

import json
import shutil

import pytest
import torch

from pyroprune.cli import main
from pyroprune.runs import load_run

FAST = ["--epochs", "2", "--pretrain-epochs", "2", "--finetune-epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo"
    assert main(["demo", "--out", str(out), *FAST]) == 0
    return out


def test_load_run_rebuilds_the_fitted_run(run_dir):
    run, data = load_run(run_dir)
    assert run.method == "bmrs-u8" and run.seed == 0
    plan_doc = json.loads((run_dir / "plan.json").read_text())
    assert [sp.site.name for sp in run.plan.sites] == [s["site"]["name"] for s in plan_doc["sites"]]
    x = data.test.x
    # the pruned network's test accuracy is the one recorded in metrics.json
    metrics = json.loads((run_dir / "metrics.json").read_text())
    acc = (run.pruned(x).argmax(-1) == data.test.y).double().mean().item()
    assert acc == pytest.approx(metrics["pruned"]["accuracy"])
    acc_dense = (run.dense(x).argmax(-1) == data.test.y).double().mean().item()
    assert acc_dense == pytest.approx(metrics["dense"]["accuracy"])
    # posterior means fold into the plan exactly as saved
    for sp in run.plan.sites:
        torch.testing.assert_close(
            run.posterior.mean(sp.site.name).double(), torch.tensor(sp.fold, dtype=torch.float64), rtol=1e-5, atol=1e-7
        )


def test_incomplete_or_foreign_run_directories(run_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "posterior" / "guide.safetensors").unlink()
    (broken / "plan.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing plan\.json, posterior/guide\.safetensors"):
        load_run(broken)
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    doc = json.loads((other / "run.json").read_text())
    doc["version"] = 99
    (other / "run.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="version 99"):
        load_run(other)
    (other / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="not a pyroprune run"):
        load_run(other)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_run(tmp_path / "nowhere")


def test_report_command_rebuilds_and_refuses_to_overwrite(run_dir, tmp_path, capsys):
    # the demo already wrote run_dir/report: without --force nothing is replaced
    before = (run_dir / "report" / "report.md").read_bytes()
    assert main(["report", str(run_dir), "--draws", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyroprune: error:") and "\n" not in err and "report" in err
    assert (run_dir / "report" / "report.md").read_bytes() == before
    out = tmp_path / "rep"
    assert main(["report", str(run_dir), "--out", str(out), "--draws", "30"]) == 0
    text = (out / "report.md").read_text()
    assert "PSIS" in text and "figures/reliability_diagram.png" in text
    assert "loo_approximate_posterior" in text and "elpd = " in text
    for fig in ("reliability_diagram", "keep_probability_forest", "gate_posteriors", "accuracy_coverage", "khat"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for part in ("dense", "pruned"):
        assert {"ece", "nll", "brier"} <= set(metrics[part])
    assert "khat" in metrics
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_report_over_two_seeds_adds_stability(run_dir, tmp_path, capsys):
    second = tmp_path / "seed1"
    assert main(["demo", "--out", str(second), "--seed", "1", *FAST]) == 0
    out = tmp_path / "both"
    assert main(["report", str(run_dir), str(second), "--out", str(out), "--draws", "30"]) == 0
    summary = json.loads((out / "diagnostics.json").read_text())
    assert summary["stability"]["num_runs"] == 2
    # runs fitted on different splits are refused
    doc = json.loads((second / "run.json").read_text())
    doc["data"]["seed"] = 7
    (second / "run.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["report", str(run_dir), str(second), "--out", str(tmp_path / "x")]) == 2
    assert "different data splits" in capsys.readouterr().err
