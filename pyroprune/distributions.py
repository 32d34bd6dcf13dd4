r"""Gate distributions in log space: truncated normal, truncated log-normal, log-uniform.

The multiplicative gate :math:`\theta > 0` of SBP (Neklyudov, Molchanov, Ashukha & Vetrov, 2017, "Structured
Bayesian Pruning via Log-Normal Multiplicative Noise") and BMRS (Wright, Igel & Selvan, NeurIPS 2024, "BMRS:
Bayesian Model Reduction for Structured Pruning") lives on :math:`x = \log\theta \in [a, b]`:

* prior: :class:`LogUniform` -- :math:`x \sim \mathcal U(a, b)`;
* posterior: :class:`TruncatedLogNormal` -- :math:`x \sim \mathcal N(\mu, \sigma^2)` truncated to :math:`[a,
  b]` (:class:`TruncatedNormal`).

Notation: :math:`\alpha = (a - \mu)/\sigma`, :math:`\beta = (b - \mu)/\sigma`, :math:`Z = \Phi(\beta) -
\Phi(\alpha)`.

Every quantity is computed so that it stays accurate over :math:`\mu \in [-25, 5]`, :math:`\sigma \in
[10^{-4}, 150]`, :math:`[a, b] = [-20, 0]`, in float32 and float64: the whole mass may sit far outside
:math:`[a, b]` (then :math:`q` is an exponential-like spike at a bound, of width down to :math:`2\cdot
10^{-9}`, while :math:`\log Z \approx -10^{9}`), or :math:`\sigma` may be so large that :math:`q` is nearly
uniform. ``docs/distributions.md`` lists the stable form used for each quantity; the two ideas throughout are

1. *scaled masses*: :math:`\log Z = \hat L - c^2/2` with :math:`c = \mathrm{clamp}(0, \alpha, \beta)` and
   :math:`\hat L` of order :math:`\log|c|` (:func:`~pyroprune.special.log_ndtr_diff_scaled`); the quadratic
   parts of different terms are cancelled analytically, as differences of squares :math:`(u - v)(u + v)`
   computed from :math:`x`-space differences;
2. *moments measured from the near bound*: when the mass piles against a bound, :math:`t = (b - x)/\sigma` (or
   :math:`(x - a)/\sigma`) has mean and variance of order :math:`1/|\beta|` and :math:`1/\beta^2`, which come
   from Laplace's continued fraction (:func:`~pyroprune.special.laplace_cf`) without cancellation.
"""

from __future__ import annotations

import math
import numbers

import pyro.distributions as dist
import torch
from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.kl import register_kl
from torch.distributions.transforms import AffineTransform, ComposeTransform, ExpTransform, SigmoidTransform
from torch.distributions.utils import broadcast_all

from .special import (
    LOG_2,
    LOG_SQRT_2PI,
    LOG_SQRT_PI,
    SQRT_2,
    laplace_cf,
    log1mexp,
    log_erfcx,
    log_ndtr,
    log_ndtr_diff,
    log_ndtr_diff_scaled,
    ndtri_exp,
)

__all__ = [
    "LogUniform",
    "TruncatedLogNormal",
    "TruncatedNormal",
    "log_interval",
]

# Below this variance of x the variance of theta uses the cumulant series (see TruncatedLogNormal.variance).
_SMALL_SPREAD = 1e-8


def _tail_newton_steps(dtype: torch.dtype) -> int:
    # Newton iterations (without gradient) for the quantile measured from the near bound, before the final
    # step that carries the gradient. From the quadratic lower bound the error, in units of the local scale
    # 1/F'(0), is < 5e-3, 7e-6, 2e-11, 2e-15 after 0, 1, 2, 3 steps (checked over |hi| in [1e-3, 3e5], u down
    # to 1e-300).
    return 3 if dtype == torch.float64 else 2


# ----------------------------------------------------------------------------------------------------------
# parameter checks
# ----------------------------------------------------------------------------------------------------------


def _validate_default(validate_args: bool | None) -> bool:
    return bool(torch.distributions.Distribution._validate_args if validate_args is None else validate_args)


def _first_bad(mask: torch.Tensor, *values) -> list:
    idx = tuple(int(i) for i in (~mask).nonzero()[0]) if mask.dim() else ()
    out = []
    for v in values:
        v = torch.as_tensor(v).expand(mask.shape)
        out.append(v[idx].item())
    return out


def _check_parameters(name: str, low, high, scale=None, validate_args: bool | None = None) -> None:
    """Raise ``ValueError`` naming the offending parameter.

    Python numbers are always checked (for free); tensors only when validation is on, because the check
    synchronises with the device.
    """
    if scale is not None:
        if isinstance(scale, numbers.Real):
            if not scale > 0:
                raise ValueError(f"{name}: 'scale' must be > 0 (got scale={scale})")
        elif _validate_default(validate_args):
            ok = torch.as_tensor(scale) > 0
            if not bool(ok.all()):
                (bad,) = _first_bad(ok, scale)
                raise ValueError(f"{name}: 'scale' must be > 0 (got scale={bad})")
    if isinstance(low, numbers.Real) and isinstance(high, numbers.Real):
        if not low < high:
            raise ValueError(f"{name}: 'low' must be < 'high' (got low={low}, high={high})")
    elif _validate_default(validate_args):
        ok = torch.as_tensor(low) < torch.as_tensor(high)
        if not bool(ok.all()):
            bad_low, bad_high = _first_bad(
                ok, *torch.broadcast_tensors(torch.as_tensor(low), torch.as_tensor(high))
            )
            raise ValueError(f"{name}: 'low' must be < 'high' (got low={bad_low}, high={bad_high})")


