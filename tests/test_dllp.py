"""DLLP: the relaxed discrete prior, the temperature schedule, the saliencies, the lossless model, the rule, and the
svgd schedule end to end (API, run directories, report, CLI) on scikit-learn's digits."""

import copy
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy.stats import spearmanr
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli

from pyroprune import GatedNet, GatePosterior, GateSite, PruneConfig, decide, load_digits, prune_network
from pyroprune.demo import DEMO_ARCH, train_dense
from pyroprune.lossless import LosslessGateModel, hard_gates, keep_prior_logits, relaxed_gates, structure_saliency
from pyroprune.measure import count_params
from pyroprune.methods.dllp import dllp, temperature_schedule
from pyroprune.pipeline import decide_again

DTYPES = (torch.float32, torch.float64)


@pytest.fixture(scope="module")
def data():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def dense(data):
    return train_dense(data, epochs=8, seed=0, progress=False)


def _gated(net, data, dtype=torch.float32):
    net = copy.deepcopy(net).to(dtype)
    return GatedNet(net, data.train.x[:2].to(dtype), num_data=len(data.train))


def _config(**kw):
    base = dict(
        method="dllp",
        schedule="svgd",
        epochs=2,
        batch_size=64,
        num_particles=4,
        finetune_epochs=1,
        guide_lr=0.1,
        calibration_size=256,
    )
    base.update(kw)
    return PruneConfig(**base)


@pytest.fixture(scope="module")
def dllp_result(data, dense):
    pyro.set_rng_seed(0)
    return prune_network(dense, data, _config(), progress=False)


# ------------------------------------------------------------------------------------------------- relaxation


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [1.0, 0.1])
def test_prior_is_logistic_and_matches_relaxed_bernoulli_density(data, dense, dtype, lam):
    gated = _gated(dense, data, dtype)
    site = gated.sites[0]
    logits = torch.linspace(-30.0, 30.0, site.size, dtype=dtype)
    logits[:4] = torch.tensor([-30.0, 30.0, 0.0, 2.0], dtype=dtype)
    model = LosslessGateModel(gated, {s.name: logits if s is site else torch.zeros(s.size) for s in gated.sites})
    prior = model.prior(site.name)
    assert isinstance(prior, dist.Logistic)
    torch.testing.assert_close(prior.loc, logits)
    torch.testing.assert_close(prior.scale, torch.ones_like(logits))
    # P(v > 0) = pi = sigmoid(logit pi), by the CDF
    torch.testing.assert_close(1.0 - prior.cdf(torch.zeros_like(logits)), torch.sigmoid(logits))
    # v/lambda has the binary concrete density: log p_v(v) = log p_u(v / lambda) - log(lambda)
    for v in (torch.full_like(logits, -40.0), torch.zeros_like(logits), torch.full_like(logits, 0.5), logits + 35.0):
        lp = prior.log_prob(v)
        assert lp.dtype == dtype and torch.isfinite(lp).all()
        for relaxed in (
            dist.RelaxedBernoulli(torch.tensor(lam, dtype=dtype), logits=logits).base_dist,  # Pyro: sigmoid of it
            LogitRelaxedBernoulli(torch.tensor(lam, dtype=dtype), logits=logits),
        ):
            ref = relaxed.log_prob(v / lam) - math.log(lam)
            assert torch.isfinite(ref).all()
            tol = dict(rtol=1e-5, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-9)
            torch.testing.assert_close(lp, ref, **tol)


def test_prior_keep_probability_by_sampling(data, dense):
    pyro.set_rng_seed(0)
    gated = _gated(dense, data)
    logits = {s.name: torch.full((s.size,), 0.7) for s in gated.sites}
    model = LosslessGateModel(gated, logits)
    name = gated.sites[0].name
    v = model.prior(name).sample((4000,))  # [4000, 50]
    share = float((v > 0).double().mean())
    pi = float(torch.sigmoid(torch.tensor(0.7)))
    assert share == pytest.approx(pi, abs=4 * math.sqrt(pi * (1 - pi) / v.numel()))


