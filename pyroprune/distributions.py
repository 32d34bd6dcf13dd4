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
from torch.autograd.function import once_differentiable
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
    laplace_cf_far,
    log1mexp,
    log_ndtr_diff,
    log_ndtr_diff_scaled,
)

__all__ = [
    "LogUniform",
    "TruncatedLogNormal",
    "TruncatedNormal",
    "log_interval",
]

# Below this variance of x the variance of theta uses the cumulant series (see TruncatedLogNormal.variance).
_SMALL_SPREAD = 1e-8

# rsample keeps u >= this: the quantile's arguments then stay normal float64 numbers in every regime
_U_MIN = 1e-30


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


def _check_parameters(name: str, low, high, scale=None, validate_args: bool | None = None, loc=None) -> None:
    """Raise ``ValueError`` naming the offending parameter.

    Python numbers are always checked (for free); tensors only when validation is on, because the check
    synchronises with the device (once for ``scale > 0`` and ``loc`` not NaN together, once more only for
    tensor bounds). These are all the parameter checks the distributions make: they replace
    ``Distribution.__init__``'s own (one synchronisation per parameter).
    """
    if isinstance(loc, numbers.Real) and loc != loc:
        raise ValueError(f"{name}: 'loc' must not be NaN (got loc={loc})")
    if scale is not None:
        number = isinstance(scale, numbers.Real)
        if number and not scale > 0:
            raise ValueError(f"{name}: 'scale' must be > 0 (got scale={scale})")
        tensor_loc = isinstance(loc, torch.Tensor)
        if (tensor_loc or not number) and _validate_default(validate_args):
            scale_ok = torch.as_tensor(scale) > 0
            ok = scale_ok & (loc == loc) if tensor_loc else scale_ok
            if not bool(ok.all()):
                if not bool(scale_ok.all()):
                    (bad,) = _first_bad(scale_ok, scale)
                    raise ValueError(f"{name}: 'scale' must be > 0 (got scale={bad})")
                raise ValueError(f"{name}: 'loc' must not be NaN (got loc={loc})")
    if isinstance(low, numbers.Real) and isinstance(high, numbers.Real):
        if not low < high:
            raise ValueError(f"{name}: 'low' must be < 'high' (got low={low}, high={high})")
    elif _validate_default(validate_args):
        ok = torch.as_tensor(low) < torch.as_tensor(high)
        if not bool(ok.all()):
            bad_low, bad_high = _first_bad(ok, *torch.broadcast_tensors(torch.as_tensor(low), torch.as_tensor(high)))
            raise ValueError(f"{name}: 'low' must be < 'high' (got low={bad_low}, high={bad_high})")


_SCALARS: dict = {}


def _broadcast_params(*values) -> tuple[torch.Tensor, ...]:
    """``broadcast_all`` with a fast path for the common call -- tensors of one shape, dtype and device, and
    Python-number bounds -- whose numbers become cached 0-dim tensors, expanded."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if tensors and all(isinstance(v, torch.Tensor) or type(v) in (float, int) for v in values):
        first = tensors[0]
        shape, dtype, device = first.shape, first.dtype, first.device
        if dtype.is_floating_point and all(
            t.shape == shape and t.dtype == dtype and t.device == device for t in tensors
        ):
            out = []
            for v in values:
                if not isinstance(v, torch.Tensor):
                    key = (float(v), dtype, device)
                    c = _SCALARS.get(key)
                    if c is None:
                        if len(_SCALARS) > 256:
                            _SCALARS.clear()
                        with torch.inference_mode(False), torch.no_grad():
                            c = _SCALARS[key] = torch.tensor(float(v), dtype=dtype, device=device)
                    # (a 0-dim result is a copy: in-place changes must not reach the cache)
                    v = c.expand(shape) if shape else c.clone()
                out.append(v)
            return tuple(out)
    return broadcast_all(*values)


def _set_validation(d, validate_args: bool | None) -> None:
    """What ``Distribution.__init__(validate_args=...)`` records, for an instance initialised with
    ``validate_args=False`` (its parameters having been checked by :func:`_check_parameters`)."""
    if validate_args is None:
        d.__dict__.pop("_validate_args", None)
    else:
        d._validate_args = validate_args


def _check_value_shape(d, value) -> None:
    """``Distribution._validate_sample`` without its support check, which the log-densities make on their result
    instead (:func:`_check_support`: one pass less over the value)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError("The value argument to log_prob must be a Tensor")
    event_shape = d._event_shape
    if value.size()[len(value.size()) - len(event_shape) :] != event_shape:
        raise ValueError(f"The right-most size of value must match event_shape: {value.size()} vs {event_shape}.")
    expected = d._batch_shape + event_shape
    for i, j in zip(reversed(value.size()), reversed(expected), strict=False):
        if i != 1 and j != 1 and i != j:
            raise ValueError(f"Value is not broadcastable with batch_shape+event_shape: {value.size()} vs {expected}.")


