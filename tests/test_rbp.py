"""RBP: the Dirac-like prior, its ELBO term and BMR closed form, the rules, and the recursive schedule."""

import math
import shutil
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import integrate
from torch import nn
from torch.distributions import kl_divergence

from pyroprune import GatedNet, PruneConfig, decide, prune_network, remove
from pyroprune.data import DataSplits, TensorSplit
from pyroprune.distributions import DiracLike, dirac_like_expected_log_prob, kl_normal_dirac_like
from pyroprune.guides import NormalNoiseGuide
from pyroprune.infer.recursive import fit_recursive
from pyroprune.methods.rbp import eps_schedule
from pyroprune.posterior import posterior_from_guide
from pyroprune.reduction import delta_f_dirac_like, delta_f_quadrature, reduced_normal_posterior

DTYPES = (torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------ the Dirac-like prior


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [1e-6, 1e-3, 0.1, 1.0, 50.0])
def test_density_known_answer_and_normalised(dtype, eps):
    d = DiracLike(torch.tensor(eps, dtype=dtype))
    x = torch.tensor([0.0, eps, -2 * eps], dtype=dtype)
    expected = -math.log(math.sqrt(2 * math.pi) * eps) - np.array([0.0, 0.5, 2.0])
    assert np.allclose(d.log_prob(x).double().numpy(), expected, rtol=1e-6, atol=1e-5)
    mass, _ = integrate.quad(
        lambda t: math.exp(float(d.log_prob(torch.tensor(t, dtype=dtype)))), -40 * eps, 40 * eps, points=[0.0]
    )
    assert mass == pytest.approx(1.0, rel=1e-5)
    assert d.log_prob(x).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampling_moments(dtype):
    pyro.set_rng_seed(0)
    d = DiracLike(torch.tensor(0.05, dtype=dtype)).expand([4])
    s = d.rsample((200_000,))
    assert s.shape == (200_000, 4) and s.dtype == dtype
    assert s.mean().abs() < 4 * 0.05 / math.sqrt(800_000)
    assert s.std().item() == pytest.approx(0.05, rel=0.01)
    assert float(d.mean.abs().max()) == 0.0 and torch.allclose(d.variance, torch.tensor(0.0025, dtype=dtype))


