"""The SR-init part of the reliability report: the block sensitivity section and figure, SR-init alone (no gate
posterior) through diagnose / write_report / the CLI, SR-init before a width method, several seeds, bad runs."""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import replace

import pytest
import torch

from pyroprune.blocks import find_residual_blocks
from pyroprune.cli import main
from pyroprune.data import load_digits
from pyroprune.diagnostics.blocks import BLOCK_FIGURE, block_summary, network_order
from pyroprune.diagnostics.report import FIGURES, GATE_FIGURES, SECTIONS, diagnose, write_report
from pyroprune.infer import train_plain
from pyroprune.infer.srinit import DepthStage
from pyroprune.methods.srinit import block_plan
from pyroprune.models import small_resnet
from pyroprune.pipeline import PruneConfig, prune_network
from pyroprune.runs import artifacts_from_result, save_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAU, PROB = 2.0, 0.5
ARCH = {"name": "small-resnet", "kwargs": {"depth": 14, "num_classes": 10, "in_channels": 1, "width": 8}}
#: The sections about the gate posterior, which SR-init alone does not have.
GATE_SECTIONS = (
    "Accuracy across posterior draws",
    "Dense Bayesian vs pruned",
    "Variational approximation (PSIS k-hat)",
    "Uncertain pruning decisions",
)
NOT_APPLICABLE = "not applicable: sr-init fits no gate posterior"


def _srinit_config(seed: int) -> PruneConfig:
    return PruneConfig(
        method="srinit",
        schedule="reinit",
        method_params={"tau": TAU, "prob": PROB},
        finetune_epochs=1,
        reinit_seeds=3,
        bootstrap_draws=400,
        seed=seed,
    )


@pytest.fixture(scope="module")
def fitted():
    """A briefly trained small ResNet on 8x8 digits; SR-init alone with seeds 0 and 1 (tau rule) and SR-init (a
    parameter budget) before bmrs-n, all from the same dense network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        data = load_digits(seed=0, image=True)
        net = small_resnet(**ARCH["kwargs"])
        train_plain(net, data.train, epochs=3, batch_size=64, lr=3e-3, val=data.val, seed=0, progress=False)
        results = [prune_network(net, data, _srinit_config(seed), progress=False) for seed in (0, 1)]
        combined = prune_network(
            net,
            data,
            PruneConfig(
                method="bmrs-n",
                epochs=1,
                finetune_epochs=1,
                depth="srinit",
                depth_params={"params_reduction": 0.2},
                reinit_seeds=3,
                bootstrap_draws=400,
            ),
            progress=False,
        )
    runs = [artifacts_from_result(r, dense=net) for r in results]
    return data, net, results, runs, artifacts_from_result(combined, dense=net)


@pytest.fixture(scope="module")
def single(fitted):
    data, _, _, runs, _ = fitted
    return diagnose(runs[:1], data)


def _section(text: str, heading: str) -> str:
    """The body of one ``## heading`` section of report.md."""
    start = text.index(f"## {heading}\n") + len(heading) + 4
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else None]


def test_pure_srinit_report_files_and_sections(fitted, single, tmp_path):
    data, net, results, runs, _ = fitted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = write_report(single, None, tmp_path)
    assert not caught, [str(w.message) for w in caught]  # figures included: no layout or font warnings
    figures = [n for n in FIGURES if n not in GATE_FIGURES] + [BLOCK_FIGURE]
    assert set(written) == {"report.md", "diagnostics.json"} | {f"figures/{n}" for n in figures}
    assert not (tmp_path / "posterior.nc").exists()
    for name in figures:
        png = (tmp_path / "figures" / name).read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000, name
    text = (tmp_path / "report.md").read_text()
    for heading in SECTIONS:
        assert f"## {heading}\n" in text, heading
    for heading in GATE_SECTIONS:
        assert NOT_APPLICABLE in _section(text, heading).lower(), heading
    assert f"](figures/{BLOCK_FIGURE})" in text
    for name in GATE_FIGURES:
        assert f"](figures/{name})" not in text and f"`{name}`" in _section(text, "Figures")
    blocks = _section(text, "Block sensitivity (SR-init)")
    assert "P(Δ ≤ τ)" in blocks and f"τ = {TAU:g} pp" in blocks
    assert f"validation split ({len(data.val)} examples" in blocks
    # the dense network stands in for the dense Bayesian model
    assert "KL(dense network ‖ pruned)" in _section(text, "Dense Bayesian vs pruned")
    summary = json.loads((tmp_path / "diagnostics.json").read_text())
    assert summary == json.loads(json.dumps(single.summary))