def _check_support(d, value: torch.Tensor, log_prob: torch.Tensor) -> None:
    """The support check of ``Distribution._validate_sample``, on a log-density that is ``-inf`` exactly
    outside the support."""
    if not torch._is_all_true(log_prob > -math.inf):
        raise ValueError(
            "Expected value argument "
            f"({type(value).__name__} of shape {tuple(value.shape)}) "
            f"to be within the support ({repr(d.support)}) "
            f"of the distribution {repr(d)}, "
            f"but found invalid values:\n{value}"
        )


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
        p_s = torch.where(lo_fin, torch.exp(-0.5 * lo_s * lo_s - LOG_SQRT_2PI - lz_safe), torch.zeros_like(lz))
        q_s = torch.where(hi_fin, torch.exp(-0.5 * hi_s * hi_s - LOG_SQRT_2PI - lz_safe), torch.zeros_like(lz))
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
# the SVI hot path: quantile / rsample, log-density and entropy / KL as autograd Functions
# ----------------------------------------------------------------------------------------------------------
#
# Every SVI step evaluates, per gate site, rsample (forward and backward), the guide's log_prob and the KL.
# Built from small autograd ops these cost hundreds of kernel launches each. Here each is one
# torch.autograd.Function: the forward runs without a graph in the wide dtype (float64; float32 only on MPS,
# which has no float64 -- the values are then less accurate but finite), and the backward is a closed form
# of a few dozen elementwise ops. Regimes are merged with torch.where: no data-dependent Python branching, so
# nothing synchronises with the device. What depends only on (mu, sigma, a, b) is computed once per
# distribution object (_Terms) and shared by the three. On small tensors every operation costs the same
# couple of microseconds, so the formulas below are written for few operations.
#
# In the mirrored standardised coordinates [lo, hi] of _Standard (mass leaning towards hi, lo <= 0), with
# w = -z/sqrt2, everything rests on the scaled complementary error function: Phi(z) = erfcx(w) e^{-w^2}/2 and
# the inverse Mills ratio r(z) = phi(z)/Phi(z) = sqrt(2/pi)/erfcx(w) are accurate for every z <= H1 (an upper
# clamp, above which Phi(z) = 1 in the wide dtype), so that rho = Phi(lo)/Phi(hi) and log Z + min(hi, 0)^2/2
# follow without underflow. Two places need more:
#
# * the quantile itself: Phi^{-1} directly while Phi(hi) is a normal number ("textbook": hi >= -H0, H0 = 30 in
#   float64); further out ("deep") Newton's method for the offset t = hi - xi from the bound, so that the
#   spike keeps its relative precision;
# * differences of nearly equal numbers far out -- the one-sided mean and second moment of the distance to the
#   bound, g = r + z and s = 1 + z g -- come from Laplace's continued fraction in the deep regime (four levels:
#   K1 to 1e-12, K2 to 5e-10 relative for w > 21).

_INV_SQRT2 = 1.0 / SQRT_2
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_SQRT_PI_OVER_2 = math.sqrt(math.pi / 2.0)
_CF_DEPTH = 4
# Tensor.to(dtype) costs half again as much as these
_CASTS = {
    torch.float64: torch.Tensor.double,
    torch.float32: torch.Tensor.float,
    torch.float16: torch.Tensor.half,
    torch.bfloat16: torch.Tensor.bfloat16,
}


class _Consts:
    """0-dim tensors of one dtype and device: arithmetic with them skips the wrapping of a Python number,
    which costs as much as a small elementwise op itself on the CPU."""

    _cache: dict = {}

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        f64 = dtype == torch.float64
        with torch.inference_mode(False), torch.no_grad():

            def c(v: float) -> torch.Tensor:
                return torch.tensor(v, dtype=dtype, device=device)

            self.zero, self.one, self.neg_one, self.half, self.two = c(0.0), c(1.0), c(-1.0), c(0.5), c(2.0)
            self.neg_inv_sqrt2, self.sqrt2 = c(-_INV_SQRT2), c(SQRT_2)
            self.sqrt_2_over_pi = c(_SQRT_2_OVER_PI)
            self.log_sqrt_2pi, self.log_2 = c(LOG_SQRT_2PI), c(LOG_2)
            # -H0, where the deep regime of the quantile and of the continued fraction starts, and H1 (float32
            # only on MPS, where Phi underflows below -13 and erfcx overflows below -9)
            self.neg_deep = c(-30.0 if f64 else -9.0)
            self.h1 = c(35.0 if f64 else 9.0)
            # stands in for infinite standardised bounds: its square is finite, phi of it is 0
            big = 1e100 if f64 else 1e15
            self.big, self.neg_big = c(big), c(-big)
            self.neg_inf = c(-math.inf)
            self.cf = [c(0.5 * n) for n in range(_CF_DEPTH + 2)]

    @classmethod
    def of(cls, dtype: torch.dtype, device: torch.device) -> _Consts:
        key = (dtype, device)
        k = cls._cache.get(key)
        if k is None:
            k = cls._cache[key] = cls(dtype, device)
        return k


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.dtype == dtype:
        return t
    cast = _CASTS.get(dtype)
    return cast(t) if cast is not None else t.to(dtype)


def _meta(*tensors) -> tuple:
    return tuple((t.shape, t.dtype) for t in tensors)


def _reduce(grad: torch.Tensor, meta) -> torch.Tensor:
    shape, dtype = meta
    if grad.shape != shape:
        grad = grad.sum_to_size(shape)
    return _as(grad, dtype)


