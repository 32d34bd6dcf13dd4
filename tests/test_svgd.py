"""The SVGD engine (:mod:`pyroprune.infer.svgd`): agreement with ``pyro.infer.SVGD``, known posteriors, memory,
bad input, divergence, gated networks; and :func:`pyroprune.measure.peak_tensor_memory`.

Tolerances (absolute, on constrained particles, after the same Adam steps from the same initial particles):
float64 1e-10 and float32 1e-4 against Pyro (both observed: ~2e-15 and ~2e-6).
"""

import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVGD as PyroSVGD
from pyro.infer import IMQSteinKernel, RBFSteinKernel
from pyro.infer.svgd import SteinKernel as PyroSteinKernel

from pyroprune.data import TensorSplit
from pyroprune.gates import GatedNet
from pyroprune.infer import FitHistory
from pyroprune.infer.svgd import SVGD, IMQKernel, RBFKernel, SVGDDiverged, fit_svgd, stein_direction
from pyroprune.measure import peak_tensor_memory
from pyroprune.models import BMRSMLP

PEER_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])


@pytest.fixture(autouse=True)
def _clean_param_store():
    """``pyro.infer.SVGD`` keeps its particles in Pyro's global param store: empty it before and after."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


# -- peers: pyro.infer.SVGD, mode "multivariate" ---------------------------------------------------------------


class FixedRBF(PyroSteinKernel):
    """Pyro-side RBF kernel :math:`\\exp(-\\|x - y\\|^2 / h)` with a fixed bandwidth (multivariate mode sums the
    per-dimension log kernels)."""

    def __init__(self, h: float) -> None:
        self.h = h

    @torch.no_grad()
    def log_kernel_and_grad(self, particles):
        delta = particles.unsqueeze(0) - particles.unsqueeze(1)
        return -(delta**2) / self.h, 2 * delta / self.h


def _run_pyro(model, site, kernel, u0, *, max_plate_nesting, steps, lr):
    """Pyro's SVGD from unconstrained particles ``u0`` [K, D] (one latent site): constrained particles."""
    pyro.clear_param_store()
    pyro.param("svgd_particles", u0.reshape(-1).clone())
    svgd = PyroSVGD(model, kernel, pyro.optim.Adam({"lr": lr}), u0.shape[0], max_plate_nesting, mode="multivariate")
    for _ in range(steps):
        svgd.step()
    out = svgd.get_named_particles()[site].detach()
    pyro.clear_param_store()
    return out


def _run_ours(model, site, kernel, init, *, max_plate_nesting, steps, lr):
    engine = SVGD(
        model, kernel, num_particles=init.shape[0], max_plate_nesting=max_plate_nesting, lr=lr, init={site: init}
    )
    for _ in range(steps):
        engine.step()
    return engine.get_named_particles()[site]


def _gaussian_2d(dtype):
    loc = torch.tensor([1.0, -1.0], dtype=dtype)
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=dtype)

    def model():
        pyro.sample("x", dist.MultivariateNormal(loc, covariance_matrix=cov))

    return model, loc, cov


def _mean_1d(dtype):
    data = 1.0 + torch.randn(20, dtype=dtype)

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=dtype), 2.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)

    return model


def _lognormal_scale(dtype):
    data = 2.0 * torch.randn(20, dtype=dtype)

    def model():
        s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=dtype), 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(0.0, s), obs=data)

    return model


def _gamma_pair(dtype):
    data = 2.0 * torch.randn(20, dtype=dtype)

    def model():
        s = pyro.sample("s", dist.Gamma(torch.tensor(2.0, dtype=dtype), 2.0).expand([2]).to_event(1))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(s[..., 0] - 1.0, s[..., 1]), obs=data)

    return model


def _simplex(dtype):
    counts = torch.tensor([0, 1, 2, 0, 0, 2, 0], dtype=torch.long)

    def model():
        p = pyro.sample("p", dist.Dirichlet(torch.ones(3, dtype=dtype)))
        with pyro.plate("data", len(counts)):
            pyro.sample("obs", dist.Categorical(probs=p), obs=counts)

    return model


