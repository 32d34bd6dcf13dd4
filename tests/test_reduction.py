"""Tests of pyroprune.reduction: the BMRS closed forms against the generic quadrature, limits, signs,
stability."""

from __future__ import annotations

import math

import mpmath as mp
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyroprune.distributions import TruncatedLogNormal, TruncatedNormal
from pyroprune.reduction import delta_f_bmrs_n, delta_f_bmrs_u, delta_f_quadrature, log_snr

A, B = -20.0, 0.0
LOG2 = math.log(2.0)
F64 = torch.float64
# (mu, sigma) away from the pathological corners (tails of e^{-10^8} against spikes of width 1e-9)
MUS = (-25.0, -21.0, -20.0, -17.0, -12.0, -8.0, -3.0, -1.0, 0.0, 0.5, 1.0, 5.0)
SIGMAS = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small elementwise workloads; see test_distributions.py
    pyro.set_rng_seed(0)
    yield
    torch.set_num_threads(threads)


def _grid(dtype=F64):
    m, s = torch.meshgrid(torch.tensor(MUS, dtype=dtype), torch.tensor(SIGMAS, dtype=dtype), indexing="ij")
    return m.flatten(), s.flatten()


def _prior(dtype=F64):
    return dist.Uniform(torch.tensor(A, dtype=dtype), torch.tensor(B, dtype=dtype))


@pytest.mark.parametrize("reduced_scale", [1e-2, 1e-1, 1.0])
def test_bmrs_n_matches_quadrature(reduced_scale):
    loc, scale = _grid()
    q = TruncatedNormal(loc, scale, A, B)
    reduced = TruncatedNormal(torch.tensor(A, dtype=F64), torch.tensor(reduced_scale, dtype=F64), A, B)
    quad = delta_f_quadrature(q, _prior(), reduced)
    closed = delta_f_bmrs_n(loc, scale, A, B, reduced_scale=reduced_scale)
    assert torch.isfinite(closed).all() and torch.isfinite(quad).all()
    assert torch.allclose(closed, quad, rtol=0.0, atol=1e-4), (closed - quad).abs().max()


@pytest.mark.parametrize("k", [8, 4])
def test_bmrs_u_matches_quadrature(k):
    loc, scale = _grid()
    q = TruncatedNormal(loc, scale, A, B)
    reduced = dist.Uniform(torch.tensor(-23 * LOG2, dtype=F64), torch.tensor(-k * LOG2, dtype=F64))
    quad = delta_f_quadrature(q, _prior(), reduced)
    closed = delta_f_bmrs_u(loc, scale, A, B, k=k)
    assert torch.allclose(closed, quad, rtol=0.0, atol=1e-4), (closed - quad).abs().max()


def test_bmrs_n_against_mpmath_closed_form():
    # the exact BMRS_N expression, term by term, in 60-digit arithmetic
    def ref(mu, s, sp, a=A, b=B):
        with mp.workdps(60):
            mu, s, sp, a, b = map(mp.mpf, (mu, s, sp, a, b))

            def mass(lo, hi):
                return mp.ncdf(-lo) - mp.ncdf(-hi) if lo > 0 else mp.ncdf(hi) - mp.ncdf(lo)

            s2 = s**2 + sp**2
            mt, st = (mu * sp**2 + a * s**2) / s2, s * sp / mp.sqrt(s2)
            zq = mass((a - mu) / s, (b - mu) / s)
            zqt = mass((a - mt) / st, (b - mt) / st)
            zpt = mp.ncdf((b - a) / sp) - mp.mpf(1) / 2
            return mp.log((b - a) * zqt / (zq * zpt)) - mp.log(2 * mp.pi * s2) / 2 - (mu - a) ** 2 / (2 * s2)

    for mu, s, sp in [
        (5.0, 1e-4, 1e-2),
        (-25.0, 1e-4, 1e-3),
        (0.0, 1e-4, 0.5),
        (-10.0, 150.0, 0.1),
        (3.0, 0.5, 2.0),
        (-20.5, 0.3, 1e-6),
        (1.0, 1e-3, 1e-5),
    ]:
        got = delta_f_bmrs_n(torch.tensor(mu, dtype=F64), torch.tensor(s, dtype=F64), reduced_scale=sp)
        r = float(ref(mu, s, sp))
        assert float(got) == pytest.approx(r, rel=1e-10, abs=1e-9), (mu, s, sp)