def test_relaxed_gates_approach_hard_gates():
    pyro.set_rng_seed(0)
    v = {"a": torch.randn(200, dtype=torch.float64), "b": torch.randn(3, 7, dtype=torch.float64)}
    v = {k: x + 0.05 * torch.sign(x) for k, x in v.items()}  # |v| >= 0.05
    hard = hard_gates(v)
    assert set(hard["a"].unique().tolist()) <= {0.0, 1.0} and hard["a"].dtype == torch.float64
    gaps = []
    for t in (1.0, 0.1, 0.01, 1e-3):
        soft = relaxed_gates(v, t)
        gaps.append(max(float((soft[k] - hard[k]).abs().max()) for k in v))
        assert all(((soft[k] > 0.5) == (hard[k] > 0.5)).all() for k in v)
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] < 1e-12


# -------------------------------------------------------------------------------------------- temperatures


def test_temperature_schedule_geometric_endpoints_and_monotone():
    s = temperature_schedule(1.0, 0.1, 5)
    assert len(s) == 5 and s[0] == pytest.approx(1.0) and s[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(s, s[1:], strict=False))
    ratios = [b / a for a, b in zip(s, s[1:], strict=False)]
    assert ratios == pytest.approx([0.1**0.25] * 4)
    assert temperature_schedule(1.0, 0.1, 1) == [0.1]
    assert temperature_schedule(1.0, 0.1, 0) == []
    up = temperature_schedule(0.5, 2.0, 3)
    assert up == pytest.approx([0.5, 1.0, 2.0])
    assert temperature_schedule(0.3, 0.3, 4) == pytest.approx([0.3] * 4)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 0.1, 3), "'temperature' must be a finite number > 0"),
        ((-1.0, 0.1, 3), "'temperature' must be a finite number > 0"),
        ((1.0, float("nan"), 3), "'temperature_end' must be a finite number > 0"),
        ((1.0, float("inf"), 3), "'temperature_end' must be a finite number > 0"),
        ((True, 0.1, 3), "'temperature' must be a finite number > 0"),
        ((1.0, 0.1, -1), "'steps' must be an integer >= 0"),
        ((1.0, 0.1, True), "'steps' must be an integer >= 0"),
        ((1.0, 0.1, 2.0), "'steps' must be an integer >= 0"),
    ],
)
def test_temperature_schedule_errors(args, match):
    with pytest.raises(ValueError, match=match) as e:
        temperature_schedule(*args)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------- saliency