def _kl_quad(mu, sigma, eps):
    q = lambda t: math.exp(-0.5 * ((t - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    f = lambda t: q(t) * (-0.5 * ((t - mu) / sigma) ** 2 - math.log(sigma) + 0.5 * (t / eps) ** 2 + math.log(eps))  # noqa: E731
    val, _ = integrate.quad(f, mu - 12 * sigma, mu + 12 * sigma, points=[mu], limit=200)
    return val


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("mu", "sigma", "eps"), [(1.0, 0.01, 1.0), (0.0, 0.1, 0.1), (0.3, 0.05, 0.02), (-0.7, 0.2, 5.0), (1.0, 1e-4, 1e-3)]
)
def test_kl_and_elbo_term_against_quadrature(dtype, mu, sigma, eps):
    expected = _kl_quad(mu, sigma, eps)
    t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    got = kl_normal_dirac_like(t(mu), t(sigma), t(eps))
    assert float(got) == pytest.approx(expected, rel=1e-4 if dtype == torch.float32 else 1e-8, abs=1e-4)
    # registered for Pyro's TraceMeanField_ELBO (through Independent)
    q = dist.Normal(t(mu).expand([3]), t(sigma)).to_event(1)
    p = DiracLike(t(eps)).expand([3]).to_event(1)
    assert float(kl_divergence(q, p)) == pytest.approx(3 * float(got), rel=1e-5)
    # E_q[log p] = -KL - H[q]
    entropy = 0.5 * math.log(2 * math.pi * math.e * sigma**2)
    assert float(dirac_like_expected_log_prob(t(mu), t(sigma), t(eps))) == pytest.approx(
        -expected - entropy, rel=1e-4, abs=1e-3
    )


def test_kl_extreme_widths_finite():
    for dtype in DTYPES:
        kl = kl_normal_dirac_like(torch.tensor(1e-20, dtype=dtype), torch.tensor(1e-25, dtype=dtype), 1e-20)
        assert torch.isfinite(kl)
        kl = kl_normal_dirac_like(torch.tensor(0.0, dtype=dtype), torch.tensor(1e20, dtype=dtype), 1e25)
        assert torch.isfinite(kl) and kl > 0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_invalid_eps_one_line(bad):
    with pytest.raises(ValueError, match="'eps'") as info:
        DiracLike(bad)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------- BMR closed form


@pytest.mark.parametrize("dtype", DTYPES)
def test_delta_f_closed_form_vs_quadrature(dtype):
    loc = torch.tensor([0.0, 0.05, 0.5, 1.0, -0.3, 0.0, 0.002], dtype=dtype)
    scale = torch.tensor([0.1, 0.02, 0.3, 0.01, 0.2, 1e-4, 0.05], dtype=dtype)
    for eps_fit, eps_spike in ((0.1, 1e-3), (1.0, 0.5), (0.05, 1e-6)):
        closed = delta_f_dirac_like(loc, scale, eps_fit, eps_spike)
        quad = delta_f_quadrature(
            dist.Normal(loc, scale),
            DiracLike(torch.tensor(eps_fit, dtype=dtype)),
            DiracLike(torch.tensor(eps_spike, dtype=dtype)),
        )
        tol = 1e-4 if dtype == torch.float32 else 1e-8
        finite = torch.isfinite(quad) & (quad > -1e3)
        assert torch.allclose(closed[finite], quad[finite], rtol=tol, atol=tol)


def test_delta_f_limits_and_reduced_posterior():
    # q = p: Delta F = 0; spike limit: Savage-Dickey log q(0)/p(0)
    assert float(delta_f_dirac_like(0.0, 0.1, 0.1, 1e-3)) == pytest.approx(0.0, abs=1e-12)
    mu, s, e = 0.02, 0.03, 0.1
    sd = math.log(e / s) - mu**2 / (2 * s**2)
    assert float(delta_f_dirac_like(torch.tensor(mu, dtype=torch.float64), s, e, 1e-12)) == pytest.approx(sd, rel=1e-9)
    m, sc = reduced_normal_posterior(torch.tensor(0.5, dtype=torch.float64), 0.1, 1.0, 1e-3)
    prec = 1 / 0.1**2 + 1 / 1e-3**2 - 1
    assert float(sc) == pytest.approx(prec**-0.5, rel=1e-9)
    assert float(m) == pytest.approx(0.5 / 0.1**2 / prec, rel=1e-9)
    with pytest.raises(ValueError, match="'eps_spike' must be < 'eps_fit'"):
        delta_f_dirac_like(0.0, 0.1, 0.1, 0.2)


# ----------------------------------------------------------------------------------------- rules and validation


def _toy_posterior():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    gated = GatedNet(net, torch.zeros(2, 3), prior=DiracLike(0.1))
    guide = NormalNoiseGuide(gated)
    with torch.no_grad():
        guide.loc["0"].copy_(torch.tensor([1.0, 0.0, 0.05, -0.9]))
        guide.log_scale["0"].copy_(torch.tensor([0.01, 0.1, 0.08, 0.02]).log())
    return gated, guide, posterior_from_guide(guide, gated)


def test_rules_on_a_gaussian_posterior():
    gated, guide, post = _toy_posterior()
    assert post.theta_marginals and torch.allclose(post.mean("0"), guide.loc["0"].detach())
    assert post.draws("0", 7).shape == (7, 4)
    bmr = decide(post, "rbp-bmr", gated)
    assert bmr["0"].keep == [True, False, False, True]
    assert bmr.method == "rbp-bmr" and bmr.params == {"spike_eps": 1e-3}
    thr = decide(post, "rbp", gated, threshold=0.1)
    assert thr["0"].keep == [True, False, False, True]
    assert thr["0"].score == pytest.approx([1.0, 0.0, 0.05, 0.9], abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": -1}, "threshold"),
        ({"threshold": math.nan}, "threshold"),
    ],
)
def test_invalid_threshold(kwargs, name):
    gated, _, post = _toy_posterior()
    with pytest.raises(ValueError, match=f"'{name}'"):
        decide(post, "rbp", gated, **kwargs)


def test_invalid_spike():
    gated, _, post = _toy_posterior()
    with pytest.raises(ValueError, match="'spike_eps'"):
        decide(post, "rbp-bmr", gated, spike_eps=0.5)
    with pytest.raises(ValueError, match="'spike_eps'"):
        decide(post, "rbp-bmr", gated, spike_eps=-1.0)


def test_eps_schedule():
    assert eps_schedule(1.0, 0.01, 3) == pytest.approx([1.0, 0.1, 0.01])
    assert eps_schedule(1.0, 0.01, 1) == [0.01]
    assert eps_schedule(0.3, None, 2, "constant") == [0.3, 0.3]
    for args, name in [
        ((0.0, 0.1, 3), "prior_eps"),
        ((1.0, -0.1, 3), "prior_eps_end"),
        ((1.0, math.inf, 3), "prior_eps_end"),
        ((1.0, 0.1, -1), "epochs"),
        ((1.0, 0.1, 3, "linear"), "eps_schedule"),
        ((1.0, 0.1, 3, "constant"), "prior_eps_end"),
    ]:
        with pytest.raises(ValueError, match=f"'{name}'") as info:
            eps_schedule(*args)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"prior_eps": 0.0}, "prior_eps"),
        ({"prior_eps_end": -1.0}, "prior_eps_end"),
        ({"eps_schedule": "cosine"}, "eps_schedule"),
        ({"finetune_epochs_per_layer": -1}, "finetune_epochs_per_layer"),
        ({"method": "bmrs-n"}, "method"),
    ],
)
def test_config_validation(fields, name):
    config = PruneConfig(**{"method": "rbp-bmr", "schedule": "recursive", **fields})
    with pytest.raises(ValueError, match=f"'{name}'"):
        config.validate()
    with pytest.raises(ValueError, match="'schedule'"):
        PruneConfig(method="rbp", schedule="continuous").validate()


