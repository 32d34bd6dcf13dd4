"""SVI on the gated model with our guide, a user-written guide and an AutoGuide; NaN handling."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyroprune.distributions import TruncatedLogNormal
from pyroprune.gates import GatedNet
from pyroprune.guides import TruncatedLogNormalGuide, auto_guide
from pyroprune.infer import TrainingDiverged, elbo_loss, fit_svi
from pyroprune.methods import decide
from pyroprune.models import BMRSMLP
from pyroprune.posterior import posterior_from_guide


def small_gated(digits, hidden=16, depth=2):
    torch.manual_seed(0)
    net = BMRSMLP(in_features=64, hidden=hidden, depth=depth)
    return GatedNet(net, digits.train.x[:2], num_data=len(digits.train))


def test_guide_fit_lowers_the_loss_and_gives_a_plan(digits):
    gated = small_gated(digits)
    guide = TruncatedLogNormalGuide(gated)
    hist = fit_svi(gated, guide, digits.train, epochs=6, lr=3e-3, seed=0, progress=False)
    assert hist.losses[-1] < hist.losses[0]
    post = posterior_from_guide(guide, gated)
    for method in ("bmrs-n", "bmrs-u8", "bmrs-u4", "snr"):
        plan = decide(post, method)
        assert [sp.site.size for sp in plan.sites] == [16, 16]
        assert all(1 <= k <= 16 for k in plan.kept)
    assert len(pyro.get_param_store()) == 0  # explicit parameters only


def test_analytic_kl_matches_monte_carlo(digits):
    """The registered closed-form KL gives the same ELBO as the Monte Carlo estimator, on average."""
    gated = small_gated(digits, hidden=6, depth=1)
    guide = TruncatedLogNormalGuide(gated, init_log_scale=0.0)
    with torch.no_grad():
        for p in guide.loc.values():
            p.copy_(torch.linspace(-8, -1, p.numel()))
    x, y = digits.train.x[:64], digits.train.y[:64]
    analytic = elbo_loss(gated, guide, len(digits.train), num_particles=2000, analytic_kl=True)
    mc = elbo_loss(gated, guide, len(digits.train), num_particles=2000, analytic_kl=False)
    with torch.no_grad():
        a, m = float(analytic(x, y)), float(mc(x, y))
    assert a == pytest.approx(m, rel=2e-2)


class MyGuide(nn.Module):
    """What a user writes: a log-normal-ish guide with its own parametrisation (plain nn.Parameters)."""

    def __init__(self, gated):
        super().__init__()
        self.names = [s.name for s in gated.sites]
        self.mu = nn.ParameterList([nn.Parameter(torch.full((s.size,), -1.0)) for s in gated.sites])
        self.rho = nn.ParameterList([nn.Parameter(torch.full((s.size,), -3.0)) for s in gated.sites])

    def forward(self, *args, **kwargs):
        for name, mu, rho in zip(self.names, self.mu, self.rho, strict=True):
            scale = nn.functional.softplus(rho)
            pyro.sample(name, TruncatedLogNormal(mu, scale, -20.0, 0.0).to_event(1))


def test_user_written_guide_trains_and_decides(digits):
    gated = small_gated(digits)
    guide = MyGuide(gated)
    hist = fit_svi(gated, guide, digits.train, epochs=4, lr=3e-3, seed=0, progress=False)
    assert hist.losses[-1] < hist.losses[0]
    post = posterior_from_guide(guide, gated, num_samples=64)
    assert post.samples and not post.marginals
    assert decide(post, "bmrs-u8").kept
    assert decide(post, "snr").kept
    with pytest.raises(ValueError, match="only draws"):
        decide(post, "bmrs-n")


def test_autonormal_over_log_theta(digits):
    gated = small_gated(digits)
    with pytest.raises(ValueError, match="auto_guide"):
        fit_svi(gated, AutoNormal(gated), digits.train, epochs=1, progress=False)
    guide = auto_guide(AutoNormal, gated, init_scale=0.01)
    hist = fit_svi(gated, guide, digits.train, epochs=4, lr=3e-3, seed=0, progress=False)
    assert math.isfinite(hist.losses[-1])
    post = posterior_from_guide(guide, gated)
    name = gated.sites[0].name
    x = post.marginals[name].sample((100,))
    assert ((x > -20) & (x < 0)).all()  # the AutoNormal lives on log(theta) in (a, b)
    plan = decide(post, "bmrs-u4")
    assert len(plan.sites) == 2
    assert len(pyro.get_param_store()) == 0


def test_nan_loss_stops_with_last_good_state(digits):
    gated = small_gated(digits)
    guide = TruncatedLogNormalGuide(gated)
    fit_svi(gated, guide, digits.train, epochs=1, seed=0, progress=False)
    good = {k: v.clone() for k, v in gated.state_dict().items()}

    calls = {"n": 0}

    def poison(epoch, record):
        return None

    # Make the weights produce NaN logits part-way through the next epoch.
    original = gated.net.features[0].forward

    def broken(x):
        calls["n"] += 1
        out = original(x)
        return out * float("nan") if calls["n"] > 3 else out

    gated.net.features[0].forward = broken
    with pytest.raises(TrainingDiverged, match="restored"):
        fit_svi(gated, guide, digits.train, epochs=2, seed=0, progress=False, on_epoch_end=poison)
    gated.net.features[0].forward = original
    for k, v in gated.state_dict().items():
        torch.testing.assert_close(v, good[k])


def test_fit_validates_arguments(digits):
    gated = small_gated(digits)
    guide = TruncatedLogNormalGuide(gated)
    with pytest.raises(ValueError, match="epochs"):
        fit_svi(gated, guide, digits.train, epochs=-1, progress=False)
    with pytest.raises(ValueError, match="kl_weighting"):
        fit_svi(gated, guide, digits.train, epochs=1, kl_weighting="x", progress=False)
    with pytest.raises(ValueError, match="'low' must be < 'high'"):
        TruncatedLogNormalGuide(gated, low=0.0, high=-20.0)


def test_bmrs_weighting_trains(digits):
    gated = small_gated(digits)
    guide = TruncatedLogNormalGuide(gated)
    hist = fit_svi(gated, guide, digits.train, epochs=3, kl_weighting="bmrs", seed=0, progress=False)
    assert all(math.isfinite(v) for v in hist.losses)


def test_prior_is_a_pyro_distribution_users_can_swap(digits):
    from pyroprune.distributions import LogUniform

    gated = GatedNet(
        BMRSMLP(in_features=64, hidden=8, depth=1),
        digits.train.x[:2],
        prior=lambda site: LogUniform(-12.0, 0.0),
    )
    assert isinstance(gated.prior(gated.sites[0]), dist.torch_distribution.TorchDistributionMixin)
    assert gated.prior(gated.sites[0]).support.lower_bound.reshape(-1)[0].item() == pytest.approx(
        math.exp(-12.0), rel=1e-5
    )