def test_fisher_saliency_is_the_small_perturbation_kl(data, dense):
    gated = _gated(dense, data, torch.float64)  # trained in float32, measured in float64
    x = data.train.x[:300].double()
    fisher = structure_saliency(gated, x, "fisher")
    assert all(r.dtype == torch.float64 and (r >= 0).all() for r in fisher.values())
    eps = 1e-3
    with torch.no_grad():
        teacher = torch.log_softmax(gated.net(x), dim=-1)
        for site in (gated.sites[0], gated.sites[3], gated.sites[-1]):
            r = fisher[site.name]
            order = torch.argsort(r, descending=True)
            for c in (int(order[0]), int(order[5]), int(order[site.size // 2])):
                gates = torch.ones(site.size, dtype=torch.float64)
                gates[c] = 1.0 - eps
                log_p = torch.log_softmax(gated.forward_with_gates(x, {site.name: gates}), dim=-1)
                kl = float((teacher.exp() * (teacher - log_p)).sum(-1).mean())
                assert r[c] > 0
                assert kl == pytest.approx(eps**2 * float(r[c]), rel=0.02), (site.name, c)


@pytest.mark.parametrize("method", ["fisher", "exact"])
def test_structure_without_outgoing_weights_has_zero_saliency(data, dense, method):
    net = copy.deepcopy(dense)
    c = 7
    with torch.no_grad():
        net.features[4].weight[:, c] = 0.0  # unit c of site features.2 feeds nothing
    gated = _gated(net, data)
    sal = structure_saliency(gated, data.train.x[:256], method)
    r = sal["features.2"]
    assert float(r[c]) < 1e-12
    assert float(r[c]) <= float(r.min()) and int((r > 1e-10).sum()) >= r.numel() - 1
    assert gated.training  # the mode is restored


def test_fisher_and_exact_saliency_rank_agreement(data, dense):
    gated = _gated(dense, data)
    x = data.train.x[:256]
    fisher = structure_saliency(gated, x, "fisher")
    exact = structure_saliency(gated, x, "exact")
    assert list(fisher) == list(exact) == [s.name for s in gated.sites]
    pooled_f = torch.cat(list(fisher.values())).numpy()
    pooled_e = torch.cat(list(exact.values())).numpy()
    assert spearmanr(pooled_f, pooled_e).statistic > 0.5  # ~0.76 here
    for name in fisher:
        assert spearmanr(fisher[name].numpy(), exact[name].numpy()).statistic > 0.3, name


def test_unknown_saliency_method(data, dense):
    with pytest.raises(ValueError, match="'saliency' must be one of fisher, exact, got 'taylor'"):
        structure_saliency(_gated(dense, data), data.train.x[:8], "taylor")


# ---------------------------------------------------------------------------------------------- prior logits


def test_keep_prior_logits():
    pyro.set_rng_seed(0)
    sal = {"a": torch.rand(30, dtype=torch.float64) ** 3, "b": torch.rand(10, dtype=torch.float64)}
    base = math.log(0.3 / 0.7)
    flat = keep_prior_logits(sal, prior_keep=0.3, saliency_weight=0.0)
    for v in flat.values():
        torch.testing.assert_close(v, torch.full_like(v, base))
    out = keep_prior_logits(sal, prior_keep=0.3, saliency_weight=2.0)
    for name, r in sal.items():
        order = torch.argsort(r)
        assert (out[name][order].diff() > 0).all(), name  # strictly higher logit for higher saliency
        assert out[name].shape == r.shape
    # one huge outlier in 21: its standard score (n-1)/sqrt(n) > 3 is clipped at 3
    r = torch.cat([torch.linspace(1e-3, 2e-3, 20, dtype=torch.float64), torch.tensor([1e9], dtype=torch.float64)])
    clipped = keep_prior_logits({"c": r}, prior_keep=0.5, saliency_weight=1.5)["c"]
    assert float(clipped[-1]) == pytest.approx(1.5 * 3.0)
    assert float(clipped.min()) >= -1.5 * 3.0 - 1e-12
    # a dead structure (saliency 0) stays finite; a single structure or constant site gets the base logit
    dead = keep_prior_logits({"d": torch.tensor([0.0, 1e-3, 1e-2, 1e-1], dtype=torch.float64)})["d"]
    assert torch.isfinite(dead).all() and float(dead[0]) == float(dead.min())
    single = keep_prior_logits({"e": torch.tensor([0.4]), "f": torch.full((5,), 0.2)}, prior_keep=0.5)
    assert float(single["e"]) == 0.0 and (single["f"] == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior_keep": 0.0}, "'prior_keep' must be in \\(0, 1\\)"),
        ({"prior_keep": 1.0}, "'prior_keep' must be in \\(0, 1\\)"),
        ({"saliency_weight": -0.5}, "'saliency_weight' must be >= 0"),
        ({"saliency_weight": float("nan")}, "'saliency_weight' must be >= 0"),
    ],
)
def test_keep_prior_logits_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keep_prior_logits({"a": torch.rand(4)}, **kwargs)


# ------------------------------------------------------------------------------------------------ the model


def _particles(model, x, y=None, k=3):
    def run():
        with pyro.plate("particles", k, dim=-2):
            return model(x, y, num_data=1000)

    return run


def test_model_trace_sites_and_lossless_factor(data, dense):
    pyro.set_rng_seed(0)
    gated = _gated(dense, data)
    logits = {s.name: torch.zeros(s.size) for s in gated.sites}
    model = LosslessGateModel(gated, logits, temperature=0.5)
    x = data.train.x[:32]
    tr = poutine.trace(_particles(model, x)).get_trace()
    latent = [
        n for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]
    assert latent == [s.name for s in gated.sites]
    for s in gated.sites:
        assert tuple(tr.nodes[s.name]["value"].shape) == (3, 1, s.size)
    assert "lossless" in tr.nodes and "labels" not in tr.nodes
    tr.compute_log_prob()
    random_ll = tr.nodes["lossless"]["log_prob"]
    assert random_ll.shape == (3, 32) and (random_ll < 0).all()  # half the structures off: a real loss
    # all gates ~1: the dense network itself, KL = 0
    big = {s.name: torch.full((3, 1, s.size), 60.0) for s in gated.sites}
    tr = poutine.trace(poutine.condition(_particles(model, x), data=big)).get_trace()
    tr.compute_log_prob()
    assert abs(tr.nodes["lossless"]["log_prob_sum"].item()) < 1e-3
    # the site is scaled N/B by the data plate
    assert tr.nodes["lossless"]["scale"] == pytest.approx(1000 / 32)
    assert gated.training  # the network's mode is restored


def test_model_label_term(data, dense):
    gated = _gated(dense, data)
    logits = {s.name: torch.zeros(s.size) for s in gated.sites}
    model = LosslessGateModel(gated, logits, lossless_weight=0.0, label_weight=1.0)
    x, y = data.train.x[:16], data.train.y[:16]
    with pytest.raises(ValueError, match="needs the labels y"):
        poutine.trace(_particles(model, x)).get_trace()
    big = {s.name: torch.full((3, 1, s.size), 60.0) for s in gated.sites}
    tr = poutine.trace(poutine.condition(_particles(model, x, y), data=big)).get_trace()
    assert "labels" in tr.nodes and "lossless" not in tr.nodes
    tr.compute_log_prob()
    with torch.no_grad():
        expected = torch.log_softmax(gated.net(x), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    scaled = expected.expand(3, 16) * (1000 / 16)  # the trace's log_prob carries the data plate's N/B scale
    torch.testing.assert_close(tr.nodes["labels"]["log_prob"], scaled, atol=1e-4, rtol=1e-5)


def test_model_errors(data, dense):
    gated = _gated(dense, data)
    logits = {s.name: torch.zeros(s.size) for s in gated.sites}
    first = gated.sites[0].name
    with pytest.raises(ValueError, match=r"expected \(50,\)"):
        LosslessGateModel(gated, {**logits, first: torch.zeros(49)})
    with pytest.raises(ValueError, match="no entry for gate site"):
        LosslessGateModel(gated, {k: v for k, v in logits.items() if k != first})
    with pytest.raises(ValueError, match="both 0"):
        LosslessGateModel(gated, logits, lossless_weight=0.0, label_weight=0.0)
    with pytest.raises(ValueError, match="'label_weight' must be >= 0"):
        LosslessGateModel(gated, logits, label_weight=-1.0)
    with pytest.raises(ValueError, match="'temperature' must be > 0"):
        LosslessGateModel(gated, logits, temperature=0.0)
    with pytest.raises(TypeError, match="needs a GatedNet"):
        LosslessGateModel(dense, logits)


# --------------------------------------------------------------------------------------------------- the rule


def _site(name, size):
    return GateSite(name, size, "neuron", (name,), (name,))


def _particle_posterior(with_scores=True):
    sites = (_site("a", 4), _site("b", 3))
    a = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    b = torch.zeros(4, 3)
    scores = torch.tensor([-3.0, -1.0, -2.0, -5.0]) if with_scores else None
    return GatePosterior(sites, -math.inf, 0.0, samples={"a": a, "b": b}, sample_scores=scores)


def test_dllp_rule_inclusion_keeps_ties_at_one_half():
    post = _particle_posterior()
    plan = dllp(post)
    assert plan.method == "dllp" and plan.params == {"threshold": 0.5, "select": "inclusion"}
    assert plan["a"].keep == [True, True, False, False]  # inclusion 1, 0.5 (tie: kept), 0.25, 0
    assert plan["a"].score == pytest.approx([1.0, 0.5, 0.25, 0.0])
    assert plan["a"].fold == [1.0] * 4 and plan["a"].forced == []
    # every particle drops all of site b: one structure is kept (forced), as with the other rules
    assert sum(plan["b"].keep) == 1 and plan["b"].forced == [plan["b"].keep.index(True)]
    assert plan["b"].fold == [1.0] * 3
    assert dllp(post, threshold=0.75)["a"].keep == [True, False, False, False]
    assert dllp(post, threshold=0.25)["a"].keep == [True, True, True, False]
    assert dllp(post, threshold=1.0)["a"].keep == [True, False, False, False]
    # through the registry
    assert decide(post, "dllp", None, threshold=0.75)["a"].keep == [True, False, False, False]


def test_dllp_rule_best_particle():
    post = _particle_posterior()
    plan = dllp(post, select="best")  # particle 1 has the highest score
    assert plan["a"].keep == [True, False, True, False]
    assert plan["a"].score == pytest.approx([1.0, 0.5, 0.25, 0.0])  # the score stays the inclusion probability
    assert sum(plan["b"].keep) == 1 and len(plan["b"].forced) == 1
    post.sample_scores = torch.tensor([0.0, -1.0, -2.0, 5.0])
    assert dllp(post, select="best")["a"].keep == [True, False, False, False]


def test_dllp_rule_errors():
    post = _particle_posterior(with_scores=False)
    with pytest.raises(ValueError, match="sample_scores"):
        dllp(post, select="best")
    for bad in (0.0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="'threshold' must be in \\(0, 1\\]"):
            dllp(post, threshold=bad)
    with pytest.raises(ValueError, match="'select' must be one of inclusion, best"):
        dllp(post, select="mode")
    marg = GatePosterior(
        post.sites,
        -20.0,
        0.0,
        marginals={s.name: dist.Normal(torch.zeros(s.size), torch.ones(s.size)) for s in post.sites},
    )
    with pytest.raises(ValueError, match="not marginals"):
        dllp(marg)


# ------------------------------------------------------------------------------------------- end to end (API)


def test_prune_network_svgd_end_to_end(dllp_result, data, dense):
    result = dllp_result
    plan = result.plan
    assert plan.method == "dllp"
    assert sum(plan.kept) < sum(plan.total)  # something was pruned
    assert count_params(result.pruned) < count_params(dense)
    with torch.no_grad():
        out = result.pruned(data.test.x)
    assert out.shape == (len(data.test), 10) and torch.isfinite(out).all()
    acc = float((out.argmax(-1) == data.test.y).double().mean())
    assert acc > 0.7  # a working network (fine-tuned for one epoch; ~0.9 here)
    post = result.posterior
    assert post.num_stored_draws == 4
    for s in result.gated.sites:
        z = post.samples[s.name]
        assert z.shape == (4, s.size) and set(z.unique().tolist()) <= {0.0, 1.0}
    assert post.sample_scores.shape == (4,) and torch.isfinite(post.sample_scores).all()
    assert (post.sample_scores <= 0).all()  # -KL
    # the plan is the inclusion rule applied to the particles
    for sp in plan.sites:
        share = post.samples[sp.site.name].mean(0)
        expected = (share >= 0.5).tolist()
        if not any(expected):
            assert len(sp.forced) == 1
        else:
            assert sp.keep == expected
    temps = [r["temperature"] for r in result.history.epochs]
    assert len(temps) == 2 and temps[0] > temps[-1]
    assert temps[-1] == pytest.approx(result.config.temperature_end)
    assert type(result.guide).__name__ == "SVGD"


def test_prune_network_svgd_is_reproducible(dllp_result, data, dense):
    pyro.set_rng_seed(123)  # the config's seed decides, not the global state
    again = prune_network(dense, data, _config(), progress=False)
    assert [sp.keep for sp in again.plan.sites] == [sp.keep for sp in dllp_result.plan.sites]
    for name, z in dllp_result.posterior.samples.items():
        assert torch.equal(again.posterior.samples[name], z)
    torch.testing.assert_close(again.posterior.sample_scores, dllp_result.posterior.sample_scores)


def test_decide_again_best_particle(dllp_result, data):
    other = decide_again(dllp_result, data, "dllp", {"select": "best"}, progress=False)
    assert other.config.method_params == {"select": "best"} and other.posterior is dllp_result.posterior
    best = int(torch.argmax(dllp_result.posterior.sample_scores))
    for sp in other.plan.sites:
        expected = (dllp_result.posterior.samples[sp.site.name][best] > 0.5).tolist()
        if any(expected):
            assert sp.keep == expected
        else:
            assert sum(sp.keep) == 1 and len(sp.forced) == 1
    with torch.no_grad():
        assert torch.isfinite(other.pruned(data.test.x[:8])).all()


# ------------------------------------------------------------------------------------------ bad configuration


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "snr"}, "schedule 'svgd' needs a particle method"),
        ({"schedule": "post-training"}, "method 'dllp' needs schedule 'svgd'"),
        ({"num_particles": 1}, ">= 2"),
        ({"num_particles": True}, ">= 2"),
        ({"kernel": "gauss"}, "unknown SVGD kernel 'gauss'"),
        ({"prior_keep": 1.5}, "'prior_keep' must be in"),
        ({"saliency": "taylor"}, "'saliency' must be one of"),
        ({"temperature": 0.0}, "'temperature' must be a finite number > 0"),
        ({"saliency_weight": -1.0}, "'saliency_weight' must be >= 0"),
        ({"lossless_weight": 0.0}, "both 0"),
        ({"calibration_size": 0}, "'calibration_size' must be >= 1"),
    ],
)
def test_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        _config(**fields).validate()


