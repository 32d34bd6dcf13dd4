"""`pyroprune prune RECIPE` on real MNIST (the shared copy), `compare`, and resuming a killed run."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyroprune.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "bmrs-mlp-mnist.toml"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/MNIST/raw is not present")
FAST = ["--set", "prune.finetune_epochs=0", "--set", "prune.batch_size=512", "--quiet"]


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "MNIST" / "raw").mkdir(parents=True)
    for f in SHARED.glob("*.gz"):
        shutil.copy(f, root / "MNIST" / "raw" / f.name)
    return root


def cli(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "pyroprune.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_killed_run_resumes_to_the_same_plan(mnist_root, tmp_path, capsys):
    args = [str(RECIPE), "--data-root", str(mnist_root), "--set", "prune.epochs=3", *FAST]
    full = tmp_path / "full"
    assert main(["prune", *args, "--out", str(full)]) == 0
    killed = tmp_path / "killed"
    proc = cli("prune", *args, "--out", str(killed))
    ckpt = killed / "checkpoint" / "checkpoint.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and json.loads(ckpt.read_text())["epoch"] >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the run finished before it could be killed"
    assert not (killed / "plan.json").exists()
    assert main(["prune", *args, "--out", str(killed), "--resume"]) == 0
    a = json.loads((full / "plan.json").read_text())
    b = json.loads((killed / "plan.json").read_text())
    assert [s["keep"] for s in a["sites"]] == [s["keep"] for s in b["sites"]]
    assert [s["score"] for s in a["sites"]] == [s["score"] for s in b["sites"]]  # bitwise
    capsys.readouterr()
    assert main(["compare", str(full), str(killed)]) == 0
    out = capsys.readouterr().out
    assert "bmrs-mlp" in out and "mnist" in out


def test_prune_errors_are_one_line(mnist_root, tmp_path, capsys):
    assert main(["prune", str(RECIPE), "--set", "prune.epoch=3", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "prune.epoch" in err and "prune.epochs" in err and "\n" not in err
    assert main(["prune", str(tmp_path / "none.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["prune", str(RECIPE), "--out", str(tmp_path / "b"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prune", str(RECIPE), "--out", str(tmp_path / "c"), "--data-root", str(empty)]) == 2
    assert "MNIST" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert "metrics.json" in capsys.readouterr().err


def test_report_on_a_recipe_run_takes_the_data_root(mnist_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's own root ("data") does not exist here
    out = tmp_path / "run"
    args = [str(RECIPE), "--data-root", str(mnist_root), "--set", "prune.epochs=1", *FAST, "--out", str(out)]
    assert main(["prune", *args]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--draws", "4"]) == 2
    err = capsys.readouterr().err
    assert "mnist" in err.lower() and len(err.strip().splitlines()) == 1
    assert main(["report", str(out), "--draws", "4", "--data-root", str(mnist_root)]) == 0
    assert (out / "report" / "report.md").is_file()
