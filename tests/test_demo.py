"""The main job, at its defaults: the pruned MLP is smaller and within 2 points of the dense accuracy."""

import json

from pyroprune.cli import main


def test_demo_at_defaults_prunes_and_keeps_accuracy(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "bmrs-u8"
    assert m["pruned"]["params"] < 0.5 * m["dense"]["params"]
    assert m["pruned"]["macs"] < m["dense"]["macs"]
    assert m["pruned"]["accuracy"] >= m["dense"]["accuracy"] - 0.02
    assert m["dense"]["accuracy"] > 0.9