def test_block_rows_match_the_sensitivity(fitted, single):
    data, net, results, runs, _ = fitted
    depth = results[0].depth
    s = depth.sensitivity
    blocks = single.summary["blocks"]
    rows = {r["block"]: r for r in blocks["rows"]}
    # network order: the execution order of find_residual_blocks, removable and fixed interleaved
    assert [r["block"] for r in blocks["rows"]] == [b.path for b in find_residual_blocks(net, data.val.x[:1])]
    assert s.fixed, "the small ResNet has projection-shortcut blocks"
    for expected in s.table(0.95, TAU):
        row = rows[expected["block"]]
        for key in ("stage", "params", "macs"):
            assert row[key] == expected[key], (expected["block"], key)
        if "fixed" in expected:
            assert row["decision"] == "fixed" and row["reason"] == expected["fixed"] and row["reason"]
            assert "mean" not in row and "p_below" not in row
            continue
        for key in ("mean", "sd", "low", "high", "p_below"):
            assert row[key] == pytest.approx(expected[key], abs=1e-9), (expected["block"], key)
        assert row["decision"] == ("removed" if row["block"] in depth.removed else "kept")
        assert row["seed_drops"] == pytest.approx(s.drops[s.index(row["block"])].tolist())
        assert row["uncertain"] == (0.1 <= row["p_below"] <= 0.9)
        assert "run_removed_share" not in row  # one run
    setup = blocks["setup"]
    assert setup["split"] == "val" and setup["num_examples"] == len(data.val)
    assert setup["num_seeds"] == 3 and setup["num_draws"] == 400
    assert setup["init"] == "kaiming" and setup["bootstrap"] == "bayesian"
    assert setup["baseline_accuracy"] == pytest.approx(s.baseline_accuracy)
    assert setup["rule"] == {"tau": TAU, "prob": PROB}
    totals = blocks["totals"]
    assert totals["removed"] == len(depth.removed) and totals["fixed"] == len(s.fixed)
    assert totals["removed_params"] == sum(b.params for b in s.blocks if b.path in depth.removed)


def test_fixed_blocks_carry_their_reason(fitted, single, tmp_path):
    _, _, results, _, _ = fitted
    write_report(single, None, tmp_path)
    text = (tmp_path / "report.md").read_text()
    table = _section(text, "Block sensitivity (SR-init)")
    for b in results[0].depth.sensitivity.fixed:
        line = next(li for li in table.splitlines() if li.startswith(f"| `{b.path}` |"))
        assert f"fixed: {b.reason}" in line and "projection shortcut" in line


def test_pure_srinit_summary_without_gates(fitted, single):
    data, *_ = fitted
    s = single.summary
    assert single.datatree is None
    assert s["setup"]["has_gates"] is False and s["setup"]["depth"] is True
    assert set(s["models"]) == {"dense_network", "pruned"}
    assert set(s["conformal"]) == {"dense_network", "pruned"}
    for model in s["conformal"].values():
        for v in model.values():
            assert 0 <= v["coverage"] <= 1 and v["mean_set_size"] >= 1
    c = s["comparison"]
    assert c["reference"] == "dense_network"
    assert all(math.isfinite(c[k]) for k in ("agreement", "mean_kl", "accuracy_difference_low"))
    for key in ("draws", "structures", "khat"):
        assert s[key]["available"] is False and "SR-init fits no gate posterior" in s[key]["reason"], key
    assert not s["stability"]["available"] and ">= 2 seeds" in s["stability"]["note"]
    assert single.arrays["probs"]["pruned"].shape == (len(data.test), data.num_classes)