@DTYPES
def test_matches_pyro_on_a_correlated_gaussian_with_fixed_bandwidth(dtype):
    pyro.set_rng_seed(0)
    model, _, _ = _gaussian_2d(dtype)
    u0 = torch.randn(8, 2, dtype=dtype)
    theirs = _run_pyro(model, "x", FixedRBF(1.5), u0, max_plate_nesting=0, steps=50, lr=0.05)
    ours = _run_ours(model, "x", RBFKernel(bandwidth=1.5), u0, max_plate_nesting=0, steps=50, lr=0.05)
    assert (ours - u0).abs().max() > 0.1  # the particles moved
    torch.testing.assert_close(ours, theirs, atol=PEER_TOL[dtype], rtol=0)


@DTYPES
@pytest.mark.parametrize(
    "ours_kernel, pyro_kernel", [(RBFKernel, RBFSteinKernel), (IMQKernel, IMQSteinKernel)], ids=["rbf", "imq"]
)
def test_matches_pyro_with_the_median_heuristic_in_one_dimension(dtype, ours_kernel, pyro_kernel):
    # D = 1: Pyro's per-dimension median bandwidth is ours. K = 30 > 25 also covers the Gram-matrix distances.
    pyro.set_rng_seed(0)
    model = _mean_1d(dtype)
    u0 = 3.0 * torch.randn(30, 1, dtype=dtype)
    theirs = _run_pyro(model, "mu", pyro_kernel(), u0, max_plate_nesting=1, steps=50, lr=0.05)
    ours = _run_ours(model, "mu", ours_kernel(), u0, max_plate_nesting=1, steps=50, lr=0.05)
    torch.testing.assert_close(ours.reshape(30, 1), theirs.reshape(30, 1), atol=PEER_TOL[dtype], rtol=0)


@DTYPES
@pytest.mark.parametrize(
    "make_model, site, support, dim, ours_kernel, pyro_kernel",
    [
        (_lognormal_scale, "s", dist.constraints.positive, 1, RBFKernel(), RBFSteinKernel()),
        (_gamma_pair, "s", dist.constraints.positive, 2, RBFKernel(bandwidth=0.5), FixedRBF(0.5)),
        (_simplex, "p", dist.constraints.simplex, 2, RBFKernel(bandwidth=0.5), FixedRBF(0.5)),
    ],
    ids=["lognormal-median", "gamma-fixed", "dirichlet-fixed"],
)
def test_matches_pyro_on_constrained_latents(dtype, make_model, site, support, dim, ours_kernel, pyro_kernel):
    """The unconstrained-space density needs the bijection's log-Jacobian (positive reals; a simplex of 3
    entries, 2 of them free)."""
    pyro.set_rng_seed(0)
    model = make_model(dtype)
    k = 12
    u0 = torch.randn(k, dim, dtype=dtype)
    transform = torch.distributions.biject_to(support)
    theirs = _run_pyro(model, site, pyro_kernel, u0, max_plate_nesting=1, steps=40, lr=0.05)
    ours = _run_ours(model, site, ours_kernel, transform(u0), max_plate_nesting=1, steps=40, lr=0.05)
    assert (ours.reshape(k, -1) - transform(u0)).abs().max() > 0.01
    torch.testing.assert_close(ours.reshape(theirs.shape), theirs, atol=PEER_TOL[dtype], rtol=0)


# -- known posteriors ------------------------------------------------------------------------------------------


def _moments(particles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = particles.reshape(particles.shape[0], -1)
    return flat.mean(0), torch.cov(flat.T)


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_particles_reach_a_gaussian(kernel):
    """K = 200, 500 Adam steps: mean within 0.02, covariance entries within 10 % of sd_i sd_j (SVGD with finite K
    under-estimates variances; ~4 % here)."""
    pyro.set_rng_seed(0)
    model, loc, cov = _gaussian_2d(torch.float64)
    k = 200
    engine = SVGD(model, kernel, num_particles=k, max_plate_nesting=0, lr=0.05, init={"x": torch.randn(k, 2)})
    for _ in range(500):
        engine.step()
    mean, c = _moments(engine.get_named_particles()["x"])
    sd = cov.diagonal().sqrt()
    torch.testing.assert_close(mean, loc, atol=0.02, rtol=0)
    assert ((c - cov) / sd.outer(sd)).abs().max() < 0.10


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_particles_reach_the_posterior_of_a_bayesian_linear_regression(kernel):
    """Conjugate: w ~ N(0, tau^2 I_3), y ~ N(X w, sigma^2) in a data plate; exact posterior N(mu, Sigma).
    K = 300, 300 steps: mean within 0.05 posterior sd, covariance entries within 12 % of sd_i sd_j (the finite-K
    variance deficit is ~8 % for RBF, ~5 % for IMQ in three dimensions)."""
    pyro.set_rng_seed(1)
    n, p, sigma, tau = 40, 3, 0.5, 1.0
    x = torch.randn(n, p, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64) + sigma * torch.randn(n, dtype=torch.float64)
    cov = torch.linalg.inv(x.T @ x / sigma**2 + torch.eye(p, dtype=torch.float64) / tau**2)
    mu = cov @ x.T @ y / sigma**2

    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(p, dtype=torch.float64), tau).to_event(1))
        with pyro.plate("data", n):
            pyro.sample("obs", dist.Normal((w * x).sum(-1), sigma), obs=y)

    k = 300
    init = {"w": 0.1 * torch.randn(k, p, dtype=torch.float64)}
    engine = SVGD(model, kernel, num_particles=k, max_plate_nesting=1, lr=0.03, init=init)
    for _ in range(300):
        engine.step()
    mean, c = _moments(engine.get_named_particles()["w"])
    sd = cov.diagonal().sqrt()
    assert ((mean - mu) / sd).abs().max() < 0.05
    assert ((c - cov) / sd.outer(sd)).abs().max() < 0.12