def _wide(x: torch.Tensor) -> torch.dtype:
    """The dtype used for the few quantities that need more than float32 internally (float64 where the device
    has it; MPS has no float64)."""
    if x.dtype == torch.float64 or x.device.type == "mps":
        return x.dtype
    return torch.float64


# ----------------------------------------------------------------------------------------------------------
# the standardised truncated normal
# ----------------------------------------------------------------------------------------------------------


class _Standard:
    r"""Moments of :math:`\xi \sim \mathcal N(0, 1)` truncated to :math:`[\alpha, \beta]`.

    The interval is first mirrored (:math:`\xi \to -\xi`) when :math:`\alpha + \beta > 0`, so that in the
    working coordinates :math:`[lo, hi]` the mass leans towards :math:`hi`. Then either

    * ``tail`` (:math:`hi < 0`): the mass piles against :math:`hi`. With :math:`t = hi - \xi \ge 0` and
      :math:`\rho = \Phi(lo)/\Phi(hi)`, the truncated law is the one-sided law on :math:`(-\infty, hi]` with
      the one-sided law on :math:`(-\infty, lo]` removed: for :math:`\rho < 1/2`

      .. math::

          E[t] = \frac{g_{hi} - \rho\,(W + g_{lo})}{1 - \rho},\qquad
          E[t^2] = \frac{v_{hi} + g_{hi}^2 - \rho\,(W^2 + 2Wg_{lo} + v_{lo} + g_{lo}^2)}{1 - \rho},

      :math:`W = hi - lo`, with the one-sided :math:`g = \sqrt2 K_1` and :math:`v = 2K_1(K_2 - K_1)` of
      :func:`~pyroprune.special.laplace_cf`; for :math:`\rho \ge 1/2` (both bounds matter, so :math:`|hi|` is
      moderate) the textbook formulas are used. The entropy is :math:`H = -hi\,E[t] + \tfrac12 E[t^2] +
      \log\sqrt{2\pi} + \hat L`, which has no :math:`\pm hi^2/2` terms left to cancel;
    * otherwise (:math:`lo \le 0 \le hi`): the textbook formulas with :math:`P = \varphi(lo)/Z`, :math:`Q =
      \varphi(hi)/Z`: :math:`E[\xi] = P - Q`, :math:`\mathrm{Var}[\xi] = 1 + (lo - m)P - (hi - m)Q`, :math:`H
      = \tfrac12(1 + lo P - hi Q) + \log\sqrt{2\pi} + \log Z`.

    Attributes (original coordinates unless noted): ``flip``, ``tail``, ``et`` (:math:`E[t]`, tail case),
    ``mean``, ``var``, ``entropy``, ``lhat`` (:math:`\log Z + c^2/2`), ``k3`` (third cumulant).
    """

    def __init__(self, alpha: torch.Tensor, beta: torch.Tensor) -> None:
        flip = (alpha + beta) > 0
        lo = torch.where(flip, -beta, alpha)
        hi = torch.where(flip, -alpha, beta)
        tail = hi < 0
        lo_fin = torch.isfinite(lo)
        hi_fin = torch.isfinite(hi)
        one = torch.ones_like(lo)

        # ---- mass piled against hi < 0 (safe inputs elsewhere: lo = -2, hi = -1) ---------------------------
        hi_t = torch.where(tail, hi, -one)
        lo_t = torch.where(tail & lo_fin, lo, hi_t - 1.0)
        w_h = -hi_t / SQRT_2
        w_l = -lo_t / SQRT_2
        k1h, k2h, k3h = laplace_cf(w_h)
        k1l, k2l, _ = laplace_cf(w_l)
        le_h = -LOG_SQRT_PI - torch.log(w_h + k1h)  # log erfcx(w_h)
        le_l = -LOG_SQRT_PI - torch.log(w_l + k1l)
        r_h = SQRT_2 * (w_h + k1h)
        g_h, g_l = SQRT_2 * k1h, SQRT_2 * k1l
        v_h, v_l = 2.0 * k1h * (k2h - k1h), 2.0 * k1l * (k2l - k1l)
        k3_one_sided = 4.0 * r_h * k1h * k1h * k2h * (k2h - k3h)
        log_rho = -0.5 * (lo_t - hi_t) * (lo_t + hi_t) + le_l - le_h
        log_rho = torch.where(tail & lo_fin, log_rho.clamp(max=0.0), torch.full_like(log_rho, -math.inf))
        rho = torch.exp(log_rho)
        one_m_rho = -torch.expm1(log_rho)
        lhat_t = -LOG_2 + le_h + log1mexp(log_rho)
        width = hi_t - lo_t
        mixture = rho < 0.5
        one_m_safe = torch.where(mixture, one_m_rho, one)
        et_m = (g_h - rho * (width + g_l)) / one_m_safe
        et2_m = (v_h + g_h * g_h - rho * (width * width + 2.0 * width * g_l + v_l + g_l * g_l)) / one_m_safe
        vt_m = et2_m - et_m * et_m
        # both bounds matter: textbook formulas, scaled by exp(hi^2 / 2) to stay finite
        lhat_d = torch.where(mixture, torch.zeros_like(lhat_t), lhat_t)
        p_d = torch.exp(-0.5 * (lo_t - hi_t) * (lo_t + hi_t) - LOG_SQRT_2PI - lhat_d)
        q_d = torch.exp(-LOG_SQRT_2PI - lhat_d)
        m_d = p_d - q_d
        et_d = hi_t - m_d
        vt_d = 1.0 + (lo_t - m_d) * p_d - (hi_t - m_d) * q_d
        k3_d = _third_cumulant(m_d, lo_t, hi_t, p_d, q_d)
        et = torch.where(mixture, et_m, et_d)
        vt = torch.where(mixture, vt_m, vt_d)
        k3_t = torch.where(mixture, k3_one_sided, k3_d)
        ent_t = -hi_t * et + 0.5 * (vt + et * et) + LOG_SQRT_2PI + lhat_t
        mean_t = hi_t - et

        # ---- lo <= 0 <= hi (safe inputs elsewhere: -1, 1) --------------------------------------------------
        lo_s = torch.where(~tail & lo_fin, lo, -one)
        hi_s = torch.where(~tail & hi_fin, hi, one)
        lz = log_ndtr_diff_scaled(torch.where(tail, -one, lo), torch.where(tail, one, hi))
        lz_safe = torch.where(tail, torch.zeros_like(lz), lz)
        p_s = torch.where(
            lo_fin, torch.exp(-0.5 * lo_s * lo_s - LOG_SQRT_2PI - lz_safe), torch.zeros_like(lz)
        )
        q_s = torch.where(
            hi_fin, torch.exp(-0.5 * hi_s * hi_s - LOG_SQRT_2PI - lz_safe), torch.zeros_like(lz)
        )
        m_s = p_s - q_s
        v_s = 1.0 + (lo_s - m_s) * p_s - (hi_s - m_s) * q_s
        ent_s = 0.5 * (1.0 + lo_s * p_s - hi_s * q_s) + LOG_SQRT_2PI + lz
        k3_s = _third_cumulant(m_s, lo_s, hi_s, p_s, q_s)

        mean_w = torch.where(tail, mean_t, m_s)
        k3_w = torch.where(tail, k3_t, k3_s)
        self.flip = flip
        self.tail = tail
        self.et = torch.where(tail, et, torch.zeros_like(et))
        self.mean = torch.where(flip, -mean_w, mean_w)
        self.var = torch.where(tail, vt, v_s)
        self.entropy = torch.where(tail, ent_t, ent_s)
        self.lhat = torch.where(tail, lhat_t, lz)
        self.k3 = torch.where(flip, -k3_w, k3_w)