def test_two_seeds_stability_and_removal_share(fitted, tmp_path):
    data, _, _, runs, _ = fitted
    d = diagnose(runs, data)
    s = d.summary
    assert s["stability"]["available"] and s["stability"]["num_runs"] == 2
    assert set(s["stability"]["sites"]) == {sp.site.name for sp in runs[0].plan.sites}
    assert "pruned_ensemble" in s["models"]
    assert s["blocks"]["removed_per_run"] == {f"seed {r.seed}": r.depth.removed for r in runs}
    for row in s["blocks"]["rows"]:
        if row["decision"] == "fixed":
            assert row["run_removed_share"] is None
        else:
            assert row["run_removed_share"] == sum(row["block"] in r.depth.removed for r in runs) / 2
    write_report(d, None, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Share of runs removing it" in _section(text, "Block sensitivity (SR-init)")
    assert "2 runs. Mean Jaccard index" in _section(text, "Stability across seeds")


def test_combined_run_has_gate_and_block_sections(fitted, tmp_path):
    data, _, _, _, combined = fitted
    written = write_report([combined], data, tmp_path, num_draws=10, khat_draws=30)
    assert {"posterior.nc", f"figures/{BLOCK_FIGURE}"} <= set(written)
    assert {f"figures/{n}" for n in FIGURES} <= set(written)
    text = (tmp_path / "report.md").read_text()
    for heading in SECTIONS:
        assert f"## {heading}\n" in text, heading
        assert NOT_APPLICABLE not in _section(text, heading).lower(), heading
    assert "uncertain of" in _section(text, "Uncertain pruning decisions")
    blocks = _section(text, "Block sensitivity (SR-init)")
    assert "budget `params_reduction` = 0.2" in blocks and "P(Δ ≤ τ)" not in blocks
    s = json.loads((tmp_path / "diagnostics.json").read_text())
    assert s["blocks"]["setup"]["before_width_method"] is True
    assert s["comparison"]["reference"] == "dense_bayesian" and s["structures"]["sites"]
    assert s["blocks"]["totals"]["removed_params_fraction"] >= 0.2
    png = (tmp_path / "figures" / BLOCK_FIGURE).read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


def test_without_dense_network(fitted, tmp_path):
    data, _, _, runs, _ = fitted
    run = replace(runs[0], dense=None)
    d = diagnose([run], data)
    assert set(d.summary["models"]) == {"pruned"} and set(d.summary["conformal"]) == {"pruned"}
    assert d.summary["comparison"]["available"] is False
    # without the network, the blocks are put in order by their paths: the same order here
    assert [r["block"] for r in d.summary["blocks"]["rows"]] == [r["block"] for r in block_summary(runs[:1])["rows"]]
    write_report(d, None, tmp_path)
    assert "not computed either" in _section((tmp_path / "report.md").read_text(), "Dense Bayesian vs pruned")


def test_network_order_by_path_compares_numbers():
    from pyroprune.blocks import ResidualBlock

    def block(path, removable=True):
        return ResidualBlock(path, path.rpartition(".")[0], removable, "" if removable else "x", 1, 1, (), ())

    removable = [block("s.1"), block("s.2"), block("s.10")]
    fixed = [block("s.0", False), block("s.9", False)]
    assert [b.path for b in network_order(removable, fixed)] == ["s.0", "s.1", "s.2", "s.9", "s.10"]


def _one_line_error(runs, data, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as e:
        diagnose(runs, data)
    assert "\n" not in str(e.value)


def test_mismatched_runs_are_rejected(fitted):
    data, _, _, runs, combined = fitted
    srinit = runs[0]
    # SR-init alone with SR-init before a width method
    _one_line_error([srinit, combined], data, r"runs\[1\] \(method 'bmrs-n', seed 0\) fitted a gate posterior")
    # with and without a depth stage
    _one_line_error(
        [srinit, replace(combined, depth=None)], data, r"runs\[0\] has an SR-init depth stage but runs\[1\].* has none"
    )
    _one_line_error([replace(srinit, depth=None)], data, r"runs\[0\].*neither a gate posterior nor an SR-init")
    # different blocks
    s = srinit.depth.sensitivity
    fewer = replace(s, blocks=s.blocks[:-1], drops=s.drops[:-1], draws=s.draws[:-1])
    keep = torch.ones(len(fewer.blocks), dtype=torch.bool)
    other = replace(runs[1], depth=DepthStage(fewer, block_plan(fewer, keep, {"tau": TAU, "prob": PROB})))
    _one_line_error([srinit, other], data, rf"runs\[1\] \(method 'srinit', seed 1\).*no block '{s.blocks[-1].path}'")
    # a combined run whose depth stage removed other blocks: its gates are over another network
    cs = combined.depth.sensitivity
    keep_all = torch.ones(len(cs.blocks), dtype=torch.bool)
    changed = replace(combined, seed=7, depth=DepthStage(cs, block_plan(cs, keep_all, {"tau": TAU, "prob": PROB})))
    _one_line_error([combined, changed], data, re.escape("runs[1] (method 'bmrs-n', seed 7) removed blocks []"))


def test_cli_report_of_an_srinit_run(fitted, tmp_path, capsys):
    _, net, results, _, _ = fitted
    run_dir = tmp_path / "run"
    save_run(run_dir, results[0], net, arch=ARCH, data={"name": "digits", "seed": 0, "image": True})
    out = tmp_path / "report"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0, capsys.readouterr().err
    text = (out / "report.md").read_text()
    assert "## Block sensitivity (SR-init)\n" in text
    assert NOT_APPLICABLE in _section(text, "Variational approximation (PSIS k-hat)").lower()
    assert (out / "figures" / BLOCK_FIGURE).read_bytes().startswith(PNG_SIGNATURE)
    rows = json.loads((out / "diagnostics.json").read_text())["blocks"]["rows"]
    assert [r["block"] for r in rows if r["decision"] == "removed"] == results[0].depth.removed