# -- memory ----------------------------------------------------------------------------------------------------


def test_peak_tensor_memory_counts_live_storage_once():
    n = 250_000  # 1 MB of float32

    def sequential():
        a = torch.empty(n)
        del a
        b = torch.empty(n)
        view = b.view(500, 500).t()  # a view: no new storage
        return view

    def simultaneous():
        a, b = torch.empty(n), torch.empty(n)
        return a, b

    _, peak = peak_tensor_memory(sequential)
    assert 4 * n <= peak < 4 * n + 1024
    _, peak = peak_tensor_memory(simultaneous)
    assert peak >= 8 * n
    before = torch.ones(n)
    _, peak = peak_tensor_memory(lambda t: t.view(500, 500).mul_(2.0), before)  # in place on a pre-existing tensor
    assert peak == 0
    result, peak = peak_tensor_memory(lambda t: t + 1.0, before)
    assert peak == 4 * n and result.shape == (n,)


def test_stein_direction_memory_grows_like_kd_plus_k_squared():
    k, element = 32, 4
    peaks = {}
    for d in (1000, 2000):
        particles, grad = torch.randn(k, d), torch.randn(k, d)
        _, peaks[d] = peak_tensor_memory(stein_direction, particles, grad, RBFKernel())
    assert 1.8 < peaks[2000] / peaks[1000] < 2.2  # doubling D doubles the peak (K^2 D would too, but see below)
    for d, peak in peaks.items():
        assert peak < k * k * d * element / 4  # pyro.infer's kernels hold several [K, K, D] tensors
        assert peak <= 6 * k * d * element + 6 * k * k * element
    _, peak_2k = peak_tensor_memory(stein_direction, torch.randn(2 * k, 1000), torch.randn(2 * k, 1000), RBFKernel())
    assert peak_2k / peaks[1000] < 2.5  # doubling K at D >> K: about twice, never four times


def test_stein_direction_is_accurate_for_close_particles_far_from_the_origin():
    """Regression: ``torch.cdist``'s Gram-matrix distances (K > 25) lost every digit in float32 here."""
    torch.manual_seed(0)
    k, d = 32, 1000
    x64 = 5.0 + 1e-3 * torch.randn(k, d, dtype=torch.float64)
    g64 = torch.randn(k, d, dtype=torch.float64)
    kernel = RBFKernel()
    ref = stein_direction(x64, g64, kernel)
    out = stein_direction(x64.float(), g64.float(), kernel).double()
    assert (out - ref).abs().max() / ref.abs().max() < 1e-3
    # and the kernel matrix matches the [K, K, D] formula
    kmat, _ = kernel.matrix_and_repulsion(x64)
    sq = (x64.unsqueeze(0) - x64.unsqueeze(1)).pow(2).sum(-1)
    iu = torch.triu_indices(k, k, 1)
    h = sq[iu[0], iu[1]].median() / math.log(k + 1)
    torch.testing.assert_close(kmat, torch.exp(-sq / h), atol=1e-9, rtol=0)


# -- bad input -------------------------------------------------------------------------------------------------


def _normal_model():
    pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