def test_recipe_rejects_bad_values():
    from pyroprune.recipes import load_recipe

    path = Path(__file__).resolve().parents[1] / "recipes" / "rbp-lenet-300-100-mnist.toml"
    for item, key in [
        ("prune.prior_eps=0", "prune.prior_eps"),
        ("prune.eps_schedule='x'", "prune.eps_schedule"),
        ("prune.prior_eps_end='a'", "prune.prior_eps_end"),
        ("prune.finetune_epochs_per_layer=-2", "prune.finetune_epochs_per_layer"),
        ("prune.method_params.spike=1", "prune.method_params.spike"),
    ]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            load_recipe(path, [item])


# ------------------------------------------------------------------------------------------ the recursive schedule


class Toy(nn.Module):
    """8 -> 6 -> 6 -> 3. Layer 1: units 3, 4, 5 duplicate units 0, 1, 2 (same incoming weights) and have zero
    outgoing weights. Layer 2: units 4, 5 have zero outgoing weights."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(8, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        with torch.no_grad():
            w1 = torch.randn(3, 8, generator=g)
            self.fc1.weight.copy_(torch.cat([w1, w1]))
            self.fc1.bias.zero_()
            self.fc2.weight.copy_(torch.randn(6, 6, generator=g))
            self.fc2.weight[:, 3:] = 0.0
            self.out.weight.copy_(torch.randn(3, 6, generator=g))
            self.out.weight[:, 4:] = 0.0

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _toy_data(n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    with torch.no_grad():
        y = Toy()(x).argmax(-1)
    split = TensorSplit(x, y)
    return DataSplits("toy", split, split, split, 3)


def test_recursion_order_prunes_duplicates_and_dead_units_and_is_exact():
    pyro.set_rng_seed(0)
    data = _toy_data()
    visited = []
    fit = fit_recursive(
        Toy(),
        data.train,
        data.train.x[:2],
        method="rbp",
        epochs=30,
        batch_size=64,
        lr=1e-9,
        guide_lr=0.05,
        eps_start=1.0,
        eps_end=0.1,
        progress=False,
        on_step=lambda step, plan: visited.append((step.site, [sp.site.name for sp in plan.sites])),
    )
    # input-to-output, each site once, the partial plan grows by one site per step
    assert visited == [("fc1", ["fc1"]), ("fc2", ["fc1", "fc2"])]
    assert [s.site for s in fit.steps] == ["fc1", "fc2"]
    keep1, keep2 = fit.plan["fc1"].keep, fit.plan["fc2"].keep
    assert keep1[3:] == [False, False, False]  # duplicates with zero outgoing weights
    assert keep2[4:] == [False, False]  # zero outgoing weights
    assert sum(keep1) >= 1 and sum(keep2) >= 1
    # the pruned network equals the deterministic gated one
    x = data.test.x
    gates = {sp.site.name: torch.tensor(sp.fold, dtype=x.dtype) * sp.keep_tensor() for sp in fit.plan.sites}
    with torch.no_grad():
        expected = fit.gated.forward_with_gates(x, gates)
        assert torch.allclose(fit.pruned(x), expected, atol=1e-5)
        assert torch.allclose(remove(fit.gated, fit.plan, x[:2])(x), expected, atol=1e-5)


def test_bmr_rule_runs_recursively_and_is_exact():
    pyro.set_rng_seed(0)
    data = _toy_data()
    fit = fit_recursive(
        Toy(), data.train, data.train.x[:2], method="rbp-bmr", epochs=5, batch_size=64, guide_lr=0.05, progress=False
    )
    assert [s.site for s in fit.steps] == ["fc1", "fc2"]
    # dead units: their posterior relaxes onto the fitted prior (Delta F -> 0, the tie of docs/methods/rbp.md);
    # units that carry signal have Delta F far below 0
    assert min(fit.plan["fc1"].score[:3]) < min(fit.plan["fc1"].score[3:])
    x = data.test.x
    gates = {sp.site.name: torch.tensor(sp.fold, dtype=x.dtype) * sp.keep_tensor() for sp in fit.plan.sites}
    with torch.no_grad():
        assert torch.allclose(fit.pruned(x), fit.gated.forward_with_gates(x, gates), atol=1e-5)


def test_prune_network_recursive_with_threshold_rule_and_run_roundtrip(tmp_path):
    from pyroprune.diagnostics.report import diagnose
    from pyroprune.runs import load_run, save_run

    pyro.set_rng_seed(0)
    data = _toy_data()
    config = PruneConfig(
        method="rbp",
        schedule="recursive",
        epochs=3,
        batch_size=64,
        guide_lr=0.05,
        finetune_epochs=1,
        finetune_epochs_per_layer=1,
        method_params={"threshold": 0.1},
    )
    net = Toy()
    result = prune_network(net, data, config, progress=False)
    assert [s.name for s in result.gated.sites] == ["fc1", "fc2"]
    assert [sp.site.size for sp in result.plan.sites] == [6, 6]
    assert result.guide.__class__ is NormalNoiseGuide
    assert {r["site"] for r in result.history.epochs} == {"fc1", "fc2"}
    # a run directory can be saved and rebuilt; the diagnostics run on it unchanged
    import pyroprune.models as models

    models.MODEL_REGISTRY["_rbp_toy"] = Toy
    try:
        save_run(tmp_path, result, net, arch={"name": "_rbp_toy", "kwargs": {}}, data={"name": "digits"})
        run = (tmp_path / "run.json").read_text()
        assert "dirac-like" in run
    finally:
        models.MODEL_REGISTRY.pop("_rbp_toy")
    from pyroprune.diagnostics.run import RunArtifacts

    arts = RunArtifacts(result.gated, result.guide, result.posterior, result.plan, result.pruned, net, "rbp", 0)
    d = diagnose([arts], data, num_draws=8, khat_draws=30, batch_size=64)
    sites = d.summary["structures"]["sites"]
    assert np.allclose(np.array(sites["fc1"]["keep_probability"]) > 0.5, result.plan["fc1"].keep)
    del load_run  # rebuilding needs a registered architecture; covered by the MNIST CLI test


MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"


@pytest.mark.skipif(not MNIST.is_dir(), reason="../shared/data/MNIST/raw is not present")
def test_recipe_runs_through_cli_on_mnist(tmp_path):
    import json

    from pyroprune.cli import main

    root = tmp_path / "data"
    (root / "MNIST" / "raw").mkdir(parents=True)
    for f in MNIST.glob("*.gz"):
        shutil.copy(f, root / "MNIST" / "raw" / f.name)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "rbp-lenet-300-100-mnist.toml"
    out = tmp_path / "run"
    sets = [
        "pretrain.epochs=0",
        "prune.epochs=1",
        "prune.finetune_epochs=0",
        "prune.finetune_epochs_per_layer=0",
        "prune.batch_size=1024",
        "data.val_size=50000",
    ]
    args = ["prune", str(recipe), "--data-root", str(root), "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["method"] == "rbp-bmr" and [s["site"]["name"] for s in plan["sites"]] == ["features.0", "features.2"]
    from pyroprune.runs import load_run

    run, _ = load_run(out, data_root=root)
    assert type(run.guide).__name__ == "NormalNoiseGuide"