def test_limit_of_exact_form():
    # sigma_p -> 0: the exact form tends to log[(b - a) q(a)]. The gap is first order, about
    # sqrt(2/pi) * sigma_p * |d log q / dx| at a (the reduced posterior's mass on [a, b] is 1/2 + O(sigma_p
    # slope)), so compare where that is small.
    loc, scale = _grid()
    limit = delta_f_bmrs_n(loc, scale, A, B)
    slope = ((loc - A) / scale**2).abs()
    for sp in (1e-6, 1e-9):
        exact = delta_f_bmrs_n(loc, scale, A, B, reduced_scale=sp)
        ok = sp * slope < 1e-4
        assert ok.sum() > 20
        assert torch.allclose(exact[ok], limit[ok], rtol=0.0, atol=1e-4), (exact - limit)[ok].abs().max()
    q = TruncatedNormal(loc, scale, A, B)
    assert torch.allclose(limit, math.log(B - A) + q.log_prob(torch.full_like(loc, A)))


def test_include_log_2pi_shifts_by_half_log_2pi():
    loc, scale = _grid()
    for sp in (0.0, 0.1):
        a = delta_f_bmrs_n(loc, scale, reduced_scale=sp)
        b = delta_f_bmrs_n(loc, scale, reduced_scale=sp, include_log_2pi=False)
        shift = torch.full_like(a, 0.5 * math.log(2 * math.pi))
        assert ((b - a - shift).abs() <= 1e-9 + 1e-13 * a.abs()).all()


def test_signs():
    at_a = (torch.tensor(-25.0), torch.tensor(1.0))
    near_one = (torch.tensor(0.0), torch.tensor(0.1))
    in_reduced = (torch.tensor(-10.0), torch.tensor(1.0))  # mass inside [log 2^-23, log 2^-8]
    assert delta_f_bmrs_n(*at_a) > 0  # prune
    assert delta_f_bmrs_n(*near_one) < 0  # keep
    assert delta_f_bmrs_n(*at_a, include_log_2pi=False) > 0
    for k in (8, 4):
        assert delta_f_bmrs_u(*near_one, k=k) < 0
        assert delta_f_bmrs_u(*in_reduced, k=k) > 0
        # BMRS_U's reduced prior starts at log 2^-23 = -15.9 > a = -20: a posterior piled against a has almost
        # no mass there, so BMRS_U keeps it (the published reduced prior; see docs/distributions.md)
        assert delta_f_bmrs_u(*at_a, k=k) < 0
        # ... unless the reduced prior is taken down to a
        assert delta_f_bmrs_u(*at_a, k=k, reduced_low=A) > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_nan_and_gradients(dtype):
    mus = torch.tensor([-25.0, -20.5, -20.0, -19.9, -10.0, -1.0, 0.0, 1e-3, 1.0, 5.0], dtype=dtype)
    sigmas = torch.tensor([1e-4, 1e-3, 0.05, 1.0, 20.0, 150.0], dtype=dtype)
    loc = mus.repeat_interleave(len(sigmas)).requires_grad_()
    scale = sigmas.repeat(len(mus)).requires_grad_()
    outs = {
        "n": delta_f_bmrs_n(loc, scale),
        "n_exact": delta_f_bmrs_n(loc, scale, reduced_scale=0.01),
        "n_exact_tensor": delta_f_bmrs_n(loc, scale, reduced_scale=torch.full_like(loc, 0.3)),
        "u8": delta_f_bmrs_u(loc, scale, k=8),
        "u4": delta_f_bmrs_u(loc, scale, k=4),
        "snr": log_snr(loc, scale),
    }
    for name, v in outs.items():
        assert v.dtype == dtype and v.shape == loc.shape, name
        assert torch.isfinite(v).all(), name
        grads = torch.autograd.grad(v.sum(), (loc, scale), retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads), name