def test_resume_is_refused_under_svgd(data, dense):
    with pytest.raises(ValueError, match="'resume' is not supported by the svgd schedule"):
        prune_network(dense, data, _config(), progress=False, resume=True)


# ----------------------------------------------------------------------------------------- runs and the report


def test_run_roundtrip_and_report(dllp_result, data, dense, tmp_path):
    from pyroprune.diagnostics.report import diagnose, write_report
    from pyroprune.runs import load_run, save_run

    save_run(tmp_path / "run", dllp_result, dense, arch=DEMO_ARCH, data={"name": "digits", "seed": 0})
    doc = json.loads((tmp_path / "run" / "run.json").read_text())
    assert doc["guide"] == "SVGD" and doc["gate_prior"]["kind"] == "dllp"
    run, loaded = load_run(tmp_path / "run")
    assert run.method == "dllp" and run.plan.kept_string() == dllp_result.plan.kept_string()
    assert run.posterior.num_stored_draws == 4
    for name, z in dllp_result.posterior.samples.items():
        assert torch.equal(run.posterior.samples[name], z)
    assert torch.equal(run.posterior.sample_scores, dllp_result.posterior.sample_scores)
    assert run.guide.model.temperature == pytest.approx(dllp_result.guide.model.temperature)
    with torch.no_grad():
        torch.testing.assert_close(run.pruned(loaded.test.x), dllp_result.pruned(data.test.x))
    d = diagnose([run], loaded, khat_draws=25)
    write_report(d, None, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Accuracy across posterior draws" in text
    assert "SVGD particles have no density" in text
    summary = json.loads((tmp_path / "report" / "diagnostics.json").read_text())
    assert summary["draws"]["num_draws"] == 4
    assert summary["setup"]["particles"] is True
    assert summary["khat"]["available"] is False


# ------------------------------------------------------------------------------------------------------- CLI

RECIPE = """
name = "dllp-digits-test"
description = "DLLP on the digits MLP, a few epochs (test)"

[model]
name = "bmrs-mlp"
kwargs = {in_features = 64, hidden = 50, depth = 6, num_classes = 10}

[data]
name = "digits"
seed = 0

[pretrain]
epochs = 4
lr = 3e-3
batch_size = 64

[prune]
method = "dllp"
schedule = "svgd"
epochs = 1
batch_size = 128
num_particles = 4
calibration_size = 128
finetune_epochs = 0
seed = 0

[prune.method_params]
select = "inclusion"
"""


def test_recipe_runs_through_cli_and_reports(tmp_path, capsys):
    from pyroprune.cli import main

    recipe = tmp_path / "dllp-digits.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    assert main(["prune", str(recipe), "--out", str(out), "--quiet"]) == 0
    assert (out / "plan.json").is_file() and (out / "metrics.json").is_file()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["method"] == "dllp"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "dllp" and metrics["dataset"] == "digits"
    capsys.readouterr()
    assert main(["report", str(out), "--draws", "8"]) == 0
    assert (out / "report" / "report.md").is_file()
    summary = json.loads((out / "report" / "diagnostics.json").read_text())
    assert summary["draws"]["num_draws"] == 4