class _Terms:
    r"""What the quantile, log-density and entropy kernels share, for parameters of one batch shape, in the
    wide dtype (to be built without a graph, e.g. inside a Function's forward):

    * ``alpha``, ``beta`` (:math:`\alpha, \beta`, infinite ones replaced by a huge finite number so that
      :math:`\alpha\varphi(\alpha)` is 0, not NaN), their mirror image ``lo``, ``hi`` (``flip``), ``deep``
      (:math:`hi < -H_0`);
    * at :math:`lo` and :math:`h = \min(hi, H_1)`: ``w_*`` :math:`= -z/\sqrt2`, ``ex_*`` :math:`=
      \mathrm{erfcx}(w)` and ``r_*`` :math:`= \sqrt{2/\pi}/\mathrm{erfcx}(w)` (the inverse Mills ratios);
      :math:`\rho = \Phi(lo)/\Phi(hi)` from :math:`\log\rho = (h - lo)(lo + h)/2 + \log(\mathrm{erfcx}(w_{lo})
      /\mathrm{erfcx}(w_{hi}))`, ``one_m_rho`` :math:`= 1 - \rho`, and ``lhat`` :math:`= \log Z + \min(hi,
      0)^2/2 = \log(\mathrm{erfcx}(w_{hi})(1 - \rho)/2) - \max(h, 0)^2/2`;
    * on demand, :meth:`cf`: :math:`K_1, K_2` at :math:`w_{hi}` (:func:`~pyroprune.special.laplace_cf_far`;
      valid in the deep regime only).
    """

    def __init__(self, loc, scale, low, high) -> None:
        wide = _wide(loc)
        k = self.k = _Consts.of(wide, loc.device)
        loc, scale, low, high = (_as(t, wide) for t in (loc, scale, low, high))
        self.loc, self.scale, self.low, self.high = loc, scale, low, high
        alpha = self.alpha = torch.clamp((low - loc) / scale, k.neg_big, k.big)
        beta = self.beta = torch.clamp((high - loc) / scale, k.neg_big, k.big)
        flip = self.flip = (alpha + beta) > k.zero
        lo = self.lo = torch.where(flip, -beta, alpha)
        hi = self.hi = torch.where(flip, -alpha, beta)
        self.deep = hi < k.neg_deep
        h = torch.clamp(hi, max=k.h1)
        w_l = self.w_l = lo * k.neg_inv_sqrt2
        w_h = self.w_h = h * k.neg_inv_sqrt2
        ex_l = self.ex_l = torch.special.erfcx(w_l)
        ex_h = self.ex_h = torch.special.erfcx(w_h)
        self.r_l, self.r_h = k.sqrt_2_over_pi / ex_l, k.sqrt_2_over_pi / ex_h
        self.width = hi - lo
        log_rho = self.log_rho = torch.addcmul(torch.log(ex_l / ex_h), h - lo, lo + h, value=0.5)
        self.rho = torch.exp(log_rho)
        one_m_rho = self.one_m_rho = -torch.expm1(log_rho)
        hp = torch.clamp(h, min=k.zero)
        self.lhat = torch.addcmul(torch.log(ex_h * one_m_rho) - k.log_2, hp, hp, value=-0.5)
        self._cf = None

    def cf(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cf is None:
            self._cf = laplace_cf_far(self.w_h, _CF_DEPTH, self.k.cf)
        return self._cf


def _terms(d) -> _Terms:
    """The _Terms of a TruncatedNormal, cached on it (invalidated by in-place changes of its parameters). To be
    called without a graph."""
    params = (d.loc, d.scale, d.low, d.high)
    try:
        key = tuple(t._version for t in params)
    except RuntimeError:  # inference tensors have no version counter: no caching
        return _Terms(*params)
    cached = d.__dict__.get("_terms_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    terms = _Terms(*params)
    d.__dict__["_terms_cache"] = (key, terms)
    return terms


class _Quantile(torch.autograd.Function):
    r"""``x = F^{-1}(u)`` of :class:`TruncatedNormal`, with the implicit reparameterisation gradient.

    With ``mirrored=True`` (``rsample``) ``u`` is taken as the quantile :math:`u'` of the mirrored variable
    (:math:`u` and :math:`1 - u` are equally uniform), otherwise :math:`u' = 1 - u` where the bounds are
    mirrored. Forward:

    * textbook regime (:math:`hi \ge -H_0`): :math:`\xi = \Phi^{-1}(\Phi(lo) + u'Z)` or
      :math:`-\Phi^{-1}(\Phi(-hi) + (1-u')Z)`, whichever argument is smaller (so that :math:`1 - p` is never
      rounded), :math:`x = \mu \pm \sigma\xi`;
    * deep regime: :math:`t = hi - \xi` solves :math:`F(t) = \ell(hi) - \ell(hi - t) = y := -\log(u' + (1 -
      u')\rho)`, :math:`\rho = \Phi(lo)/\Phi(hi)`, with :math:`F(t) = t(t/2 - hi) + \log(\mathrm{erfcx}(w) /
      \mathrm{erfcx}(w + t/\sqrt2))`, :math:`w = -hi/\sqrt2`: Newton's method from the lower bound :math:`t_0
      = 2y/(r + \sqrt{r^2 + 2y})` (:math:`r = F'(0)`; :math:`F'' < 1`), then :math:`x = b - \sigma t` (or
      :math:`a + \sigma t`), which keeps the relative precision of the spike.

    Backward: :math:`dx/d\theta = -(\partial F/\partial\theta)/q(x)` for :math:`F(x) = u`. In the mirrored
    coordinates, with :math:`N = u'\varphi(hi)/\varphi(\xi)` and :math:`S = (1 - u')\varphi(lo)/\varphi(\xi)`:
    :math:`dx/d\mu = 1 - N - S`, :math:`dx/d\sigma = \pm(\xi - hi\,N - lo\,S)`, the near bound gets
    :math:`N` and the far one :math:`S`, and :math:`dx/du = \sigma Z/\varphi(\xi)`. In the deep regime, where
    :math:`1 - N` cancels, :math:`1 - N = 1 + [\rho e^{\tau} - \mathrm{erfcx}(w + t/\sqrt2)/\mathrm{erfcx}(w)]
    /(1 - \rho)` with :math:`\tau = t(t/2 - hi)` (from :math:`u'(1 - \rho) = e^{-y} - \rho` and :math:`e^{\tau -
    y} = r(hi)/r(\xi)`), and :math:`\xi - hi\,N = hi(1 - N) - t`.
    """

    @staticmethod
    def forward(ctx, u, loc, scale, low, high, d, steps, mirrored):
        terms = _terms(d)
        k = terms.k
        ctx.meta = _meta(u, loc, scale, low, high)
        ctx.terms = terms
        flip, lo, hi = terms.flip, terms.lo, terms.hi
        u = _as(u, lo.dtype)
        v = k.one - u
        # (log(1 - u) without log1p: where u is small it only enters through rho, or the density at lo)
        log_u, log_v = torch.log(u), torch.log(v)
        if mirrored:
            up, dn, l_up, l_dn = u, v, log_u, log_v
        else:
            up, dn = torch.where(flip, v, u), torch.where(flip, u, v)
            l_up, l_dn = torch.where(flip, log_v, log_u), torch.where(flip, log_u, log_v)

        # textbook: invert the thinner tail (erfc(w) = 2 Phi(z))
        e_l, e_h = torch.erfc(terms.w_l), torch.erfc(terms.w_h)
        z2 = e_h - e_l  # 2 Z
        pl = torch.addcmul(e_l, up, z2)
        pu = torch.addcmul(torch.erfc(-terms.w_h), dn, z2)
        z = torch.special.ndtri(torch.minimum(pl, pu) * k.half)
        xi = torch.clamp(torch.where(pl <= pu, z, -z), lo, hi)

        # deep: Newton in t = hi - xi
        width, w_h, ex_h = terms.width, terms.w_h, terms.ex_h
        y = -torch.logaddexp(l_up, l_dn + terms.log_rho)
        y2 = y + y
        r0 = terms.r_h  # F'(0), the inverse Mills ratio at hi
        t = torch.minimum(y2 / (r0 + torch.sqrt(torch.addcmul(y2, r0, r0))), width)
        neg_hi = -hi
        for _ in range(steps):
            # F - y = t (t/2 - hi) + log(erfcx(w) / erfcx(w_t)) - y;  F' = sqrt(2/pi) / erfcx(w_t)
            et = torch.special.erfcx(torch.add(w_h, t, alpha=_INV_SQRT2))
            f_y = torch.addcmul(torch.log(ex_h / et) - y, t, torch.add(neg_hi, t, alpha=0.5))
            t = torch.clamp(torch.addcmul(t, f_y, et, value=-_SQRT_PI_OVER_2), k.zero, width)

        deep = terms.deep
        sgn = torch.where(flip, k.neg_one, k.one)
        sgn_scale = sgn * terms.scale
        x = torch.where(
            deep,
            torch.addcmul(torch.where(flip, terms.low, terms.high), sgn_scale, t, value=-1),
            torch.addcmul(terms.loc, sgn_scale, xi),
        )
        x = torch.clamp(x, terms.low, terms.high)
        ctx.save_for_backward(l_up, l_dn, sgn, torch.where(deep, hi - t, xi), t, y, z2)
        return _as(x, loc.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        l_up, l_dn, sgn, xi, t, y, z2 = ctx.saved_tensors
        terms = ctx.terms
        k, lo, hi, deep = terms.k, terms.lo, terms.hi, terms.deep
        g = _as(grad, lo.dtype)
        s_far = torch.exp(torch.addcmul(l_dn, lo - xi, lo + xi, value=-0.5))
        n_txt = torch.exp(torch.addcmul(l_up, hi - xi, hi + xi, value=-0.5))
        et = torch.special.erfcx(torch.add(terms.w_h, t, alpha=_INV_SQRT2))
        rho_tau = torch.exp(torch.addcmul(terms.log_rho, t, torch.sub(t * k.half, hi)))
        one_m_n_deep = (rho_tau - et / terms.ex_h).div_(terms.one_m_rho).add_(k.one)
        one_m_n = torch.where(deep, one_m_n_deep, k.one - n_txt)
        g_sig = torch.where(deep, torch.addcmul(-t, hi, one_m_n_deep), torch.addcmul(xi, hi, n_txt, value=-1))
        meta = ctx.meta
        out = [None, _reduce(g * (one_m_n - s_far), meta[1]), None, None, None, None, None, None]
        out[2] = _reduce(g * sgn * torch.addcmul(g_sig, lo, s_far, value=-1), meta[2])
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            near, flip = k.one - one_m_n, terms.flip
            out[3] = _reduce(g * torch.where(flip, near, s_far), meta[3])
            out[4] = _reduce(g * torch.where(flip, s_far, near), meta[4])
        if ctx.needs_input_grad[0]:
            du_txt = torch.exp(torch.log(z2 * k.half) + LOG_SQRT_2PI + 0.5 * xi * xi)
            du_deep = terms.one_m_rho * torch.exp(y) * et * _SQRT_PI_OVER_2
            out[0] = _reduce(g * terms.scale * torch.where(deep, du_deep, du_txt), meta[0])
        return tuple(out)


def _quantile_steps(dtype: torch.dtype) -> int:
    # Newton steps in the deep regime after the quadratic lower bound t0, whose relative error there is
    # O(y^2 / hi^4) < 2e-6 y^2: one step reaches float32, two float64 (checked in the tests)
    return 2 if dtype == torch.float64 else 1


class _LogProb(torch.autograd.Function):
    r""":math:`\log q(x)` of :class:`TruncatedNormal` (``theta=False``) or of :class:`TruncatedLogNormal` at
    :math:`\theta = e^x` (``theta=True``: :math:`\log q_x(\log\theta) - \log\theta`), ``-inf`` outside the
    support.

    :math:`\log q = -(x - x^*)(x + x^* - 2\mu)/(2\sigma^2) - \log\sigma - \log\sqrt{2\pi} - \hat L` (see
    :meth:`TruncatedNormal.log_prob`), :math:`\hat L = \log Z + c^2/2`, :math:`c = (x^* - \mu)/\sigma`. The
    partials of :math:`\hat L` in mirrored coordinates (:math:`c = \min(hi, 0)`) are :math:`\hat G_{lo} =
    -\varphi(lo)/Z = -\rho\,r_{lo}/(1 - \rho)` and :math:`\hat G_{hi} = \varphi(hi)/Z + c = r_{hi}/(1 - \rho)
    + c`, in the deep regime, where that cancels, :math:`(g_{hi} - \rho\,hi)/(1 - \rho)` with :math:`g =
    r + hi = \sqrt2 K_1`; with :math:`\hat G_\alpha, \hat G_\beta` the same un-mirrored:

    .. math::

        \partial_x = -\frac{x - \mu}{\sigma^2},\quad
        \partial_\mu = \frac{(x - x^*)/\sigma + \hat G_\alpha + \hat G_\beta}{\sigma},\quad
        \partial_\sigma = \frac{\xi^2 - c^2 - 1 + \alpha\hat G_\alpha + \beta\hat G_\beta}{\sigma},\quad
        \partial_a = \frac{\max(\alpha, 0) - \hat G_\alpha}{\sigma},\quad
        \partial_b = \frac{\min(\beta, 0) - \hat G_\beta}{\sigma},

    with :math:`\xi^2 - c^2 = (x - x^*)(x + x^* - 2\mu)/\sigma^2`: no term of size :math:`\beta^2` is formed.
    """

    @staticmethod
    def forward(ctx, value, loc, scale, low, high, d, theta):
        terms = _terms(d)
        k = terms.k
        ctx.meta = _meta(value, loc, scale, low, high)
        ctx.theta, ctx.terms = theta, terms
        if theta:
            # the support check in theta (as ``support.check``), then log(theta) clamped into [a, b]: exp and
            # log do not round-trip exactly, and a draw on the boundary must not fall out of the support
            inside = (value >= torch.exp(low)) & (value <= torch.exp(high))
            x = torch.log(_as(value, terms.lo.dtype))
        else:
            inside = (value >= low) & (value <= high)
            x = _as(value, terms.lo.dtype)
        t_loc, t_scale, t_low, t_high = terms.loc, terms.scale, terms.low, terms.high
        x_star = torch.clamp(t_loc, t_low, t_high)
        x = torch.where(inside, torch.clamp(x, t_low, t_high), x_star)
        dx = x - x_star
        sq = dx * torch.add(x + x_star, t_loc, alpha=-2.0) / (t_scale * t_scale)  # xi^2 - c^2
        lp = torch.add(terms.lhat + torch.log(t_scale), sq, alpha=0.5)
        if theta:
            lp = lp + x
        lp = torch.where(inside, -lp - LOG_SQRT_2PI, k.neg_inf)
        ctx.save_for_backward(x, dx, sq, inside)
        return _as(lp, loc.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, dx, sq, inside = ctx.saved_tensors
        terms = ctx.terms
        k, hi, flip, scale = terms.k, terms.hi, terms.flip, terms.scale
        # partials of L-hat, mirrored then un-mirrored (K1 only where deep: three levels of the fraction give it
        # to 2e-10 relative there, unless the entropy has computed the full one)
        omr, rho = terms.one_m_rho, terms.rho
        k1_h = terms._cf[0] if terms._cf is not None else laplace_cf_far(terms.w_h, 3, k.cf)[0]
        g_hi = torch.where(
            terms.deep,
            torch.addcmul(k.sqrt2 * k1_h, rho, hi, value=-1),
            torch.addcmul(terms.r_h, omr, torch.clamp(hi, max=k.zero)),
        ).div_(omr)
        g_lo = (rho * terms.r_l).div_(omr).neg_()
        g_a = torch.where(flip, -g_hi, g_lo)
        g_b = torch.where(flip, -g_lo, g_hi)
        g = torch.where(inside, _as(grad, scale.dtype), k.zero) / scale
        meta = ctx.meta
        out = [None] * 7
        if ctx.needs_input_grad[0]:
            d_x = (terms.loc - x) / scale
            if ctx.theta:
                d_x = (d_x - scale) * torch.exp(-x)
            out[0] = _reduce(g * d_x, meta[0])
        out[1] = _reduce(g * (dx / scale + g_a + g_b), meta[1])
        out[2] = _reduce(g * (sq - k.one + terms.alpha * g_a + terms.beta * g_b), meta[2])
        if ctx.needs_input_grad[3]:
            out[3] = _reduce(g * (torch.clamp(terms.alpha, min=k.zero) - g_a), meta[3])
        if ctx.needs_input_grad[4]:
            out[4] = _reduce(g * (torch.clamp(terms.beta, max=k.zero) - g_b), meta[4])
        return tuple(out)


class _Entropy(torch.autograd.Function):
    r"""Differential entropy :math:`H[x]` of :class:`TruncatedNormal`, or ``offset - H[x]`` (the KL against a
    uniform law of log-width ``offset``, given in the wide dtype), evaluated and differentiated in the wide
    dtype.

    :math:`H = \log\sigma + \log\sqrt{2\pi} + \log Z + \tfrac12 M_2`, :math:`M_2 = E[\xi^2]`, in mirrored
    coordinates, with :math:`P = \varphi(lo)/Z = \rho r_{lo}/(1-\rho)`, :math:`Q = \varphi(hi)/Z =
    r_{hi}/(1-\rho)` and :math:`A = hi^2 + 2 - M_2`:

    * :math:`hi \ge 0`: :math:`M_2 = 1 + lo\,P - hi\,Q` and :math:`\log Z = \hat L`;
    * :math:`hi < 0`: :math:`\log Z + \tfrac12 M_2 = \hat L + 1 - \tfrac12 A` with :math:`A = [s_{hi} -
      \rho(s_{lo} + hi^2 - lo^2)]/(1 - \rho)`, where :math:`s = 1 + z(r + z)` is the one-sided
      :math:`E[(z - \xi)^2 \mid \xi \le z]` at each bound (the law on :math:`[lo, hi]` is the one-sided law
      at :math:`hi` with the one-sided law at :math:`lo` removed); in the deep regime :math:`s_{hi} = 2K_1K_2`
      from the continued fraction, so that nothing of size :math:`hi^2` is cancelled.

    Gradients: :math:`\partial H/\partial hi = \tfrac12 Q A`, :math:`\partial H/\partial lo = -\tfrac12 P (A
    - hi^2 + lo^2)`; then :math:`\partial H/\partial\mu = -(\partial_\alpha H + \partial_\beta H)/\sigma`,
    :math:`\partial H/\partial\sigma = (1 - \alpha\partial_\alpha H - \beta\partial_\beta H)/\sigma`,
    :math:`\partial H/\partial a = \partial_\alpha H/\sigma`, :math:`\partial H/\partial b = \partial_\beta
    H/\sigma`.
    """

    @staticmethod
    def forward(ctx, loc, scale, low, high, p_low, p_high, d):
        terms = _terms(d)
        k = terms.k
        ctx.meta = _meta(loc, scale, low, high)
        ctx.terms = terms
        lo, hi, rho, omr = terms.lo, terms.hi, terms.rho, terms.one_m_rho
        p = rho * terms.r_l / omr
        q = terms.r_h / omr
        # hi >= 0
        m2 = torch.addcmul(k.one, lo, p).sub_(hi * q)
        a_bulk = torch.addcmul(k.two - m2, hi, hi)
        # hi < 0: one-sided second moments at both bounds (at lo the direct form: it only enters with rho)
        k1, k2 = terms.cf()
        s_h = torch.where(terms.deep, k.two * k1 * k2, torch.addcmul(k.one, hi, terms.r_h + hi))
        s_l = torch.addcmul(k.one, lo, terms.r_l + lo)
        d2 = terms.width * (lo + hi)  # hi^2 - lo^2
        tail = hi < k.zero
        a = torch.where(tail, torch.addcmul(s_h, rho, s_l + d2, value=-1).div_(omr), a_bulk)
        h = torch.where(tail, torch.addcmul(k.one, a, k.half, value=-1), m2 * k.half)
        h = h.add_(terms.lhat).add_(torch.log(terms.scale)).add_(k.log_sqrt_2pi)
        ctx.kl = p_low is not None
        if ctx.kl:
            # KL = log(b_p - a_p) - H if [a, b] lies within [a_p, b_p], +inf otherwise
            ctx.p_meta = _meta(p_low, p_high)
            width_p = _as(p_high, h.dtype) - _as(p_low, h.dtype)
            inside = (low >= p_low) & (high <= p_high)
            h = torch.where(inside, torch.log(width_p) - h, math.inf)
            ctx.save_for_backward(p, q, a, d2, inside, width_p)
        else:
            ctx.save_for_backward(p, q, a, d2)
        return _as(h, loc.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        p, q, a, d2 = ctx.saved_tensors[:4]
        terms = ctx.terms
        k, flip = terms.k, terms.flip
        # 2 dH/dlo and 2 dH/dhi
        d_lo = (p * (a - d2)).neg_()
        d_hi = q * a
        d_a = torch.where(flip, -d_hi, d_lo)
        d_b = torch.where(flip, -d_lo, d_hi)
        g = _as(grad, p.dtype)
        out = [None] * 7
        if ctx.kl:
            inside, width_p = ctx.saved_tensors[4:]
            g = torch.where(inside, g, k.zero)
            if ctx.needs_input_grad[4] or ctx.needs_input_grad[5]:
                g_w = g / width_p
                out[4], out[5] = _reduce(-g_w, ctx.p_meta[0]), _reduce(g_w, ctx.p_meta[1])
            g = -g
        gs = g / terms.scale
        half_gs = gs * k.half
        meta = ctx.meta
        out[0] = _reduce(half_gs * (d_a + d_b).neg_(), meta[0])
        out[1] = _reduce(gs - half_gs * torch.addcmul(terms.alpha * d_a, terms.beta, d_b), meta[1])
        if ctx.needs_input_grad[2]:
            out[2] = _reduce(half_gs * d_a, meta[2])
        if ctx.needs_input_grad[3]:
            out[3] = _reduce(half_gs * d_b, meta[3])
        return tuple(out)


# ----------------------------------------------------------------------------------------------------------
# TruncatedNormal
# ----------------------------------------------------------------------------------------------------------


class TruncatedNormal(dist.TorchDistribution):
    r""":math:`\mathcal N(\mu, \sigma^2)` truncated to :math:`[a, b]` -- here the law of :math:`x =
    \log\theta` of an SBP / BMRS gate (Neklyudov et al. 2017; Wright et al. 2024).

    .. math::

        q(x) = \frac{\varphi((x - \mu)/\sigma)}{\sigma Z},\qquad a \le x \le b,\qquad
        Z = \Phi(\beta) - \Phi(\alpha).

    Reparameterised sampling by the inverse CDF (gradients flow to ``loc``, ``scale`` and the bounds: the
    implicit reparameterisation gradient, in closed form). Stable far outside the bulk (see the module
    docstring): e.g. ``loc=5, scale=1e-4`` on ``[-20, 0]`` is an exponential spike of width :math:`\sigma^2/(\mu
    - b) = 2\cdot 10^{-9}` against :math:`b`, and every method returns finite, accurate values and gradients
    there. ``rsample``, ``log_prob`` and ``entropy`` (and the KL) are single autograd Functions with
    hand-written first-order backward passes (no double backward), sharing what depends on the parameters
    alone; see "the SVI hot path" in the source and ``docs/distributions.md``.

    :param loc: :math:`\mu`.
    :param scale: :math:`\sigma > 0`.
    :param low: :math:`a` (may be ``-inf``).
    :param high: :math:`b > a` (may be ``+inf``).
    :raises ValueError: if ``low >= high``, ``scale <= 0`` or ``loc`` is NaN (Python numbers always; tensors
        when validation is on).
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "low": constraints.real,
        "high": constraints.real,
    }
    has_rsample = True

    def __init__(self, loc, scale, low, high, validate_args: bool | None = None) -> None:
        _check_parameters(type(self).__name__, low, high, scale, validate_args, loc)
        self._init_checked(loc, scale, low, high, validate_args)

    def _init_checked(self, loc, scale, low, high, validate_args) -> None:
        # parameters already checked: no second round of (synchronising) constraint checks
        self.loc, self.scale, self.low, self.high = _broadcast_params(loc, scale, low, high)
        super().__init__(self.loc.shape, validate_args=False)
        _set_validation(self, validate_args)

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
            _check_value_shape(self, value)
            lp = self._log_prob(value)
            _check_support(self, value, lp)
            return lp
        return self._log_prob(value)

    def _log_prob(self, value: torch.Tensor) -> torch.Tensor:
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        return _LogProb.apply(value, self.loc, self.scale, self.low, self.high, self, False)

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
        r"""Quantile function, in log space so that neither tail underflows (:class:`_Quantile`).

        * Mass piled far against a bound (say :math:`b`, :math:`\beta < -30`): with :math:`t = (b - x)/\sigma`,
          :math:`\rho = \Phi(\alpha)/\Phi(\beta)`, the quantile :math:`u` solves :math:`F(t) := \ell(\beta) -
          \ell(\beta - t) = -\log(u + (1-u)\rho)`, :math:`\ell = \log\Phi`, where :math:`F(t) = t^2/2 - \beta t +
          \log\mathrm{erfcx}(w) - \log\mathrm{erfcx}(w + t/\sqrt2)`, :math:`w = -\beta/\sqrt2`, is convex and
          increasing. Newton's method from the lower bound :math:`t_0 = 2y/(r + \sqrt{r^2 + 2y})` (:math:`r =
          F'(0)`, the inverse Mills ratio) converges in one (float32) or two (float64) steps, and :math:`x = b -
          \sigma t` keeps full relative precision in the spike (a solution for :math:`\xi` itself would lose
          it all: :math:`x = \mu + \sigma\xi` with :math:`\mu + \sigma\xi \approx b` cancels).
        * Otherwise :math:`\xi = \Phi^{-1}(\Phi(\alpha) + uZ)`, or :math:`-\Phi^{-1}(\Phi(-\beta) + (1-u)Z)`
          when that argument is the smaller, evaluated in float64.

        Differentiable in ``value``, ``loc``, ``scale``, ``low`` and ``high``: the backward is the implicit
        derivative :math:`dx/d\theta = -(\partial F/\partial\theta)/q(x)` in closed form.
        """
        loc = self.loc
        u = torch.as_tensor(value, dtype=loc.dtype, device=loc.device)
        return _Quantile.apply(u, loc, self.scale, self.low, self.high, self, _quantile_steps(loc.dtype), False)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        loc = self.loc
        u = torch.rand(shape, dtype=loc.dtype, device=loc.device)
        # keep u strictly inside (0, 1): the quantile function is then finite with finite gradients
        u = u.clamp(min=_U_MIN, max=1.0 - torch.finfo(loc.dtype).eps)
        # u is used as the quantile of the mirrored law (see _Quantile): the same distribution, fewer operations
        return _Quantile.apply(u, loc, self.scale, self.low, self.high, self, _quantile_steps(loc.dtype), True)

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
        \beta\varphi(\beta)}{2Z}`, evaluated in float64, with the :math:`\pm\beta^2/2` parts cancelled
        analytically in the spike regime (:class:`_Entropy`)."""
        return _Entropy.apply(self.loc, self.scale, self.low, self.high, None, None, self)


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


class _ExpOfBounded:
    r"""Shared by the distributions over :math:`\theta = e^x` whose base lives on :math:`[a, b]`: the bounds
    (in log space) come from the base, and the support is the log-space interval whose registered bijection
    makes AutoGuides work over :math:`\log\theta`."""

    @property
    def low(self) -> torch.Tensor:
        return self.base_dist.low

    @property
    def high(self) -> torch.Tensor:
        return self.base_dist.high

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return log_interval(self.low, self.high)


class TruncatedLogNormal(_ExpOfBounded, dist.TransformedDistribution):
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
        _check_parameters(type(self).__name__, low, high, scale, validate_args, loc)
        base = TruncatedNormal.__new__(TruncatedNormal)
        base._init_checked(loc, scale, low, high, validate_args)
        # what TransformedDistribution.__init__ does for one ExpTransform, without re-checking the parameters
        self.base_dist = base
        self.transforms = [ExpTransform()]
        torch.distributions.Distribution.__init__(self, base.batch_shape, torch.Size(), validate_args=False)
        _set_validation(self, validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedLogNormal, _instance)
        return super().expand(batch_shape, _instance=new)

    @property
    def loc(self) -> torch.Tensor:
        return self.base_dist.loc

    @property
    def scale(self) -> torch.Tensor:
        return self.base_dist.scale

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log q(\theta) = \log q_x(\log\theta) - \log\theta`."""
        validate = self._validate_args
        if validate:
            _check_value_shape(self, value)
        loc = self.loc
        value = torch.as_tensor(value, dtype=loc.dtype, device=loc.device)
        lp = _LogProb.apply(value, loc, self.scale, self.low, self.high, self.base_dist, True)
        if validate:
            _check_support(self, value, lp)
        return lp

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


class LogUniform(_ExpOfBounded, dist.TransformedDistribution):
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

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`-\log(b - a) - \log\theta` on the support, ``-inf`` outside."""
        validate = self._validate_args
        if validate:
            _check_value_shape(self, value)
        low, high = self.low, self.high
        # the support check in theta (as ``support.check``), then log(theta) clamped into [a, b]
        inside = (value >= torch.exp(low)) & (value <= torch.exp(high))
        x = torch.clamp(torch.log(value), low, high)
        lp = torch.where(inside, -x - torch.log(high - low), -math.inf)
        if validate:
            _check_support(self, value, lp)
        return lp

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
            + w2 * (-7.0 / 1440.0 + w2 * (31.0 / 90720.0 + w2 * (-127.0 / 4838400.0 + w2 * 511.0 / 239500800.0)))
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
    # in the wide dtype (_Entropy): for a nearly uniform q the KL is a small difference of two O(log(b - a))
    # numbers
    return _Entropy.apply(q.loc, q.scale, q.low, q.high, p.low, p.high, q)


@register_kl(TruncatedLogNormal, LogUniform)
def _kl_truncated_log_normal_log_uniform(q: TruncatedLogNormal, p: LogUniform) -> torch.Tensor:
    r"""KL is invariant under the common bijection :math:`\theta = e^x`: the KL of the log-space laws."""
    return _kl_truncated_normal_uniform(q.base_dist, p.base_dist)


# ----------------------------------------------------------------------------------------------------------
# RBP: the Dirac-like prior over a real-valued gate (Zhou et al. 2018/2019, "Recursive Bayesian Pruning")
# ----------------------------------------------------------------------------------------------------------


def _check_eps(eps, name: str = "eps") -> None:
    """One-line ``ValueError`` naming ``name`` unless every value is finite and > 0 (Python numbers always
    checked; tensors checked too -- a host sync, paid only when the distribution is built)."""
    values = torch.as_tensor(eps, dtype=torch.float64) if not isinstance(eps, torch.Tensor) else eps.detach()
    if values.numel() and not bool((torch.isfinite(values) & (values > 0)).all()):
        bad = values[~(torch.isfinite(values) & (values > 0))].reshape(-1)[0].item()
        raise ValueError(f"'{name}' must be finite and > 0 (the width of the spike at 0), got {bad!r}")


class DiracLike(dist.Normal):
    r"""The Dirac-like prior of RBP over a real-valued gate :math:`\theta`: a spike at 0 of width
    :math:`\varepsilon`,

    .. math::

        p_\varepsilon(\theta) = \mathcal N(\theta \mid 0, \varepsilon^2)
            = \frac{1}{\sqrt{2\pi}\,\varepsilon} e^{-\theta^2/(2\varepsilon^2)}
            \;\xrightarrow[\varepsilon \to 0]{}\; \delta_0(\theta).

    Sampling is :math:`\theta = \varepsilon\,\xi`, :math:`\xi \sim \mathcal N(0, 1)` (reparameterised): mean 0,
    variance :math:`\varepsilon^2`. Under a Gaussian noise posterior :math:`q(\theta) = \mathcal N(\mu,
    \sigma^2)` the ELBO term it induces is, in closed form (registered for ``TraceMeanField_ELBO``),

    .. math::

        E_q[\log p_\varepsilon(\theta)] = -\log(\sqrt{2\pi}\,\varepsilon) - \frac{\mu^2 + \sigma^2}{2\varepsilon^2},
        \qquad
        \mathrm{KL}(q \,\|\, p_\varepsilon) = \log\frac{\varepsilon}{\sigma}
            + \frac{\mu^2 + \sigma^2}{2\varepsilon^2} - \frac12

    (:func:`dirac_like_expected_log_prob`, :func:`kl_normal_dirac_like`). :math:`\varepsilon` is the only
    parameter (``eps``, finite and > 0); its schedule during fitting is
    :func:`pyroprune.methods.rbp.eps_schedule` (``docs/methods/rbp.md``).

    It is a ``pyro.distributions.Normal`` with ``loc = 0`` and ``scale = eps`` (so every Normal method applies)
    whose only constructor argument is ``eps`` -- the form :class:`~pyroprune.gates.GatedNet` rebuilds when it
    moves a prior to the network's device and dtype.
    """

    arg_constraints = {"eps": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, eps, validate_args: bool | None = None) -> None:
        _check_eps(eps)
        (eps,) = broadcast_all(eps)
        super().__init__(torch.zeros_like(eps), eps, validate_args=validate_args)

    @property
    def eps(self) -> torch.Tensor:
        """The width :math:`\\varepsilon` of the spike (= ``scale``)."""
        return self.scale

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiracLike, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        dist.Normal.__init__(new, new.loc, new.scale, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def __repr__(self) -> str:
        eps = self.scale
        return f"DiracLike(eps: {eps.item():g})" if eps.numel() == 1 else f"DiracLike(eps: {eps})"


def dirac_like_expected_log_prob(loc, scale, eps) -> torch.Tensor:
    r""":math:`E_{\mathcal N(\mu,\sigma^2)}[\log p_\varepsilon(\theta)] = -\log(\sqrt{2\pi}\varepsilon) -
    (\mu^2 + \sigma^2)/(2\varepsilon^2)` (the ELBO's prior term)."""
    loc, scale, eps = broadcast_all(loc, scale, eps)
    return -LOG_SQRT_2PI - torch.log(eps) - 0.5 * ((loc / eps) ** 2 + (scale / eps) ** 2)


def kl_normal_dirac_like(loc, scale, eps) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu, \sigma^2) \,\|\, p_\varepsilon) = \log(\varepsilon/\sigma) + (\mu^2 +
    \sigma^2)/(2\varepsilon^2) - \tfrac12`, with the ratios formed before squaring (finite for :math:`\varepsilon`
    and :math:`\sigma` from :math:`10^{-30}` to :math:`10^{30}` in float32 as long as the result is)."""
    loc, scale, eps = broadcast_all(loc, scale, eps)
    return torch.log(eps) - torch.log(scale) + 0.5 * ((loc / eps) ** 2 + (scale / eps) ** 2) - 0.5


@register_kl(torch.distributions.Normal, DiracLike)
def _kl_normal_dirac_like(q: torch.distributions.Normal, p: DiracLike) -> torch.Tensor:
    return kl_normal_dirac_like(q.loc, q.scale, p.scale)


__all__ += ["DiracLike", "dirac_like_expected_log_prob", "kl_normal_dirac_like"]