def test_float32_agrees_with_float64():
    loc, scale = _grid()
    for fn in (delta_f_bmrs_n, delta_f_bmrs_u, log_snr):
        hi = fn(loc, scale)
        lo = fn(loc.float(), scale.float()).double()
        # relative in the large values (the inputs are rounded to float32), absolute near 0
        assert torch.allclose(lo, hi, rtol=1e-4, atol=1e-3), (fn.__name__, (lo - hi).abs().max())


def test_reduced_scale_zero_in_tensor_uses_limit():
    loc, scale = _grid()
    sp = torch.where(torch.arange(loc.numel()) % 2 == 0, 0.0, 0.2).to(F64)
    mixed = delta_f_bmrs_n(loc, scale, reduced_scale=sp)
    assert torch.allclose(mixed[0::2], delta_f_bmrs_n(loc, scale)[0::2])
    assert torch.allclose(mixed[1::2], delta_f_bmrs_n(loc, scale, reduced_scale=0.2)[1::2])


@pytest.mark.parametrize("k", [0, -1, 23, 30, True, "8"])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="'k'"):
        delta_f_bmrs_u(torch.tensor(0.0), torch.tensor(1.0), k=k)


def test_reduced_prior_outside_prior_raises():
    with pytest.raises(ValueError, match="'k'"):
        delta_f_bmrs_u(torch.tensor(0.0), torch.tensor(1.0), low=-10.0, k=8)
    with pytest.raises(ValueError, match="'reduced_scale'"):
        delta_f_bmrs_n(torch.tensor(0.0), torch.tensor(1.0), reduced_scale=-1.0)


def test_log_snr_matches_moments():
    loc, scale = _grid()
    d = TruncatedLogNormal(loc, scale)
    ref = torch.log(d.mean / d.stddev)
    assert torch.allclose(log_snr(loc, scale), ref, rtol=1e-8, atol=1e-8)


def test_quadrature_normalisation_and_gradient():
    # with the reduced prior equal to the prior, Delta F = log of the posterior's mass = 0
    loc = torch.tensor([-25.0, -3.0, 0.0, 5.0], dtype=F64, requires_grad=True)
    scale = torch.tensor([1e-3, 2.0, 1e-4, 0.01], dtype=F64)
    q = TruncatedNormal(loc, scale, A, B)
    zero = delta_f_quadrature(q, _prior(), _prior())
    assert torch.allclose(zero, torch.zeros_like(zero), atol=1e-9)
    reduced = TruncatedNormal(torch.tensor(A, dtype=F64), torch.tensor(0.5, dtype=F64), A, B)
    (g_quad,) = torch.autograd.grad(delta_f_quadrature(q, _prior(), reduced).sum(), loc)
    (g_closed,) = torch.autograd.grad(delta_f_bmrs_n(loc, scale, reduced_scale=0.5).sum(), loc)
    assert torch.allclose(g_quad, g_closed, rtol=1e-5, atol=1e-6)


def test_quadrature_with_other_distributions():
    # a posterior that is not a truncated normal: the logit-normal on [a, b] that AutoNormal produces, for
    # which the mass of [a', b'] is Phi((logit(u') - m) / s) - Phi((logit(l') - m) / s) with l', u' the
    # rescaled bounds
    m = torch.tensor([0.0, 2.0, -3.0], dtype=F64)
    s = torch.tensor([1.0, 0.3, 0.5], dtype=F64)
    to_x = torch.distributions.transforms.ComposeTransform(
        [
            torch.distributions.transforms.SigmoidTransform(),
            torch.distributions.transforms.AffineTransform(A, B - A),
        ]
    )
    q = dist.TransformedDistribution(dist.Normal(m, s), to_x)
    a_r, b_r = -23 * LOG2, -8 * LOG2
    reduced = dist.Uniform(torch.tensor(a_r, dtype=F64), torch.tensor(b_r, dtype=F64))
    quad = delta_f_quadrature(q, _prior(), reduced)
    normal = torch.distributions.Normal(m, s)
    lo, hi = (torch.tensor(v, dtype=F64) for v in ((a_r - A) / (B - A), (b_r - A) / (B - A)))
    mass = normal.cdf(torch.logit(hi)) - normal.cdf(torch.logit(lo))
    exact = mass.log() - math.log((b_r - a_r) / (B - A))
    assert torch.allclose(quad, exact, rtol=0.0, atol=1e-6), (quad, exact)
