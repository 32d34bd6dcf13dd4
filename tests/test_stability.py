"""Decision stability across runs, on hand-made plans with known answers."""

from __future__ import annotations

import pytest
import torch

from pyroprune.diagnostics.stability import (
    between_run_variance,
    flipping_structures,
    jaccard_per_site,
    keep_frequency,
    stability_report,
)
from pyroprune.gates import GateSite
from pyroprune.plan import PruningPlan, SitePlan

A = GateSite("features.0", 4, "neuron", ("features.0",), ("features.0",))
B = GateSite("features.2", 3, "neuron", ("features.2",), ("features.2",))


def plan(keep_a, keep_b, score_a=None, score_b=None, method="bmrs-n") -> PruningPlan:
    score_a = score_a if score_a is not None else [-1.0 if k else 1.0 for k in keep_a]
    score_b = score_b if score_b is not None else [-1.0 if k else 1.0 for k in keep_b]
    return PruningPlan(method, {}, [SitePlan(A, list(keep_a), list(score_a)), SitePlan(B, list(keep_b), list(score_b))])


def test_identical_plans_are_perfectly_stable():
    p = plan([True, False, True, True], [False, True, True], [-2.0, 3.0, -1.0, -0.5], [1.0, -4.0, -2.0])
    plans = [p, plan(p.sites[0].keep, p.sites[1].keep, p.sites[0].score, p.sites[1].score)] * 2
    jac = jaccard_per_site(plans)
    for name in (A.name, B.name):
        assert jac[name]["mean"] == 1.0 and jac[name]["min"] == 1.0
        assert jac[name]["matrix"] == [[1.0] * 4] * 4
    assert flipping_structures(plans) == {A.name: [], B.name: []}
    torch.testing.assert_close(keep_frequency(plans)[A.name], torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    assert between_run_variance(plans) == {A.name: 0.0, B.name: 0.0}
    assert between_run_variance(plans, scores=False) == {A.name: 0.0, B.name: 0.0}
    report = stability_report(plans)
    assert report["num_runs"] == 4 and report["methods"] == ["bmrs-n"]
    assert report["total"] == {"structures": 7, "num_flipping": 0, "flip_fraction": 0.0, "jaccard_mean": 1.0}
    assert report["sites"][A.name]["kept"] == [3, 3, 3, 3]
    assert "rhat" not in str(report).lower() and "r_hat" not in str(report).lower()


def test_disjoint_kept_sets_have_jaccard_zero():
    p1 = plan([True, True, False, False], [True, False, False])
    p2 = plan([False, False, True, True], [False, True, True])
    jac = jaccard_per_site([p1, p2])
    assert jac[A.name]["mean"] == 0.0 and jac[A.name]["min"] == 0.0
    assert jac[A.name]["matrix"] == [[1.0, 0.0], [0.0, 1.0]]
    assert jac[B.name]["mean"] == 0.0
    assert flipping_structures([p1, p2]) == {A.name: [0, 1, 2, 3], B.name: [0, 1, 2]}
    # every score flips sign between the runs: all the variance is between runs
    assert between_run_variance([p1, p2])[A.name] == pytest.approx(1.0)


def test_both_empty_kept_sets_count_as_identical():
    p1 = plan([False] * 4, [True, False, False])
    p2 = plan([False] * 4, [True, False, False])
    assert jaccard_per_site([p1, p2])[A.name]["mean"] == 1.0


def test_partial_overlap_known_values():
    p1 = plan([True, True, True, False], [True, True, True])
    p2 = plan([True, True, False, True], [True, True, True])
    p3 = plan([True, True, True, False], [True, True, True])
    jac = jaccard_per_site([p1, p2, p3])[A.name]
    # J(p1, p2) = |{0,1}| / |{0,1,2,3}| = 1/2, J(p1, p3) = 1, J(p2, p3) = 1/2
    assert jac["matrix"][0][1] == pytest.approx(0.5) and jac["matrix"][0][2] == 1.0
    assert jac["mean"] == pytest.approx(2.0 / 3.0) and jac["min"] == pytest.approx(0.5)


def test_a_single_flipping_structure_is_reported():
    base = [True, False, True, True]
    runs = [plan(base, [True, True, False]) for _ in range(4)]
    runs.append(plan([True, False, False, True], [True, True, False]))  # structure 2 of site A pruned once
    assert flipping_structures(runs) == {A.name: [2], B.name: []}
    freq = keep_frequency(runs)[A.name]
    torch.testing.assert_close(freq, torch.tensor([1.0, 0.0, 0.8, 1.0], dtype=torch.float64))
    report = stability_report(runs)
    assert report["sites"][A.name]["flipping"] == [2]
    assert report["sites"][A.name]["num_flipping"] == 1
    assert report["total"]["num_flipping"] == 1
    assert report["total"]["flip_fraction"] == pytest.approx(1 / 7)
    share = report["sites"][A.name]["between_run_variance_share"]
    assert 0.0 < share < 0.5  # one of 20 scores disagrees: a small share
    assert report["sites"][B.name]["between_run_variance_share"] == 0.0


def test_variance_share_known_value_and_scale_invariance():
    # scores s_rc: structure means 0, 10, 20, 30; run offsets +-1 -> V_between_runs = 1, V_total = 1 + 125
    s1, s2 = [-1.0, 9.0, 19.0, 29.0], [1.0, 11.0, 21.0, 31.0]
    keep = [True] * 4
    p1, p2 = plan(keep, [True] * 3, s1, [0.0] * 3), plan(keep, [True] * 3, s2, [0.0] * 3)
    share = between_run_variance([p1, p2])[A.name]
    assert share == pytest.approx(1.0 / 126.0)
    q1 = plan(keep, [True] * 3, [100 * v for v in s1], [0.0] * 3)
    q2 = plan(keep, [True] * 3, [100 * v for v in s2], [0.0] * 3)
    assert between_run_variance([q1, q2])[A.name] == pytest.approx(share)


def test_bad_input_is_refused_with_the_mismatch_named():
    p = plan([True] * 4, [True] * 3)
    with pytest.raises(ValueError, match="at least 2 plans"):
        stability_report([p])
    with pytest.raises(ValueError, match="at least 2 plans"):
        jaccard_per_site([])
    other_site = GateSite("classifier.0", 4, "neuron", ("classifier.0",), ("classifier.0",))
    renamed = PruningPlan("bmrs-n", {}, [SitePlan(other_site, [True] * 4, [0.0] * 4), p.sites[1]])
    with pytest.raises(ValueError, match=r"missing \['features.0'\], extra \['classifier.0'\]"):
        stability_report([p, renamed])
    fewer = PruningPlan("bmrs-n", {}, [p.sites[0]])
    with pytest.raises(ValueError, match=r"missing \['features.2'\]"):
        keep_frequency([p, fewer])
    bigger = GateSite("features.0", 5, "neuron", ("features.0",), ("features.0",))
    resized = PruningPlan("bmrs-n", {}, [SitePlan(bigger, [True] * 5, [0.0] * 5), p.sites[1]])
    with pytest.raises(ValueError, match=r"'features.0' has size 5 in plans\[1\] but 4 in plans\[0\]"):
        stability_report([p, resized])
    with pytest.raises(TypeError, match="not a PruningPlan"):
        stability_report([p, p.to_dict()])
    inf_scores = plan([True] * 4, [True] * 3, [float("inf")] * 4)
    with pytest.raises(ValueError, match="non-finite scores"):
        between_run_variance([p, inf_scores])
    assert between_run_variance([p, inf_scores], scores=False)[A.name] == 0.0


def test_site_order_does_not_matter_and_plans_round_trip():
    p1 = plan([True, False, True, True], [False, True, True])
    swapped = PruningPlan("bmrs-n", {}, [p1.sites[1], p1.sites[0]])
    loaded = PruningPlan.from_dict(p1.to_dict())
    report = stability_report(iter([p1, swapped, loaded]))
    assert report["total"]["jaccard_mean"] == 1.0 and report["total"]["num_flipping"] == 0