@pytest.mark.parametrize("k", [1, 0, True, 2.0])
def test_refuses_fewer_than_two_particles(k):
    with pytest.raises(ValueError, match=r"num_particles >= 2.*MAP"):
        SVGD(_normal_model, num_particles=k)


def test_refuses_a_discrete_latent_site():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("coin", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match=r"'coin' is discrete \(Bernoulli\)"):
        SVGD(model, num_particles=4, max_plate_nesting=0).step()


def test_refuses_non_finite_initial_particles():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))

    init = {"x": torch.zeros(3, 2), "scale": torch.tensor([1.0, 0.0, 2.0])}  # log(0) = -inf
    with pytest.raises(ValueError, match=r"not finite at site\(s\) scale$"):
        SVGD(model, num_particles=3, max_plate_nesting=0, init=init).step()
    init = {"x": torch.tensor([[0.0, math.nan]] * 3), "scale": torch.ones(3)}
    with pytest.raises(ValueError, match=r"not finite at site\(s\) x$"):
        SVGD(model, num_particles=3, max_plate_nesting=0, init=init).step()


def test_refuses_incomplete_or_misshapen_init():
    with pytest.raises(ValueError, match=r"'init' has no initial values for latent site 'x'"):
        SVGD(_normal_model, num_particles=3, max_plate_nesting=0, init={"y": torch.zeros(3, 2)}).step()
    with pytest.raises(ValueError, match=r"site 'x' have shape \(3, 3\), expected \(3, 2\)"):
        SVGD(_normal_model, num_particles=3, max_plate_nesting=0, init={"x": torch.zeros(3, 3)}).step()


def test_refuses_bad_kernels():
    with pytest.raises(ValueError, match=r"unknown SVGD kernel 'gauss'; choose one of rbf, imq"):
        SVGD(_normal_model, "gauss", num_particles=3)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"'bandwidth' must be a positive number"):
            RBFKernel(bandwidth=bad)
        with pytest.raises(ValueError, match=r"'bandwidth' must be a positive number"):
            IMQKernel(bandwidth=bad)
    with pytest.raises(ValueError, match=r"'bandwidth_factor' must be a positive number"):
        RBFKernel(bandwidth_factor=0.0)
    with pytest.raises(ValueError, match=r"IMQKernel: 'alpha' must be > 0"):
        IMQKernel(alpha=0.0)
    with pytest.raises(ValueError, match=r"IMQKernel: 'beta' must be < 0"):
        IMQKernel(beta=0.0)


# -- divergence ------------------------------------------------------------------------------------------------


def _walled_model(wall_value: float, threshold: float = 1.0):
    """x ~ N(3, 1) pulls the particles up; beyond ``threshold`` the log density is ``wall_value`` (-inf or NaN)
    while its gradient stays finite (zero). A ``pyro.factor`` without argument validation (which refuses NaN)."""

    def model(*args, num_data=None):
        x = pyro.sample("x", dist.Normal(3.0, 1.0))
        wall = dist.Unit(torch.where(x > threshold, torch.tensor(wall_value), torch.tensor(0.0)), validate_args=False)
        pyro.sample("wall", wall, obs=wall.sample())

    return model


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("wall", [-math.inf, math.nan], ids=["-inf", "nan"])
def test_step_raises_on_divergence_and_keeps_the_last_finite_particles(wall):
    engine = SVGD(_walled_model(wall), num_particles=4, max_plate_nesting=0, lr=0.1, init={"x": torch.zeros(4)})
    for _ in range(100):
        before = engine.particles.detach().clone() if engine.particles is not None else None
        try:
            engine.step()
        except SVGDDiverged as e:
            assert "the last finite particles are kept" in str(e)
            break
    else:
        pytest.fail("the particles never crossed the wall")
    assert torch.isfinite(engine.particles).all()
    assert torch.equal(engine.particles.detach(), before)
    assert (before > 1.0).any()  # the step that diverged started there (its log density is not finite)
    engine.step(check=False)  # the engine still works afterwards


