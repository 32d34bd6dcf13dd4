"""PSIS diagnostics of the variational approximation: known answers on a conjugate model, then the network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from pyroprune.diagnostics.approximation import (
    importance_ess,
    interpret_khat,
    khat_report,
    log_importance_ratios,
    log_joint,
    pareto_khat,
)
from pyroprune.gates import GatedNet
from pyroprune.guides import TruncatedLogNormalGuide
from pyroprune.infer import fit_svi
from pyroprune.models import BMRSMLP
from pyroprune.posterior import GatePosterior, posterior_from_guide

# -- a Pyro-free conjugate harness --------------------------------------------------------------------------
# d independent normal means: mu_j ~ N(0, tau^2), y_ij ~ N(mu_j, sigma^2), i = 1..n. The exact posterior is
# N(m_j, v) with v = 1 / (1/tau^2 + n/sigma^2) and m_j = v * sum_i y_ij / sigma^2.

SIGMA, TAU, N_OBS, DIM = 1.0, 2.0, 50, 10


def _conjugate(dim: int = DIM):
    g = torch.Generator().manual_seed(0)
    y = 0.7 + SIGMA * torch.randn(N_OBS, dim, generator=g, dtype=torch.float64)
    v = 1.0 / (1.0 / TAU**2 + N_OBS / SIGMA**2)
    m = v * y.sum(0) / SIGMA**2
    return y, m, math.sqrt(v)


def _conjugate_log_ratios(q_loc, q_scale, y, num_draws: int, seed: int) -> torch.Tensor:
    """log p(y, mu) - log q(mu) for num_draws draws mu ~ q = N(q_loc, q_scale^2), all draws at once."""
    g = torch.Generator().manual_seed(seed)
    mu = q_loc + q_scale * torch.randn(num_draws, q_loc.shape[0], generator=g, dtype=torch.float64)
    log_prior = Normal(0.0, TAU).log_prob(mu).sum(-1)
    log_lik = Normal(mu[:, None, :], SIGMA).log_prob(y).sum((-1, -2))
    return log_prior + log_lik - Normal(q_loc, q_scale).log_prob(mu).sum(-1)


def test_exact_posterior_gives_constant_ratios_and_small_khat():
    y, m, s = _conjugate()
    log_w = _conjugate_log_ratios(m, torch.full_like(m, s), y, num_draws=2000, seed=1)
    # with q = the posterior, log w = log p(y) for every draw, up to rounding
    log_evidence = (
        torch.distributions.MultivariateNormal(
            torch.zeros(N_OBS, dtype=torch.float64), SIGMA**2 * torch.eye(N_OBS, dtype=torch.float64) + TAU**2
        )
        .log_prob(y.T)
        .sum()
    )
    assert float(log_w.max() - log_w.min()) < 1e-9
    assert float(log_w.mean()) == pytest.approx(float(log_evidence), rel=1e-9)
    k = pareto_khat(log_w)
    assert k < 0.5
    assert k == -math.inf  # constant within rounding: a point mass, no tail at all
    assert interpret_khat(k).startswith("reliable")
    assert importance_ess(log_w) == pytest.approx(2000.0)


def test_exactly_constant_ratios_edge_case():
    log_w = torch.full((500,), -1234.5)
    assert pareto_khat(log_w) == -math.inf
    assert pareto_khat(np.full(500, 3.0)) == -math.inf
    assert importance_ess(log_w) == pytest.approx(500.0)
    # rounding noise of float32 at this magnitude is treated as constant, too
    noisy = log_w + torch.randn(500) * 1e-5
    assert pareto_khat(noisy) == -math.inf


def test_slightly_wide_q_is_reliable():
    y, m, s = _conjugate()
    log_w = _conjugate_log_ratios(m, torch.full_like(m, 1.1 * s), y, num_draws=2000, seed=2)
    k = pareto_khat(log_w)
    assert math.isfinite(k) and k < 0.5
    assert 0.2 * 2000 < importance_ess(log_w) <= 2000


def test_too_narrow_q_gives_large_khat():
    y, m, s = _conjugate()
    log_w = _conjugate_log_ratios(m, torch.full_like(m, 0.2 * s), y, num_draws=2000, seed=3)
    k = pareto_khat(log_w)
    # the ratio p/q ~ exp(c mu^2) has a Pareto tail with k = 1 - 0.2^2 = 0.96
    assert k > 0.7
    assert interpret_khat(k).startswith("unreliable")
    assert importance_ess(log_w) < 0.1 * 2000


def test_khat_is_invariant_to_the_normaliser():
    y, m, s = _conjugate()
    log_w = _conjugate_log_ratios(m, torch.full_like(m, 0.5 * s), y, num_draws=1000, seed=4)
    assert pareto_khat(log_w) == pytest.approx(pareto_khat(log_w - 1e3), abs=1e-9)


def test_interpretation_thresholds():
    assert interpret_khat(0.2).startswith("reliable")
    assert interpret_khat(0.5).startswith("usable with care")
    assert interpret_khat(0.7).startswith("usable with care")
    assert interpret_khat(0.71).startswith("unreliable")
    assert "point estimates may still be fine" in interpret_khat(1.3)
    assert interpret_khat(float("nan")).startswith("undetermined")


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([0.0, float("nan")] * 20), "NaN"),
        (torch.zeros(3, 30), "one-dimensional"),
        (torch.randn(10), "at least 25"),
        (torch.full((30,), -math.inf), "-inf"),
    ],
)
def test_pareto_khat_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        pareto_khat(bad)


# -- the gated network ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    from pyroprune.data import load_digits

    digits = load_digits(seed=0)
    torch.manual_seed(0)
    net = BMRSMLP(in_features=64, hidden=8, depth=2)
    gated = GatedNet(net, digits.train.x[:4], num_data=len(digits.train))
    guide = TruncatedLogNormalGuide(gated)
    fit_svi(gated, guide, digits.train, epochs=3, lr=3e-3, guide_lr=0.05, seed=0, progress=False)
    return gated, guide, digits.train


def test_khat_report_on_a_fitted_gated_network(fitted):
    gated, guide, train = fitted
    torch.manual_seed(0)
    report = khat_report(gated, guide, train, num_draws=400, batch_size=512)
    assert set(report) == {"khat", "interpretation", "num_draws", "ess_of_weights"}
    assert math.isfinite(report["khat"])
    assert isinstance(report["interpretation"], str) and "k-hat" in report["interpretation"]
    assert report["num_draws"] == 400
    assert 1.0 <= report["ess_of_weights"] <= 400.0
    assert gated.training  # the mode is restored


def test_log_ratios_in_one_vectorised_pass(fitted, monkeypatch):
    gated, guide, train = fitted
    calls = []
    original = gated.forward_with_gates

    def counting(x, gates):
        calls.append({k: tuple(v.shape) for k, v in gates.items()})
        return original(x, gates)

    monkeypatch.setattr(gated, "forward_with_gates", counting)
    log_w = log_importance_ratios(gated, guide, train, num_draws=64, batch_size=len(train))
    assert log_w.shape == (64,)
    assert torch.isfinite(log_w).all()
    assert len(calls) == 1  # all 64 draws and the whole split in a single forward pass
    assert calls[0] == {s.name: (64, s.size) for s in gated.sites}


def test_log_joint_matches_draw_by_draw_and_batching(fitted):
    gated, guide, train = fitted
    torch.manual_seed(1)
    gates = {s.name: guide.distribution(s.name).sample((5,)) for s in gated.sites}
    together = log_joint(gated, gates, train, batch_size=300)
    one_batch = log_joint(gated, gates, train, batch_size=len(train))
    torch.testing.assert_close(together, one_batch, rtol=1e-5, atol=1e-3)
    gated.eval()
    for i in range(5):  # reference: one draw, plain per-example log-likelihood
        g = {k: v[i] for k, v in gates.items()}
        with torch.no_grad():
            log_lik = torch.log_softmax(gated.forward_with_gates(train.x, g), -1)
        expected = log_lik[torch.arange(len(train)), train.y].sum() + sum(
            gated.prior(s).log_prob(g[s.name]).sum() for s in gated.sites
        )
        assert float(together[i]) == pytest.approx(float(expected), rel=1e-5, abs=1e-2)
    gated.train()


def test_posterior_marginals_give_the_same_ratios_as_the_guide(fitted):
    gated, guide, train = fitted
    posterior = posterior_from_guide(guide, gated)
    torch.manual_seed(7)
    from_guide = log_importance_ratios(gated, guide, train, num_draws=32, batch_size=len(train))
    torch.manual_seed(7)
    from_marginals = log_importance_ratios(gated, posterior, train, num_draws=32, batch_size=len(train))
    # same draws (theta = exp(x)), and log q_theta = log q_x(x) - x
    torch.testing.assert_close(from_guide, from_marginals, rtol=1e-5, atol=1e-2)


def test_sample_only_posterior_is_refused(fitted):
    gated, guide, train = fitted
    samples = {s.name: guide.distribution(s.name).sample((16,)).detach() for s in gated.sites}
    posterior = GatePosterior(gated.sites, -20.0, 0.0, samples=samples, guide_name="MyGuide")
    with pytest.raises(ValueError, match="only draws"):
        log_importance_ratios(gated, posterior, train, num_draws=16)
    with pytest.raises(TypeError, match="TruncatedLogNormalGuide or a GatePosterior"):
        log_importance_ratios(gated, object(), train, num_draws=16)
    with pytest.raises(ValueError, match="num_draws"):
        log_importance_ratios(gated, guide, train, num_draws=0)


def test_approximate_loo_on_the_datatree_draws():
    import math

    from pyroprune.data import load_digits
    from pyroprune.diagnostics.approximation import approximate_loo
    from pyroprune.diagnostics.datatree import build_datatree
    from pyroprune.gates import GatedNet
    from pyroprune.guides import TruncatedLogNormalGuide
    from pyroprune.infer import fit_svi
    from pyroprune.models import BMRSMLP
    from pyroprune.posterior import posterior_from_guide

    torch.manual_seed(0)
    data = load_digits()
    gated = GatedNet(BMRSMLP(in_features=64, hidden=8, depth=2), data.train.x[:2], num_data=len(data.train))
    guide = TruncatedLogNormalGuide(gated)
    fit_svi(gated, guide, data.train, epochs=2, progress=False, seed=0)
    post = posterior_from_guide(guide, gated)
    dt = build_datatree([(gated, post)], data.test, method="x", prior="p", guide_name="g", num_draws=30)
    elpd = approximate_loo(dt, [(gated, post)], data.train)
    assert math.isfinite(float(elpd.elpd))
    with pytest.raises(ValueError, match="chains"):
        approximate_loo(dt, [(gated, post), (gated, post)], data.train)
