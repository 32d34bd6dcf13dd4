"""Known-answer tests of the reliability metrics and split-conformal prediction sets."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from pyroprune.diagnostics import conformal as cf
from pyroprune.diagnostics import metrics as m

LOG2 = math.log(2)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _calibrated(n: int, k: int, seed: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities from random logits and labels sampled from those very probabilities (calibrated)."""
    g = _gen(seed)
    probs = torch.softmax(scale * torch.randn(n, k, generator=g, dtype=torch.float64), -1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return probs, labels


def _four() -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-made case: confidences .9 (right), .62 (wrong), .82 (right), .55 (wrong)."""
    probs = torch.tensor([[0.9, 0.1], [0.62, 0.38], [0.18, 0.82], [0.55, 0.45]], dtype=torch.float64)
    return probs, torch.tensor([0, 1, 1, 1])


def _overconfident() -> tuple[torch.Tensor, torch.Tensor]:
    """Always predicts class 0 with confidence 0.9; right on exactly 6 of 10 examples."""
    probs = torch.tensor([[0.9, 0.1]] * 10, dtype=torch.float64)
    return probs, torch.tensor([0] * 6 + [1] * 4)


# ----------------------------------------------------------------------------------- scores and calibration


def test_four_example_hand_values():
    probs, labels = _four()
    assert m.accuracy(probs, labels) == pytest.approx(0.5)
    assert m.brier(probs, labels) == pytest.approx((0.02 + 2 * 0.62**2 + 2 * 0.18**2 + 2 * 0.55**2) / 4)
    expected_nll = -(math.log(0.9) + math.log(0.38) + math.log(0.82) + math.log(0.45)) / 4
    assert m.nll(probs, labels) == pytest.approx(expected_nll)
    # 15 bins: every confidence in its own bin, so ECE = mean |correct - confidence|
    assert m.ece(probs, labels) == pytest.approx((0.1 + 0.62 + 0.18 + 0.55) / 4)
    # 2 bins: all four in (0.5, 1]: |0.5 - mean confidence|
    assert m.ece(probs, labels, n_bins=2) == pytest.approx(abs(0.5 - (0.9 + 0.62 + 0.82 + 0.55) / 4))
    # equal mass, 2 bins: {.55, .62} both wrong, {.82, .9} both right
    assert m.adaptive_ece(probs, labels, n_bins=2) == pytest.approx((0.585 + 0.14) / 2)


def test_reliability_diagram_data_bins():
    probs, labels = _four()
    data = m.reliability_diagram_data(probs, labels, n_bins=4)
    assert data["count"].tolist() == [0, 0, 2, 2]
    assert torch.allclose(data["bin_lower"], torch.tensor([0, 0.25, 0.5, 0.75], dtype=torch.float64))
    assert torch.isnan(data["accuracy"][:2]).all() and torch.isnan(data["confidence"][:2]).all()
    assert data["accuracy"][2:].tolist() == [0.0, 1.0]
    assert data["confidence"][2:].tolist() == pytest.approx([0.585, 0.86])
    # ECE recomputed from the diagram
    share = data["count"][2:].double() / 4
    assert (share * (data["accuracy"][2:] - data["confidence"][2:]).abs()).sum().item() == pytest.approx(
        m.ece(probs, labels, n_bins=4)
    )


def test_overconfident_ece_is_point_three():
    probs, labels = _overconfident()
    assert m.ece(probs, labels) == pytest.approx(0.3)
    assert m.adaptive_ece(probs, labels) == pytest.approx(0.3)
    assert m.accuracy(probs, labels) == pytest.approx(0.6)
    assert m.brier(probs, labels) == pytest.approx(0.6 * 0.02 + 0.4 * 1.62)


def test_calibrated_by_construction_has_small_ece():
    probs, labels = _calibrated(50_000, 4, seed=1)
    assert m.ece(probs, labels) < 0.02
    assert m.adaptive_ece(probs, labels) < 0.02
    # a sharpened copy of the same predictor is over-confident
    sharp = torch.softmax(3 * probs.log(), -1)
    assert m.ece(sharp, labels) > 0.05


def test_nll_clamps_zero_probability():
    probs = torch.tensor([[1.0, 0.0]])
    assert m.nll(probs, torch.tensor([1])) == pytest.approx(-math.log(m.PROB_FLOOR))
    assert m.nll(probs, torch.tensor([0])) == 0.0


def test_perfect_predictor():
    labels = torch.tensor([0, 2, 1, 2])
    probs = torch.nn.functional.one_hot(labels, 3).float()
    assert m.accuracy(probs, labels) == 1.0
    assert m.brier(probs, labels) == 0.0
    assert m.nll(probs, labels) == 0.0
    assert m.ece(probs, labels) == 0.0


# ------------------------------------------------------------------------------------------- uncertainty


def test_entropy_known_values():
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    assert m.predictive_entropy(probs).tolist() == pytest.approx([LOG2, 0.0, math.log(3)])


def test_mutual_information_zero_when_draws_agree():
    probs, _ = _calibrated(20, 4, seed=2)
    draws = probs.expand(5, -1, -1)
    assert torch.allclose(m.mutual_information(draws), torch.zeros(20, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(m.expected_entropy(draws), m.predictive_entropy(probs))


def test_mutual_information_hand_values():
    draws = torch.tensor([[[1.0, 0.0], [0.9, 0.1]], [[0.0, 1.0], [0.5, 0.5]]], dtype=torch.float64)

    def h(*p):
        return -sum(x * math.log(x) for x in p if x > 0)

    mi = m.mutual_information(draws)
    assert mi[0].item() == pytest.approx(LOG2)
    assert mi[1].item() == pytest.approx(h(0.7, 0.3) - (h(0.9, 0.1) + LOG2) / 2)
    assert m.expected_entropy(draws).tolist() == pytest.approx([0.0, (h(0.9, 0.1) + LOG2) / 2])
    # total = aleatoric + epistemic
    total = m.predictive_entropy(draws.mean(0))
    assert torch.allclose(total, m.expected_entropy(draws) + mi)


# ----------------------------------------------------------------------------------------------- AUROC


def _binary_probs(correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = correct.shape[0]
    probs = torch.tensor([[0.8, 0.2]]).expand(n, 2).clone()
    return probs, torch.where(correct, 0, 1)


def test_auroc_perfect_inverted_and_ties():
    correct = torch.tensor([True, True, True, False, False])
    probs, labels = _binary_probs(correct)
    perfect = torch.tensor([0.1, 0.2, 0.3, 0.8, 0.9])
    assert m.misclassification_auroc(probs, labels, score=perfect) == 1.0
    assert m.misclassification_auroc(probs, labels, score=-perfect) == 0.0
    assert m.misclassification_auroc(probs, labels, score=torch.ones(5)) == 0.5
    # default score: entropy; the errors are the uncertain ones
    probs = torch.tensor([[0.99, 0.01], [0.95, 0.05], [0.6, 0.4], [0.55, 0.45]])
    assert m.misclassification_auroc(probs, torch.tensor([0, 0, 1, 1])) == 1.0
    assert m.misclassification_auroc(probs, torch.tensor([1, 1, 0, 0])) == 0.0


def test_auroc_random_is_half_and_matches_sklearn():
    g = _gen(3)
    correct = torch.rand(4000, generator=g) < 0.7
    probs, labels = _binary_probs(correct)
    score = torch.rand(4000, generator=g, dtype=torch.float64)
    assert m.misclassification_auroc(probs, labels, score=score) == pytest.approx(0.5, abs=0.03)
    tied = (score * 10).round() / 10  # heavy ties
    for s in (score, tied):
        expected = roc_auc_score((~correct).numpy(), s.numpy())
        assert m.misclassification_auroc(probs, labels, score=s) == pytest.approx(expected, abs=1e-12)


def test_auroc_undefined_warns_nan():
    probs, labels = _binary_probs(torch.ones(4, dtype=torch.bool))
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert math.isnan(m.misclassification_auroc(probs, labels))
    probs, labels = _binary_probs(torch.zeros(4, dtype=torch.bool))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(m.misclassification_auroc(probs, labels))


# ---------------------------------------------------------------------------------- selective prediction


def test_accuracy_coverage_endpoint_and_perfect_ranking():
    probs, labels = _calibrated(500, 3, seed=4)
    coverage, acc = m.accuracy_coverage_curve(probs, labels)
    assert coverage[-1].item() == 1.0 and acc[-1].item() == pytest.approx(m.accuracy(probs, labels))
    assert coverage.shape == acc.shape == (500,)
    # confidences .9, .8 right; .7, .6 wrong: accuracies 1, 1, 2/3, 1/2
    probs = torch.tensor([[0.7, 0.3], [0.9, 0.1], [0.6, 0.4], [0.8, 0.2]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 0])
    coverage, acc = m.accuracy_coverage_curve(probs, labels)
    assert coverage.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert acc.tolist() == pytest.approx([1, 1, 2 / 3, 1 / 2])
    assert m.area_under_accuracy_coverage(probs, labels) == pytest.approx(19 / 24)


def test_accuracy_coverage_ties_are_order_free():
    probs = torch.tensor([[0.7, 0.3]] * 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    _, acc = m.accuracy_coverage_curve(probs, labels)
    assert acc.tolist() == pytest.approx([0.5] * 4)
    _, acc_rev = m.accuracy_coverage_curve(probs, labels.flip(0))
    assert torch.equal(acc, acc_rev)


# -------------------------------------------------------------------------------------- dense vs pruned


def test_agreement_kl_js_known_values():
    probs, _ = _calibrated(100, 5, seed=5)
    assert m.agreement(probs, probs) == 1.0
    assert m.mean_kl(probs, probs) == pytest.approx(0.0, abs=1e-12)
    assert m.mean_js(probs, probs) == pytest.approx(0.0, abs=1e-12)
    a = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    b = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    assert m.mean_kl(a, b) == pytest.approx(0.3 * math.log(0.3 / 0.6) + 0.7 * math.log(0.7 / 0.4))
    mid = [0.45, 0.55]
    js = 0.5 * (0.3 * math.log(0.3 / mid[0]) + 0.7 * math.log(0.7 / mid[1]))
    js += 0.5 * (0.6 * math.log(0.6 / mid[0]) + 0.4 * math.log(0.4 / mid[1]))
    assert m.mean_js(a, b) == pytest.approx(js)
    assert m.agreement(a, b) == 0.0
    one, other = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert m.mean_js(one, other) == pytest.approx(LOG2)
    assert m.mean_kl(one, other) == pytest.approx(-math.log(m.PROB_FLOOR), rel=1e-5)  # clamped, finite


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6))
def test_divergence_and_uncertainty_bounds(seed, k):
    g = _gen(seed)
    a = torch.softmax(3 * torch.randn(30, k, generator=g), -1)
    b = torch.softmax(3 * torch.randn(30, k, generator=g), -1)
    assert 0.0 <= m.mean_js(a, b) <= LOG2 + 1e-6
    assert m.mean_kl(a, b) >= 0.0
    mi = m.mutual_information(torch.stack([a, b]))
    assert (mi >= 0).all() and (mi <= math.log(k) + 1e-5).all()
    labels = torch.randint(0, k, (30,), generator=g)
    assert 0.0 <= m.ece(a, labels) <= 1.0 and 0.0 <= m.adaptive_ece(a, labels) <= 1.0
    assert 0.0 <= m.brier(a, labels) <= 2.0


def test_bootstrap_self_is_zero_interval():
    probs, labels = _calibrated(300, 3, seed=6)
    out = m.bootstrap_accuracy_difference(probs, probs, labels, n_boot=500)
    assert out == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_bootstrap_difference_point_interval_and_seed():
    probs, labels = _calibrated(400, 3, seed=7)
    noisy = torch.softmax(probs.log() + 1.5 * torch.randn(probs.shape, generator=_gen(8), dtype=torch.float64), -1)
    out = m.bootstrap_accuracy_difference(probs, noisy, labels, n_boot=1000, seed=3)
    assert out["diff"] == pytest.approx(m.accuracy(probs, labels) - m.accuracy(noisy, labels))
    assert out["diff"] > 0
    assert out["low"] <= out["diff"] <= out["high"]
    assert out["high"] - out["low"] < 0.2
    assert m.bootstrap_accuracy_difference(probs, noisy, labels, n_boot=1000, seed=3) == out
    assert m.bootstrap_accuracy_difference(probs, noisy, labels, n_boot=1000, seed=4) != out
    wide = m.bootstrap_accuracy_difference(probs, noisy, labels, n_boot=1000, level=0.99, seed=3)
    assert wide["low"] <= out["low"] and wide["high"] >= out["high"]


def test_summaries():
    probs, labels = _calibrated(300, 4, seed=9)
    draws = torch.stack([probs, probs.flip(1)]).to(torch.float32)
    summary = m.reliability_summary(draws.mean(0), labels, draw_probs=draws)
    expected = {
        "accuracy",
        "nll",
        "brier",
        "ece",
        "adaptive_ece",
        "mean_entropy",
        "misclassification_auroc",
        "area_under_accuracy_coverage",
        "aurc",
        "mean_expected_entropy",
        "mean_mutual_information",
    }
    assert set(summary) == expected and all(isinstance(v, float) for v in summary.values())
    assert summary["aurc"] == pytest.approx(1 - summary["area_under_accuracy_coverage"])
    assert summary["mean_mutual_information"] > 0
    assert "mean_mutual_information" not in m.reliability_summary(probs, labels)
    cmp = m.compare_predictive(probs, probs, labels, n_boot=200)
    assert cmp["agreement"] == 1.0 and cmp["mean_kl"] == pytest.approx(0, abs=1e-12)
    assert cmp["accuracy_difference"] == cmp["accuracy_difference_low"] == cmp["accuracy_difference_high"] == 0


def test_dtypes_and_tensor_outputs():
    probs, labels = _calibrated(200, 3, seed=10)
    ref = m.ece(probs, labels)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        low = probs.to(dtype)
        low = low / low.float().sum(-1, keepdim=True).to(dtype)
        assert m.ece(low, labels) == pytest.approx(ref, abs=0.02)
        assert m.predictive_entropy(low).dtype == dtype
        assert m.mutual_information(low.expand(2, -1, -1)).dtype == dtype
        assert m.accuracy_coverage_curve(low, labels)[1].dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    probs, labels = _calibrated(1000, 5, seed=11)
    cpu = m.reliability_summary(probs, labels)
    gpu = m.reliability_summary(probs.cuda(), labels.cuda())
    assert gpu == pytest.approx(cpu, abs=1e-9)
    assert m.predictive_entropy(probs.cuda()).is_cuda
    out = m.bootstrap_accuracy_difference(probs.cuda(), probs.cuda().flip(1), labels.cuda())
    assert out["low"] <= out["diff"] <= out["high"]
    cal, test = _synthetic(500, seed=1), _synthetic(500, seed=2)
    rep_cpu = cf.conformal_report(*cal, *test, method="lac")
    rep_gpu = cf.conformal_report(*(t.cuda() for t in cal), *(t.cuda() for t in test), method="lac")
    assert rep_gpu[0.1]["coverage"] == pytest.approx(rep_cpu[0.1]["coverage"])


# -------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: m.accuracy(torch.tensor([[0.5, 0.4]]), torch.tensor([0])), "probs"),
        (lambda: m.accuracy(torch.tensor([[1.5, -0.5]]), torch.tensor([0])), "probs"),
        (lambda: m.nll(torch.tensor([0.5, 0.5]), torch.tensor([0])), "probs"),
        (lambda: m.nll(torch.tensor([[1, 0]]), torch.tensor([0])), "probs"),
        (lambda: m.brier(torch.tensor([[0.5, 0.5]]), torch.tensor([2])), "labels"),
        (lambda: m.brier(torch.tensor([[0.5, 0.5]]), torch.tensor([-1])), "labels"),
        (lambda: m.ece(torch.tensor([[0.5, 0.5]]), torch.tensor([0, 1])), "labels"),
        (lambda: m.ece(torch.tensor([[0.5, 0.5]]), torch.tensor([0.0])), "labels"),
        (lambda: m.ece(torch.tensor([[0.5, 0.5]]), torch.tensor([0]), n_bins=0), "n_bins"),
        (lambda: m.mutual_information(torch.tensor([[0.5, 0.5]])), "draw_probs"),
        (lambda: m.mean_kl(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5], [1, 0]])), "probs_b"),
        (lambda: m.agreement(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.6]])), "probs_b"),
        (lambda: m.misclassification_auroc(torch.tensor([[0.5, 0.5]]), torch.tensor([0]), torch.ones(2)), "score"),
        (
            lambda: m.bootstrap_accuracy_difference(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([0]), n_boot=0),
            "n_boot",
        ),
        (
            lambda: m.bootstrap_accuracy_difference(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([0]), level=1),
            "level",
        ),
        (
            lambda: m.reliability_summary(torch.ones(2, 1), torch.tensor([0, 0]), draw_probs=torch.ones(3, 1, 1)),
            "draw_probs",
        ),
        (lambda: m.compare_predictive(torch.ones(2, 1), torch.ones(3, 1), torch.tensor([0, 0])), "probs_pruned"),
        (lambda: cf.conformal_threshold(torch.ones(2, 1), torch.tensor([0, 0]), alpha=0), "alpha"),
        (lambda: cf.conformal_threshold(torch.ones(2, 1), torch.tensor([0, 0]), alpha=1.5), "alpha"),
        (lambda: cf.conformal_threshold(torch.ones(2, 1), torch.tensor([0, 1]), alpha=0.1), "cal_labels"),
        (lambda: cf.conformal_threshold(torch.ones(2, 2), torch.tensor([0, 1]), alpha=0.1), "cal_probs"),
        (
            lambda: cf.conformal_report(torch.ones(2, 1), torch.tensor([0, 0]), torch.ones(2, 1), torch.tensor([1, 0])),
            "test_labels",
        ),
        (
            lambda: cf.conformal_report(
                torch.ones(2, 1), torch.tensor([0, 0]), torch.ones(2, 1), torch.tensor([0, 0]), alphas=(0.1, -0.1)
            ),
            "alpha",
        ),
    ],
)
def test_bad_inputs_raise_naming_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("method", ["raps", "LAC", None])
def test_unknown_method_lists_methods(method):
    probs, labels = torch.ones(2, 1), torch.tensor([0, 0])
    for call in (
        lambda: cf.conformal_threshold(probs, labels, 0.1, method=method),
        lambda: cf.prediction_sets(probs, 0.5, method=method),
        lambda: cf.conformal_report(probs, labels, probs, labels, method=method),
    ):
        with pytest.raises(ValueError, match="method.*'lac', 'aps'"):
            call()


# --------------------------------------------------------------------------------------------- conformal


def _synthetic(n: int, seed: int, k: int = 5, d: int = 8, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchangeable data: a fixed random linear model (seed 0); features and labels drawn with ``seed``."""
    weights = torch.randn(d, k, generator=_gen(0), dtype=torch.float64)
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    probs = torch.softmax(scale * x @ weights / math.sqrt(d) * 2, -1)
    return probs, torch.multinomial(probs, 1, generator=g).squeeze(1)


@pytest.mark.parametrize(("method", "randomized"), [("lac", False), ("aps", True)])
def test_conformal_coverage(method, randomized):
    cal, test = _synthetic(2000, seed=1), _synthetic(2000, seed=2)
    report = cf.conformal_report(*cal, *test, alphas=(0.1, 0.05), method=method, randomized=randomized)
    for alpha, row in report.items():
        assert row["target_coverage"] == pytest.approx(1 - alpha)
        assert abs(row["coverage"] - (1 - alpha)) <= 0.03, (alpha, row)
        assert row["coverage"] >= 1 - alpha - 0.03
        assert 1 <= row["mean_set_size"] <= 5 or method == "lac"
        assert row["threshold"] == cf.conformal_threshold(*cal, alpha, method=method, randomized=randomized)
    assert report[0.05]["mean_set_size"] >= report[0.1]["mean_set_size"]


def test_deterministic_aps_is_valid_but_conservative():
    cal, test = _synthetic(2000, seed=1), _synthetic(2000, seed=2)
    report = cf.conformal_report(*cal, *test, alphas=(0.1, 0.05), method="aps", randomized=False)
    randomized = cf.conformal_report(*cal, *test, alphas=(0.1, 0.05), method="aps")
    for alpha, row in report.items():
        assert row["coverage"] >= 1 - alpha - 0.03
        assert row["coverage"] >= randomized[alpha]["coverage"]
        assert row["mean_set_size"] >= 1


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_conformal_sets_shrink_with_accuracy(method):
    sizes, accs = [], []
    for scale in (0.5, 3.0):
        cal, test = _synthetic(2000, seed=1, scale=scale), _synthetic(2000, seed=2, scale=scale)
        sizes.append(cf.conformal_report(*cal, *test, alphas=(0.1,), method=method)[0.1]["mean_set_size"])
        accs.append(m.accuracy(*test))
    assert accs[1] > accs[0] and sizes[1] < sizes[0]


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_tiny_alpha_small_calibration_gives_full_sets(method):
    cal, test = _synthetic(100, seed=1), _synthetic(50, seed=2)
    assert cf.conformal_threshold(*cal, alpha=0.001, method=method) == math.inf
    sets = cf.prediction_sets(test[0], math.inf, method=method)
    assert sets.all()
    row = cf.conformal_report(*cal, *test, alphas=(0.001,), method=method)[0.001]
    assert row["coverage"] == 1.0 and row["mean_set_size"] == 5.0


def test_threshold_is_higher_order_statistic_and_sets_hand_values():
    # LAC scores 1 - p_y: 0.1, 0.2, ..., 0.9 (n = 9); alpha = 0.2: ceil(10 * 0.8) = 8th smallest = 0.8
    p_true = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    probs = torch.stack([p_true, 1 - p_true], 1)
    labels = torch.zeros(9, dtype=torch.long)
    q = cf.conformal_threshold(probs, labels, 0.2, method="lac")
    assert q == pytest.approx(0.8)
    assert q == (1 - p_true).sort().values[7].item()
    sets = cf.prediction_sets(torch.tensor([[0.25, 0.75], [0.1, 0.9]], dtype=torch.float64), q, method="lac")
    assert sets.tolist() == [[True, True], [False, True]]
    # deterministic APS: classes by probability .5, .3, .2 -> cumulative .5, .8, 1.0
    probs = torch.tensor([[0.3, 0.5, 0.2]], dtype=torch.float64)
    det = {"method": "aps", "randomized": False}
    assert cf.conformity_scores(probs, torch.tensor([0]), **det).item() == pytest.approx(0.8)
    assert cf.prediction_sets(probs, 0.85, **det).tolist() == [[True, True, False]]
    assert cf.prediction_sets(probs, 0.1, **det).tolist() == [[False, True, False]]  # never empty
    assert cf.prediction_sets(probs, 1.0, **det).all()
    # randomised APS: the label's own mass is scaled by the seeded uniform u
    u = torch.rand(1, generator=_gen(5), dtype=torch.float64).item()
    score = cf.conformity_scores(probs, torch.tensor([0]), "aps", seed=5)
    assert score.item() == pytest.approx(0.8 - u * 0.3)
    sets = cf.prediction_sets(probs, score.item(), "aps", seed=5)
    assert sets[0, 0].item() and sets[0, 1].item()


def test_calibration_points_are_covered_by_their_own_threshold():
    cal = _synthetic(300, seed=3)
    for method, randomized in (("lac", False), ("aps", False), ("aps", True)):
        q = cf.conformal_threshold(*cal, alpha=0.1, method=method, randomized=randomized, seed=7)
        sets = cf.prediction_sets(cal[0], q, method=method, randomized=randomized, seed=7)
        covered = sets.gather(1, cal[1][:, None]).double().mean().item()
        assert covered >= math.ceil(301 * 0.9) / 300 - 1e-12