def test_fit_svgd_reports_the_epoch_and_rolls_back():
    train = TensorSplit(torch.zeros(40, 1), torch.zeros(40))  # 10 steps per epoch of 4
    engine = SVGD(_walled_model(-math.inf), num_particles=4, max_plate_nesting=0, lr=0.02, init={"x": torch.zeros(4)})
    snapshots = {}  # step -> particles before it

    def before_step(step, total):
        if engine.particles is not None:
            snapshots[step] = engine.particles.detach().clone()

    with pytest.raises(SVGDDiverged, match=r"^SVGD, epoch (\d+): SVGD diverged") as info:
        fit_svgd(engine, train, epochs=20, batch_size=4, seed=0, before_step=before_step, progress=False)
    first_bad = min(step for step, p in snapshots.items() if (p > 1.0).any())
    assert first_bad >= 10  # not in the first epoch: the check runs once per epoch, after it
    assert re.match(r"SVGD, epoch (\d+)", str(info.value)).group(1) == str(first_bad // 10 + 1)
    assert torch.isfinite(engine.particles).all()
    assert torch.equal(engine.particles.detach(), snapshots[first_bad])


# -- gated networks --------------------------------------------------------------------------------------------


def _gated_mlp(digits, dtype):
    torch.manual_seed(0)
    net = BMRSMLP(in_features=64, hidden=16, depth=2).to(dtype)
    return GatedNet(net, digits.train.x[:2].to(dtype), num_data=len(digits.train))


@DTYPES
def test_vectorised_log_density_of_a_gated_net_equals_single_particles(digits, dtype):
    gated = _gated_mlp(digits, dtype)
    x, y, n = digits.train.x[:32].to(dtype), digits.train.y[:32], len(digits.train)
    engine = SVGD(gated, num_particles=4)
    engine.setup(x, y, num_data=n)
    assert [s.name for s in engine.sites] == [s.name for s in gated.sites]
    assert engine.particles.shape == (4, sum(s.size for s in gated.sites))
    flat = engine.particles.detach()
    together = engine.log_density(flat, x, y, num_data=n)
    alone = torch.cat([engine.log_density(flat[i : i + 1], x, y, num_data=n) for i in range(4)])
    assert together.shape == (4,) and torch.isfinite(together).all()
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(together, alone, rtol=rtol, atol=0)
    more = engine.log_density(torch.cat([flat, flat.flip(0)]), x, y, num_data=n)  # K' > K works too
    torch.testing.assert_close(more, torch.cat([together, together.flip(0)]), rtol=rtol, atol=0)


def test_fit_svgd_runs_on_a_gated_net(digits):
    gated = _gated_mlp(digits, torch.float32)
    engine = SVGD(gated, "imq", num_particles=4, lr=0.01)
    history = fit_svgd(engine, digits.train, epochs=1, batch_size=256, seed=0, progress=False)
    assert isinstance(history, FitHistory) and len(history.epochs) == 1
    assert math.isfinite(history.losses[0]) and history.losses[0] > 0
    assert engine.steps_done == math.ceil(len(digits.train) / 256)
    assert torch.isfinite(engine.particles).all()
    gates = engine.get_named_particles()
    for site in gated.sites:
        g = gates[site.name].reshape(4, site.size)
        assert ((g > 0) & (g <= 1)).all()  # LogUniform(-20, 0) support


# -- CUDA ------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_pyro_and_vectorises(digits):
    pyro.set_rng_seed(0)
    dev = torch.device("cuda")
    loc = torch.tensor([1.0, -1.0], dtype=torch.float64, device=dev)
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64, device=dev)

    def model():
        pyro.sample("x", dist.MultivariateNormal(loc, covariance_matrix=cov))

    u0 = torch.randn(30, 2, dtype=torch.float64, device=dev)
    theirs = _run_pyro(model, "x", FixedRBF(1.5), u0, max_plate_nesting=0, steps=30, lr=0.05)
    ours = _run_ours(model, "x", RBFKernel(bandwidth=1.5), u0, max_plate_nesting=0, steps=30, lr=0.05)
    assert ours.device.type == "cuda"
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)

    gated = _gated_mlp(digits, torch.float64).to(dev)
    x, y, n = digits.train.x[:32].to(dev, torch.float64), digits.train.y[:32].to(dev), len(digits.train)
    engine = SVGD(gated, num_particles=4)
    engine.setup(x, y, num_data=n)
    flat = engine.particles.detach()
    together = engine.log_density(flat, x, y, num_data=n)
    alone = torch.cat([engine.log_density(flat[i : i + 1], x, y, num_data=n) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=0)
    _, peak = peak_tensor_memory(
        stein_direction, torch.randn(32, 10_000, device=dev), torch.randn(32, 10_000, device=dev), RBFKernel()
    )
    assert 0 < peak < 32 * 32 * 10_000 * 4 / 4
