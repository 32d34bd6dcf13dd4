"""Decision rules on posteriors with known answers, plan (de)serialisation, matched-rate baselines."""

import json
import math

import pytest
import torch

from pyroprune.distributions import TruncatedNormal
from pyroprune.gates import GateSite
from pyroprune.methods import RULES, decide
from pyroprune.plan import PruningPlan
from pyroprune.posterior import GatePosterior
from pyroprune.reduction import delta_f_bmrs_n


def posterior(locs, scales, name="fc1") -> GatePosterior:
    loc = torch.tensor(locs, dtype=torch.float64)
    scale = torch.tensor(scales, dtype=torch.float64)
    site = GateSite(name, len(locs), "neuron", (name,), (name,))
    return GatePosterior((site,), -20.0, 0.0, marginals={name: TruncatedNormal(loc, scale, -20.0, 0.0)})


# gate 0: at theta ~ 1, narrow (keep); gate 1: piled against a (prune); gate 2: wide, centred (uncertain)
POST = posterior([0.0, -25.0, -10.0], [0.05, 1.0, 20.0])


def test_bmrs_n_prunes_iff_delta_f_nonnegative():
    plan = decide(POST, "bmrs-n")
    df = delta_f_bmrs_n(POST.marginals["fc1"].loc, POST.marginals["fc1"].scale)
    assert plan["fc1"].score == pytest.approx(df.tolist())
    assert plan["fc1"].keep == [bool(v < 0) for v in df]
    assert plan["fc1"].keep[0] and not plan["fc1"].keep[1]


def test_public_code_variant_prunes_more():
    exact = decide(POST, "bmrs-n")
    public = decide(POST, "bmrs-n", include_log_2pi=False)
    diff = [p - e for p, e in zip(public["fc1"].score, exact["fc1"].score, strict=True)]
    assert diff == pytest.approx([0.5 * math.log(2 * math.pi)] * 3)
    assert sum(public["fc1"].keep) <= sum(exact["fc1"].keep)


def test_snr_rule():
    plan = decide(POST, "snr")
    m = POST.mean("fc1")
    s = POST.stddev("fc1")
    assert plan["fc1"].score == pytest.approx((m / s).tolist())
    assert plan["fc1"].keep == [bool(v >= 1.0) for v in (m / s)]
    with pytest.raises(ValueError, match="threshold"):
        decide(POST, "snr", threshold=0.0)


def test_bmrs_u_rules_and_k_validation():
    for name in ("bmrs-u8", "bmrs-u4"):
        plan = decide(POST, name)
        assert plan["fc1"].keep[0]
    with pytest.raises(ValueError, match="'k'"):
        RULES["bmrs-u8"](POST, None, k=30)


def test_layer_is_never_emptied():
    post = posterior([-25.0, -24.0, -23.0], [1.0, 1.0, 1.0])
    plan = decide(post, "bmrs-n")
    assert plan["fc1"].kept == 1 and len(plan["fc1"].forced) == 1
    # the forced one is the least prunable (smallest Delta F)
    scores = plan["fc1"].score
    assert plan["fc1"].forced[0] == min(range(3), key=lambda i: scores[i])


def test_baselines_at_matched_rate():
    post = posterior([0.0, -1.0, -2.0, -3.0, -25.0, -0.5], [0.1] * 6)
    ref = decide(post, "bmrs-n")
    mag = decide(post, "magnitude", match=ref)
    assert mag.kept == ref.kept
    # magnitude keeps the largest E[theta]
    order = torch.argsort(post.mean("fc1"), descending=True)[: ref.kept[0]]
    assert sorted(i for i, k in enumerate(mag["fc1"].keep) if k) == sorted(order.tolist())
    rnd = decide(post, "random", amount=0.5, seed=3)
    assert rnd.kept == [3]
    assert decide(post, "random", amount=0.5, seed=3)["fc1"].keep == rnd["fc1"].keep
    with pytest.raises(ValueError, match="exactly one"):
        decide(post, "magnitude")
    with pytest.raises(ValueError, match="amount"):
        decide(post, "magnitude", amount=1.5)


def test_unknown_method_and_bad_parameters():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        decide(POST, "nope")
    with pytest.raises(TypeError, match="bmrs-n"):
        decide(POST, "bmrs-n", thresh=3)


def test_plan_json_round_trip(tmp_path):
    plan = decide(POST, "bmrs-n")
    plan.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["method"] == "bmrs-n" and data["sites"][0]["site"]["name"] == "fc1"
    again = PruningPlan.load(tmp_path / "p.json")
    assert again.to_dict() == plan.to_dict()
    assert again.kept_string(64) == f"64-{plan.kept[0]}"
    with pytest.raises(FileNotFoundError, match="plan file"):
        PruningPlan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not a pyroprune plan"):
        PruningPlan.load(tmp_path / "bad.json")
    bad = plan.to_dict()
    bad["sites"][0]["keep"] = [True]
    with pytest.raises(ValueError, match="'keep' has 1 entries"):
        PruningPlan.from_dict(bad)


def test_with_masks_only_shrinks():
    plan = decide(posterior([0.0, 0.0, 0.0], [0.01] * 3), "bmrs-n")
    assert plan.kept == [3]
    masked = plan.with_masks({"fc1": torch.tensor([True, False, True])})
    assert masked["fc1"].keep == [True, False, True]
    emptied = plan.with_masks({"fc1": torch.tensor([False, True, False])}).with_masks(
        {"fc1": torch.tensor([True, False, True])}
    )
    assert emptied.kept == [1]


def test_weight_norm_keeps_largest_incoming_weights():
    from pyroprune.gates import GatedNet
    from pyroprune.guides import TruncatedLogNormalGuide
    from pyroprune.models import BMRSMLP
    from pyroprune.posterior import posterior_from_guide

    net = BMRSMLP(in_features=8, hidden=6, depth=2)
    with torch.no_grad():
        net.features[0].weight.mul_(torch.arange(1.0, 7.0).unsqueeze(1))  # row norms grow with the index
    gated = GatedNet(net, torch.randn(2, 8))
    post = posterior_from_guide(TruncatedLogNormalGuide(gated), gated)
    plan = decide(post, "weight-norm", gated, amount=0.5)
    first = plan.sites[0]
    norms = net.features[0].weight.norm(dim=1)
    assert first.score == pytest.approx(norms.tolist(), rel=1e-6)
    assert first.keep == [False, False, False, True, True, True]
    with pytest.raises(ValueError, match="gated network"):
        decide(post, "weight-norm", amount=0.5)
