"""The command line: the demo's outputs and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pyroprune.cli import main
from pyroprune.plan import PruningPlan
from pyroprune.serialization import load_pruned

FAST = ["--epochs", "2", "--pretrain-epochs", "3", "--finetune-epochs", "1", "--quiet"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pyroprune.cli", *args], capture_output=True, text=True, timeout=300)


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("pyroprune ")
    r = run_cli("demo", "--help")
    assert r.returncode == 0 and "--method" in r.stdout


def test_demo_writes_metrics_plan_and_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "dense" in printed and "pruned" in printed and "latency" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for part in ("dense", "pruned"):
        assert set(metrics[part]) >= {"accuracy", "params", "macs", "kept", "latency_ms"}
        assert 0.0 <= metrics[part]["accuracy"] <= 1.0
    assert metrics["pruned"]["params"] <= metrics["dense"]["params"]
    plan = PruningPlan.load(out / "plan.json")
    assert metrics["pruned"]["kept"] == plan.kept_string(64)
    model = load_pruned(out / "model")
    x = torch.randn(3, 64)
    assert model(x).shape == (3, 10)
    # the model directory holds no pickle
    assert sorted(os.listdir(out / "model")) == ["model.json", "model.safetensors"]


def one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("pyroprune: error:") and "\n" not in err, err
    for n in needles:
        assert n in err
    return err


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    one_line_error(capsys, ["demo", "--out", str(tmp_path / "a"), "--method", "nope"], "nope", "bmrs-n")
    one_line_error(
        capsys,
        ["demo", "--out", str(tmp_path / "b"), "--prior-low", "0", "--prior-high", "-1"],
        "--prior-low",
    )
    if not torch.cuda.is_available():
        one_line_error(capsys, ["demo", "--out", str(tmp_path / "c"), "--device", "cuda"], "CUDA")
    one_line_error(capsys, ["demo", "--out", str(tmp_path / "d"), "--device", "tpu"], "tpu")
    one_line_error(capsys, ["demo", "--out", str(tmp_path / "e"), "--schedule", "weekly"], "weekly")
    # an existing, non-empty directory is never overwritten without --force
    full = tmp_path / "full"
    full.mkdir()
    (full / "metrics.json").write_text("mine")
    one_line_error(capsys, ["demo", "--out", str(full)], "--force")
    assert (full / "metrics.json").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(capsys, ["demo", "--out", str(a_file)], "not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    one_line_error(capsys, ["demo", "--out", str(ro / "x")], "cannot write")


def test_unwritable_directory_via_path_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    one_line_error(capsys, ["demo", "--out", str(blocker / "sub")], "cannot write")


def test_unknown_option_is_one_line_without_traceback():
    r = run_cli("demo", "--frobnicate")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