def _third_cumulant(m, lo, hi, p, q):
    # mu_3 = M_3 - 3 m M_2 + 2 m^3 with M_2 = 1 + lo P - hi Q, M_3 = 2 m + lo^2 P - hi^2 Q.
    return -m + lo * lo * p - hi * hi * q - 3.0 * m * (lo * p - hi * q) + 2.0 * m * m * m


def _clamp(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, low), high)


# ----------------------------------------------------------------------------------------------------------
# TruncatedNormal
# ----------------------------------------------------------------------------------------------------------


class TruncatedNormal(dist.TorchDistribution):
    r""":math:`\mathcal N(\mu, \sigma^2)` truncated to :math:`[a, b]` -- here the law of :math:`x =
    \log\theta` of an SBP / BMRS gate (Neklyudov et al. 2017; Wright et al. 2024).

    .. math::

        q(x) = \frac{\varphi((x - \mu)/\sigma)}{\sigma Z},\qquad a \le x \le b,\qquad
        Z = \Phi(\beta) - \Phi(\alpha).

    Reparameterised sampling by the inverse CDF (gradients flow to ``loc`` and ``scale``). Stable far outside
    the bulk (see the module docstring): e.g. ``loc=5, scale=1e-4`` on ``[-20, 0]`` is an exponential spike of
    width :math:`\sigma^2/(\mu - b) = 2\cdot 10^{-9}` against :math:`b`, and every method returns finite,
    accurate values and gradients there.

    :param loc: :math:`\mu`.
    :param scale: :math:`\sigma > 0`.
    :param low: :math:`a` (may be ``-inf``).
    :param high: :math:`b > a` (may be ``+inf``).
    :raises ValueError: if ``low >= high`` or ``scale <= 0`` (Python numbers always; tensors when validation
        is on).
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "low": constraints.real,
        "high": constraints.real,
    }
    has_rsample = True

    def __init__(self, loc, scale, low, high, validate_args: bool | None = None) -> None:
        _check_parameters(type(self).__name__, low, high, scale, validate_args)
        self.loc, self.scale, self.low, self.high = broadcast_all(loc, scale, low, high)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.low = self.low.expand(batch_shape)
        new.high = self.high.expand(batch_shape)
        super(TruncatedNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    # -- helpers

    def _standardised(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.low - self.loc) / self.scale, (self.high - self.loc) / self.scale

    def _standard(self) -> _Standard:
        # The moments are evaluated in float64 (also for float32 parameters, cast back by the callers): for a
        # nearly uniform q (sigma >> b - a) the standardised variance, about (b - a)^2 / (12 sigma^2), is a
        # difference of O(1) terms, which costs float32 too many of its digits.
        wide = _wide(self.loc)
        loc, scale, low, high = (t.to(wide) for t in (self.loc, self.scale, self.low, self.high))
        return _Standard((low - loc) / scale, (high - loc) / scale)

    @property
    def log_mass(self) -> torch.Tensor:
        r""":math:`\log Z = \log(\Phi(\beta) - \Phi(\alpha))`, the log normaliser of the truncation."""
        return log_ndtr_diff(*self._standardised())

    # -- densities

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log q(x) = -\frac{(x - \mu)^2 - (x^* - \mu)^2}{2\sigma^2} - \log\sigma - \log\sqrt{2\pi} -
        \hat L`, with :math:`x^* = \mathrm{clamp}(\mu, a, b)` and :math:`\hat L = \log Z + (x^* -
        \mu)^2/(2\sigma^2)`; the difference of squares is evaluated as :math:`(x - x^*)(x + x^* - 2\mu)`, so a
        spike against :math:`b` costs no precision. ``-inf`` outside :math:`[a, b]`."""
        if self._validate_args:
            self._validate_sample(value)
        return self._log_prob(value)

    def _log_prob(self, value: torch.Tensor) -> torch.Tensor:
        loc, scale, low, high = self.loc, self.scale, self.low, self.high
        value = torch.as_tensor(value, dtype=loc.dtype, device=loc.device)
        lhat = log_ndtr_diff_scaled(*self._standardised())
        x_star = _clamp(loc, low, high)
        inside = (value >= low) & (value <= high)
        x = torch.where(inside, value, x_star)
        lp = (
            -(x - x_star) * (x + x_star - 2.0 * loc) / (2.0 * scale * scale)
            - torch.log(scale)
            - LOG_SQRT_2PI
            - lhat
        )
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`F(x) = \frac{\Phi((x-\mu)/\sigma) - \Phi(\alpha)}{Z}`, as the ratio of two scaled masses
        (:math:`[a, x]` over :math:`[a, b]`), whose quadratic parts cancel as a difference of squares."""
        if self._validate_args:
            self._validate_sample(value)
        loc, scale, low, high = self.loc, self.scale, self.low, self.high
        value = torch.as_tensor(value, dtype=loc.dtype, device=loc.device)
        above = value > low
        x = torch.where(above, _clamp(value, low, high), high)  # safe: the x = a branch is the constant 0
        alpha, beta = self._standardised()
        x1 = _clamp(loc, low, x)
        x2 = _clamp(loc, low, high)
        log_cdf = (
            log_ndtr_diff_scaled(alpha, (x - loc) / scale)
            - log_ndtr_diff_scaled(alpha, beta)
            - (x1 - x2) * (x1 + x2 - 2.0 * loc) / (2.0 * scale * scale)
        )
        return torch.where(above, torch.exp(log_cdf.clamp(max=0.0)), torch.zeros_like(log_cdf))

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        r"""Quantile function, solved in log space so that neither tail underflows.

        * Mass piled against a bound (say :math:`b`): with :math:`t = (b - x)/\sigma`, :math:`\rho =
          \Phi(\alpha)/\Phi(\beta)`, the quantile :math:`u` solves :math:`F(t) := \ell(\beta) - \ell(\beta -
          t) = -\log(u + (1-u)\rho)`, :math:`\ell = \log\Phi`, where :math:`F(t) = t^2/2 - \beta t +
          \log\mathrm{erfcx}(w) - \log\mathrm{erfcx}(w + t/\sqrt2)`, :math:`w = -\beta/\sqrt2`, is convex and
          increasing. Newton's method from the lower bound :math:`t_0 = 2y/(r + \sqrt{r^2 + 2y})` (:math:`r =
          F'(0)`, the inverse Mills ratio) converges in a few steps, and :math:`x = b - \sigma t` keeps full
          relative precision in the spike (a solution for :math:`\xi` itself would lose it all: :math:`x = \mu
          + \sigma\xi` with :math:`\mu + \sigma\xi \approx b` cancels).
        * Otherwise :math:`\xi = \Phi^{-1}` of :math:`\log(\Phi(\alpha) + uZ)` via
          :func:`~pyroprune.special.ndtri_exp`, or of the mirrored upper tail :math:`\log(\Phi(-\beta) +
          (1-u)Z)` when that is the smaller, rather than :math:`\Phi^{-1}(\Phi(\alpha) + uZ)`, which
          underflows.

        The last Newton step carries the gradient, which is therefore the exact implicit derivative.
        """
        loc, scale, low, high = self.loc, self.scale, self.low, self.high
        u = torch.as_tensor(value, dtype=loc.dtype, device=loc.device)
        alpha, beta = self._standardised()
        alpha, beta, u = torch.broadcast_tensors(alpha, beta, u)
        loc, scale, low, high = (t.expand(u.shape) for t in (loc, scale, low, high))
        flip = (alpha + beta) > 0
        lo = torch.where(flip, -beta, alpha)
        hi = torch.where(flip, -alpha, beta)
        tail = hi < 0
        log_u = torch.log(u)
        log_1mu = torch.log1p(-u)

        # ---- against a bound: Newton in t, in the mirrored coordinates ------------------------------------
        # (the quantile u of x is the quantile 1 - u of the mirrored variable)
        lu = torch.where(flip, log_1mu, log_u)
        l1mu = torch.where(flip, log_u, log_1mu)
        one = torch.ones_like(hi)
        lo_fin = torch.isfinite(lo)
        hi_t = torch.where(tail, hi, -one)
        lo_t = torch.where(tail & lo_fin, lo, hi_t - 1.0)
        w = -hi_t / SQRT_2
        le_w = log_erfcx(w)
        log_rho = -0.5 * (lo_t - hi_t) * (lo_t + hi_t) + log_erfcx(-lo_t / SQRT_2) - le_w
        log_rho = torch.where(tail & lo_fin, log_rho.clamp(max=0.0), torch.full_like(log_rho, -math.inf))
        y = -torch.logaddexp(lu, l1mu + log_rho)
        width = torch.where(lo_fin, hi_t - lo_t, torch.full_like(hi_t, math.inf))
        y = torch.where(tail, y, torch.ones_like(y))
        t = _solve_tail(hi_t, w, le_w, y, width)
        x_tail = torch.where(flip, low + scale * t, high - scale * t)

        # ---- bulk inside [a, b]: xi from log Phi ---------------------------------------------------------
        a_s = torch.where(tail, -one, alpha)
        b_s = torch.where(tail, one, beta)
        lz = log_ndtr_diff(a_s, b_s)
        lower = torch.logaddexp(log_ndtr(a_s), log_u + lz)
        upper = torch.logaddexp(log_ndtr(-b_s), log_1mu + lz)
        # invert whichever tail is thinner: Phi^{-1} is accurate there, and the other one is its mirror image
        use_lower = lower <= upper
        z = ndtri_exp(torch.minimum(lower, upper))
        xi = torch.where(use_lower, z, -z)
        x_bulk = loc + scale * torch.where(tail, torch.zeros_like(xi), xi)

        x = torch.where(tail, x_tail, x_bulk)
        return _clamp(x, low, high)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        finfo = torch.finfo(self.loc.dtype)
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        # keep u strictly inside (0, 1): the quantile function is then finite with finite gradients
        return self.icdf(u.clamp(min=finfo.tiny, max=1.0 - finfo.eps))

    # -- moments

    @property
    def mean(self) -> torch.Tensor:
        r""":math:`E[x] = \mu + \sigma\,(\varphi(\alpha) - \varphi(\beta))/Z`; against a bound it is evaluated
        as :math:`b - \sigma E[t]` (or :math:`a + \sigma E[t]`), which keeps relative precision in the
        spike."""
        s = self._standard()
        dtype = self.loc.dtype
        et, mean = s.et.to(dtype), s.mean.to(dtype)
        near = torch.where(s.flip, self.low + self.scale * et, self.high - self.scale * et)
        bulk = self.loc + self.scale * torch.where(s.tail, torch.zeros_like(mean), mean)
        return torch.where(s.tail, near, bulk)

    @property
    def variance(self) -> torch.Tensor:
        r""":math:`\mathrm{Var}[x] = \sigma^2\left(1 + \frac{\alpha\varphi(\alpha) - \beta\varphi(\beta)}{Z} -
        \left(\frac{\varphi(\alpha) - \varphi(\beta)}{Z}\right)^2\right)`, from the continued fraction in the
        spike regime (:class:`_Standard`)."""
        return self.scale * self.scale * self._standard().var.clamp(min=0.0).to(self.loc.dtype)

    def entropy(self) -> torch.Tensor:
        r""":math:`H[x] = \log(\sigma\sqrt{2\pi e}\,Z) + \frac{\alpha\varphi(\alpha) -
        \beta\varphi(\beta)}{2Z}`, with the :math:`\pm\beta^2/2` parts cancelled analytically in the spike
        regime."""
        return self._entropy_wide().to(self.loc.dtype)

    def _entropy_wide(self) -> torch.Tensor:
        s = self._standard()
        return torch.log(self.scale.to(s.entropy.dtype)) + s.entropy


def _tail_objective(t, hi, w, le_w):
    """F(t) = log Phi(hi) - log Phi(hi - t) and its slope F'(t) = phi / Phi at hi - t (one continued
    fraction).

    With w_t = w + t / sqrt 2: F = t^2/2 - hi t + log erfcx(w) - log erfcx(w_t) and F' = sqrt2 (w_t +
    K1(w_t)), using log erfcx(w_t) = -log(sqrt(pi) (w_t + K1(w_t))).
    """
    wt = w + t / SQRT_2
    k1, _, _ = laplace_cf(wt)
    f = 0.5 * t * t - hi * t + le_w + LOG_SQRT_PI + torch.log(wt + k1)
    return f, SQRT_2 * (wt + k1)


def _solve_tail(hi, w, le_w, y, width, steps: int | None = None):
    """Solve F(t) = y for t in [0, width] (see TruncatedNormal.icdf)."""
    with torch.no_grad():
        hi_d, w_d, le_d, y_d = hi.detach(), w.detach(), le_w.detach(), y.detach()
        _, r0 = _tail_objective(torch.zeros_like(w_d), hi_d, w_d, le_d)
        # F(t) <= r0 t + t^2/2 (F'' < 1), so this root of the quadratic is a lower bound on the solution
        t = 2.0 * y_d / (r0 + torch.sqrt(r0 * r0 + 2.0 * y_d))
        t = torch.minimum(t, width)
        for _ in range(_tail_newton_steps(t.dtype) if steps is None else steps):
            f, slope = _tail_objective(t, hi_d, w_d, le_d)
            t = torch.minimum((t - (f - y_d) / slope).clamp(min=0.0), width)
        _, slope = _tail_objective(t, hi_d, w_d, le_d)
    # one more Newton step with gradients: the value barely moves, the derivative is the implicit one
    f, _ = _tail_objective(t, hi, w, le_w)
    return t - (f - y) / slope


# ----------------------------------------------------------------------------------------------------------
# support of theta: an interval stored through its log bounds, with a bijection through log(theta)
# ----------------------------------------------------------------------------------------------------------


class _LogInterval(constraints._Interval):
    r""":math:`\theta \in [e^{a}, e^{b}]`, remembering :math:`a` (``log_low``) and :math:`b` (``log_high``).

    :func:`torch.distributions.biject_to` maps it through :math:`\log\theta`: :math:`u \mapsto \exp(a + (b -
    a)\,\mathrm{sigmoid}(u))`, so that Pyro's AutoGuides (``AutoNormal``, ``AutoDelta``, ...) on a gate site
    work over :math:`\log\theta` -- never through :math:`\theta = e^a + (e^b - e^a)\,\mathrm{sigmoid}(u)`,
    which squeezes the whole log scale below :math:`\theta \approx 10^{-3}` into a sliver of :math:`u`.
    """

    def __init__(self, log_low, log_high) -> None:
        self.log_low = log_low
        self.log_high = log_high
        exp = torch.exp if isinstance(log_low, torch.Tensor) else math.exp
        exp_high = torch.exp if isinstance(log_high, torch.Tensor) else math.exp
        super().__init__(exp(log_low), exp_high(log_high))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__[1:]}(log_low={self.log_low}, log_high={self.log_high})"


#: Constructor of the log-interval constraint (like :data:`torch.distributions.constraints.interval`).
log_interval = _LogInterval


@biject_to.register(_LogInterval)
@transform_to.register(_LogInterval)
def _log_interval_bijection(constraint: _LogInterval):
    low, high = constraint.log_low, constraint.log_high
    return ComposeTransform([SigmoidTransform(), AffineTransform(low, high - low), ExpTransform()])


def _log_of_theta(value: torch.Tensor, d) -> torch.Tensor:
    """log(theta), clamped into [low, high] where theta passed the (closed) support check: exp and log do not
    round-trip exactly, and a boundary draw must not fall out of the support."""
    x = torch.log(value)
    inside = (value >= d.support.lower_bound) & (value <= d.support.upper_bound)
    return torch.where(inside, _clamp(x, d.low, d.high), x)


# ----------------------------------------------------------------------------------------------------------
# TruncatedLogNormal
# ----------------------------------------------------------------------------------------------------------


def _log_mgf_parts(loc, scale, low, high, k: float):
    r"""Pieces of :math:`\log E[e^{kx}] = k x^*_k - T_k + \hat L_k - \hat L_0` for the truncated normal.

    Completing the square, :math:`e^{kx}\varphi` is a Gaussian with mean :math:`\mu_k = \mu + k\sigma^2`;
    writing both masses in scaled form, every :math:`\sigma^2/2`-sized term cancels analytically and what is
    left is :math:`x^*_k = \mathrm{clamp}(\mu_k, a, b)`, :math:`T_k = (c_k - c_0)(c_k + c_0)/(2\sigma^2)` with
    :math:`c_k = \mathrm{clamp}(k\sigma^2, a - \mu, b - \mu)`, and :math:`\hat L_k` =
    :func:`~pyroprune.special.log_ndtr_diff_scaled` at :math:`(\alpha - k\sigma, \beta - k\sigma)`.
    """
    var = scale * scale
    a_rel, b_rel = low - loc, high - loc
    c0 = _clamp(torch.zeros_like(var), a_rel, b_rel)
    ck = _clamp(k * var, a_rel, b_rel)
    t_k = (ck - c0) * (ck + c0) / (2.0 * var)
    lhat_k = log_ndtr_diff_scaled(a_rel / scale - k * scale, b_rel / scale - k * scale)
    return ck, t_k, lhat_k


class TruncatedLogNormal(dist.TransformedDistribution):
    r""":math:`\theta = e^{x}` with :math:`x \sim` :class:`TruncatedNormal` :math:`(\mu, \sigma, a, b)`: the
    variational posterior of a multiplicative gate in SBP (Neklyudov et al. 2017) and BMRS (Wright et al.
    2024).

    A :class:`~pyro.distributions.TransformedDistribution` of the base :class:`TruncatedNormal` by
    :class:`~torch.distributions.transforms.ExpTransform`, so ``poutine.reparam`` with ``TransformReparam``
    works.

    .. math::

        E[\theta] = e^{\mu + \sigma^2/2}\,\frac{\Phi(\beta - \sigma) - \Phi(\alpha - \sigma)}{Z},\qquad
        E[\theta^2] = e^{2\mu + 2\sigma^2}\,\frac{\Phi(\beta - 2\sigma) - \Phi(\alpha - 2\sigma)}{Z},\qquad
        H[\theta] = H[x] + E[x].

    The support is :data:`log_interval` :math:`(a, b)`; its ``biject_to`` goes through :math:`\log\theta`.

    :param loc: :math:`\mu`.
    :param scale: :math:`\sigma > 0`.
    :param low: :math:`a` (default -20, as in SBP and BMRS).
    :param high: :math:`b > a` (default 0).
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "low": constraints.real,
        "high": constraints.real,
    }
    has_rsample = True

    def __init__(self, loc, scale, low=-20.0, high=0.0, validate_args: bool | None = None) -> None:
        _check_parameters(type(self).__name__, low, high, scale, validate_args)
        base = TruncatedNormal(loc, scale, low, high, validate_args=validate_args)
        super().__init__(base, ExpTransform(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedLogNormal, _instance)
        return super().expand(batch_shape, _instance=new)

    @property
    def loc(self) -> torch.Tensor:
        return self.base_dist.loc

    @property
    def scale(self) -> torch.Tensor:
        return self.base_dist.scale

    @property
    def low(self) -> torch.Tensor:
        return self.base_dist.low

    @property
    def high(self) -> torch.Tensor:
        return self.base_dist.high

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return log_interval(self.low, self.high)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log q(\theta) = \log q_x(\log\theta) - \log\theta`."""
        if self._validate_args:
            self._validate_sample(value)
        x = _log_of_theta(value, self)
        lp = self.base_dist._log_prob(x) - x
        return torch.where(torch.isfinite(x), lp, torch.full_like(lp, -math.inf))

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        x = _log_of_theta(value, self)
        return self.base_dist.cdf(_clamp(x, self.low, self.high))

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.base_dist.icdf(value))

    @property
    def mean(self) -> torch.Tensor:
        r""":math:`E[\theta] = \exp(x^*_1 - T_1 + \hat L_1 - \hat L_0)` (see :func:`_log_mgf_parts`): no
        :math:`e^{\sigma^2/2}` is ever formed, so :math:`\sigma = 150` neither overflows nor cancels."""
        return torch.exp(self._log_mean())

    def _log_mean(self) -> torch.Tensor:
        loc, scale, low, high = self.loc, self.scale, self.low, self.high
        _, t1, lhat1 = _log_mgf_parts(loc, scale, low, high, 1.0)
        lhat0 = log_ndtr_diff_scaled((low - loc) / scale, (high - loc) / scale)
        return _clamp(loc + scale * scale, low, high) - t1 + lhat1 - lhat0

    def _log_ratio_d(self) -> torch.Tensor:
        r""":math:`D = \log E[\theta^2] - 2\log E[\theta] = \log(1 + \mathrm{Var}[\theta]/E[\theta]^2) \ge 0`,
        in the wide dtype (float64)."""
        wide = _wide(self.loc)
        loc, scale, low, high = (t.to(wide) for t in (self.loc, self.scale, self.low, self.high))
        c1, t1, lhat1 = _log_mgf_parts(loc, scale, low, high, 1.0)
        c2, t2, lhat2 = _log_mgf_parts(loc, scale, low, high, 2.0)
        lhat0 = log_ndtr_diff_scaled((low - loc) / scale, (high - loc) / scale)
        d_direct = 2.0 * (c2 - c1) - t2 + 2.0 * t1 + lhat2 - 2.0 * lhat1 + lhat0
        # Small spread: D is a second difference of O(1) numbers; use its cumulant series instead, D = kappa_2
        # + kappa_3 + 7/12 kappa_4 + ..., truncated after kappa_3 (relative error ~ 3.5 kappa_2).
        s = _Standard((low - loc) / scale, (high - loc) / scale)
        k2 = scale * scale * s.var.clamp(min=0.0)
        d_series = k2 + scale * scale * scale * s.k3
        small = k2 < _SMALL_SPREAD
        return torch.where(small, d_series, d_direct).clamp(min=0.0)

    @property
    def variance(self) -> torch.Tensor:
        r""":math:`\mathrm{Var}[\theta] = E[\theta]^2\,\mathrm{expm1}(D)`, :math:`D = \log E[\theta^2] - 2\log
        E[\theta]`.

        :math:`E[\theta^2] - E[\theta]^2` cancels catastrophically when the spread of :math:`x` is small
        (:math:`\sigma` tiny, or a spike against a bound), so :math:`D` is formed directly: as the second
        difference :math:`2(c_2 - c_1) - T_2 + 2T_1 + \hat L_2 - 2\hat L_1 + \hat L_0` of the scaled log-MGF
        (in which every :math:`\mu` and :math:`\sigma^2` term cancels exactly), computed in float64 (also for
        float32 inputs; the result is cast back), and, when :math:`\mathrm{Var}[x] < 10^{-8}`, by the cumulant
        series :math:`D = \kappa_2 + \kappa_3 + O(\kappa_4)` with :math:`\kappa_2 = \sigma^2\mathrm{Var}[\xi]`
        and :math:`\kappa_3 = \sigma^3\kappa_3[\xi]` from the continued fraction.
        """
        d = self._log_ratio_d()
        log_var = 2.0 * self._log_mean().to(d.dtype) + _log_expm1(d)
        return torch.exp(log_var).to(self.loc.dtype)

    def entropy(self) -> torch.Tensor:
        r""":math:`H[\theta] = H[x] + E[x]` (the Jacobian of :math:`\theta = e^x`)."""
        return self.base_dist.entropy() + self.base_dist.mean


def _log_expm1(d: torch.Tensor) -> torch.Tensor:
    """log(expm1(d)) for d >= 0, without overflow for large d."""
    big = d > 1.0
    d_big = torch.where(big, d, torch.full_like(d, 2.0))
    d_small = torch.where(big, torch.ones_like(d), d)
    return torch.where(big, d_big + log1mexp(-d_big), torch.log(torch.expm1(d_small)))


# ----------------------------------------------------------------------------------------------------------
# LogUniform
# ----------------------------------------------------------------------------------------------------------


class LogUniform(dist.TransformedDistribution):
    r""":math:`\theta` with :math:`\log\theta \sim \mathcal U(a, b)`: the (truncated) log-uniform prior of SBP
    (Neklyudov et al. 2017) and BMRS (Wright et al. 2024),

    .. math::

        p(\theta) = \frac{1}{(b - a)\,\theta},\qquad e^{a} \le \theta \le e^{b}.

    :param low: :math:`a`.
    :param high: :math:`b > a`.
    """

    arg_constraints = {"low": constraints.real, "high": constraints.real}
    has_rsample = True

    def __init__(self, low, high, validate_args: bool | None = None) -> None:
        _check_parameters(type(self).__name__, low, high, None, validate_args)
        low, high = broadcast_all(low, high)
        base = dist.Uniform(low, high, validate_args=validate_args)
        super().__init__(base, ExpTransform(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LogUniform, _instance)
        return super().expand(batch_shape, _instance=new)

    @property
    def low(self) -> torch.Tensor:
        return self.base_dist.low

    @property
    def high(self) -> torch.Tensor:
        return self.base_dist.high

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return log_interval(self.low, self.high)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`-\log(b - a) - \log\theta` on the support, ``-inf`` outside."""
        if self._validate_args:
            self._validate_sample(value)
        x = _log_of_theta(value, self)
        inside = (x >= self.low) & (x <= self.high)
        lp = -torch.log(self.high - self.low) - torch.where(inside, x, torch.zeros_like(x))
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        x = _log_of_theta(value, self)
        return ((x - self.low) / (self.high - self.low)).clamp(0.0, 1.0)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.low + (self.high - self.low) * value)

    @property
    def mean(self) -> torch.Tensor:
        r""":math:`E[\theta] = \frac{e^b - e^a}{b - a} = e^{b}\,\frac{-\mathrm{expm1}(-(b - a))}{b - a}`."""
        width = self.high - self.low
        return torch.exp(self.high) * (-torch.expm1(-width)) / width

    @property
    def variance(self) -> torch.Tensor:
        r""":math:`\mathrm{Var}[\theta] = E[\theta]^2\,\mathrm{expm1}(D)` with :math:`D = S(L) - 2S(L/2)`,
        :math:`S(z) = \log(\sinh z / z)`, :math:`L = b - a` -- the second difference of the uniform's cumulant
        generating function, free of the cancellation in :math:`E[\theta^2] - E[\theta]^2`. For :math:`L \le
        1/2` the series :math:`D = L^2/12 - 7L^4/1440 + 31L^6/90720 - 127L^8/4838400 + 511 L^{10}/239500800`
        is used."""
        wide = _wide(self.low)
        width = (self.high - self.low).to(wide)
        small = width <= 0.5
        ws = torch.where(small, width, torch.zeros_like(width))
        w2 = ws * ws
        d_series = w2 * (
            1.0 / 12.0
            + w2
            * (-7.0 / 1440.0 + w2 * (31.0 / 90720.0 + w2 * (-127.0 / 4838400.0 + w2 * 511.0 / 239500800.0)))
        )
        wb = torch.where(small, torch.ones_like(width), width)
        d_direct = _log_sinhc(wb) - 2.0 * _log_sinhc(0.5 * wb)
        d = torch.where(small, d_series, d_direct)
        log_mean = self.high.to(wide) + torch.log(-torch.expm1(-width)) - torch.log(width)
        return torch.exp(2.0 * log_mean + _log_expm1(d)).to(self.low.dtype)

    def entropy(self) -> torch.Tensor:
        r""":math:`H[\theta] = \log(b - a) + (a + b)/2`."""
        return torch.log(self.high - self.low) + 0.5 * (self.low + self.high)


def _log_sinhc(z: torch.Tensor) -> torch.Tensor:
    # log(sinh z / z) = z + log(1 - e^{-2z}) - log(2z), for z >= 1/4 (no overflow for large z)
    return z + torch.log(-torch.expm1(-2.0 * z)) - torch.log(2.0 * z)


# ----------------------------------------------------------------------------------------------------------
# KL divergences (used by Pyro's TraceMeanField_ELBO)
# ----------------------------------------------------------------------------------------------------------


@register_kl(TruncatedNormal, torch.distributions.Uniform)
def _kl_truncated_normal_uniform(q: TruncatedNormal, p: torch.distributions.Uniform) -> torch.Tensor:
    r""":math:`\mathrm{KL}(q\,\|\,\mathcal U(a_p, b_p)) = \log(b_p - a_p) - H[q]` when :math:`[a_q, b_q]
    \subseteq [a_p, b_p]` (SBP's KL term when the bounds agree), ``inf`` otherwise."""
    inside = (q.low >= p.low) & (q.high <= p.high)
    # in the wide dtype: for a nearly uniform q the KL is a small difference of two O(log(b - a)) numbers
    h = q._entropy_wide()
    kl = (torch.log(p.high.to(h.dtype) - p.low.to(h.dtype)) - h).to(q.loc.dtype)
    return torch.where(inside, kl, torch.full_like(kl, math.inf))


@register_kl(TruncatedLogNormal, LogUniform)
def _kl_truncated_log_normal_log_uniform(q: TruncatedLogNormal, p: LogUniform) -> torch.Tensor:
    r"""KL is invariant under the common bijection :math:`\theta = e^x`: the KL of the log-space laws."""
    return _kl_truncated_normal_uniform(q.base_dist, p.base_dist)
