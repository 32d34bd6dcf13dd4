r"""Log-space helpers for the standard normal distribution.

Everything here works elementwise on tensors, broadcasts, follows the dtype and device of its inputs, and is
safe to differentiate: where a formula is split into regimes with :func:`torch.where`, every branch is
evaluated on *safe* inputs (the "double where" trick), so an unused branch can never inject ``inf``/``NaN``
into a gradient.

The truncated (log-)normal of :mod:`pyroprune.distributions` needs these quantities far into the tails: with
:math:`\mu = 5,\ \sigma = 10^{-4}` and the bounds :math:`[-20, 0]` the standardised bounds are :math:`\alpha =
-2.5\cdot 10^5,\ \beta = -5\cdot 10^4`, where :math:`\Phi` underflows in any precision and even
:func:`torch.special.log_ndtr` has a useless gradient. The tool that makes this work is Laplace's continued
fraction for the complementary error function,

.. math::

    \sqrt{\pi}\, \mathrm{erfcx}(w) = \frac{1}{w + K_1(w)}, \qquad
    K_n(w) = \cfrac{n/2}{w + K_{n+1}(w)},

whose tails :math:`K_1, K_2, K_3` give the inverse Mills ratio and the first cumulants of a one-sided
truncated normal without the catastrophic cancellation of the textbook formulas (see :func:`laplace_cf`).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "laplace_cf",
    "laplace_cf_far",
    "log1mexp",
    "log_erfcx",
    "log_ndtr",
    "log_ndtr_diff",
    "log_ndtr_diff_scaled",
    "ndtri_exp",
]

LOG_2 = math.log(2.0)
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
SQRT_2 = math.sqrt(2.0)
SQRT_PI = math.sqrt(math.pi)
LOG_SQRT_PI = 0.5 * math.log(math.pi)

# Laplace's continued fraction is evaluated with a fixed depth for w >= _CF_W0: 20 levels reach double
# precision there and 8 levels single precision (checked against mpmath). Below, K_1 comes from erfcx itself
# and K_2, K_3 by back-substitution, which loses about 2 w^2 (K_1), 2 w^4 (K_2) and 2 w^6 (K_3) ulps: harmless
# for w < 5 in float64, and in float32 only K_1 is ever used.
_CF_W0 = 5.0


def _cf_depth(dtype: torch.dtype) -> int:
    return 20 if dtype == torch.float64 else 8


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(1 - e^{x})` for :math:`x \le 0`, accurate for every :math:`x`.

    Uses :math:`\log(-\mathrm{expm1}(x))` near 0 and :math:`\mathrm{log1p}(-e^x)` further out (Mächler 2012,
    "Accurately computing log(1 - exp(-|a|))"). ``log1mexp(0) = -inf``, ``log1mexp(-inf) = 0``.
    """
    x = torch.as_tensor(x)
    near = x > -LOG_2
    # Each branch only sees arguments where it is finite and accurate (double where).
    x_near = torch.where(near, x, torch.full_like(x, -LOG_2))
    x_far = torch.where(near, torch.full_like(x, -1.0), x)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def laplace_cf(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The tails :math:`K_1, K_2, K_3` of Laplace's continued fraction for :math:`\mathrm{erfc}`, for
    :math:`w \ge 0`:

    .. math::

        \sqrt{\pi}\,\mathrm{erfcx}(w) = \frac{1}{w + K_1},\quad K_1 = \frac{1/2}{w + K_2},\quad
        K_2 = \frac{1}{w + K_3},\quad K_3 = \frac{3/2}{w + K_4},\ \dots

    With :math:`z = -\sqrt2\, w \le 0` and :math:`\xi \sim \mathcal N(0,1)` conditioned on :math:`\xi \le z`,
    these give, free of cancellation even for :math:`z \to -\infty`:

    * inverse Mills ratio :math:`r = \varphi(z)/\Phi(z) = \sqrt2\,(w + K_1)`,
    * mean distance to the bound :math:`E[z - \xi] = z + r = \sqrt2\, K_1`,
    * variance :math:`\mathrm{Var}[\xi] = 1 - r(z + r) = 2K_1(K_2 - K_1)`,
    * third cumulant :math:`\kappa_3[\xi] = 4 r K_1^2 K_2 (K_2 - K_3)`.

    (The identities follow from :math:`K_n (w + K_{n+1}) = n/2`; the naive forms subtract numbers of size
    :math:`|z|` to get results of size :math:`1/|z|`.)

    :param w: non-negative tensor (``inf`` allowed).
    :returns: ``(K1, K2, K3)``, each shaped like ``w``.
    """
    w = torch.as_tensor(w)
    big = w >= _CF_W0
    # Continued fraction, bottom-up with a fixed depth, on w clamped into its valid range.
    wc = torch.where(big, w, torch.full_like(w, _CF_W0))
    k = torch.zeros_like(wc)
    k1_cf = k2_cf = k3_cf = k
    for n in range(_cf_depth(w.dtype), 0, -1):
        k = (0.5 * n) / (wc + k)
        if n == 3:
            k3_cf = k
        elif n == 2:
            k2_cf = k
        elif n == 1:
            k1_cf = k
    # Small w: K1 from erfcx, then back-substitute through K_n (w + K_{n+1}) = n / 2.
    ws = torch.where(big, torch.zeros_like(w), w)
    k1_s = torch.reciprocal(SQRT_PI * torch.special.erfcx(ws)) - ws
    k2_s = 0.5 / k1_s - ws
    k3_s = 1.0 / k2_s - ws
    return torch.where(big, k1_cf, k1_s), torch.where(big, k2_cf, k2_s), torch.where(big, k3_cf, k3_s)


def log_erfcx(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \mathrm{erfcx}(x) = x^2 + \log\mathrm{erfc}(x)` with accurate value *and* gradient.

    For :math:`x \ge 5` it is :math:`-\log(\sqrt\pi\,(x + K_1(x)))` (see :func:`laplace_cf`): the derivative
    :math:`-2K_1` then comes out directly, whereas autograd through :func:`torch.special.erfcx` computes
    :math:`2x\,\mathrm{erfcx}(x) - 2/\sqrt\pi`, which cancels catastrophically for large :math:`x`. For
    :math:`x < -5` it is :math:`x^2 + \log(2 - \mathrm{erfc}(-x))` (no overflow).
    """
    x = torch.as_tensor(x)
    big = x >= _CF_W0
    neg = x < -5.0
    mid = ~(big | neg)
    xb = torch.where(big, x, torch.full_like(x, _CF_W0))
    k1, _, _ = laplace_cf(xb)
    val_big = -LOG_SQRT_PI - torch.log(xb + k1)
    xm = torch.where(mid, x, torch.zeros_like(x))
    val_mid = torch.log(torch.special.erfcx(xm))
    xn = torch.where(neg, x, torch.full_like(x, -5.0))
    val_neg = xn * xn + torch.log(2.0 - torch.special.erfc(-xn))
    return torch.where(big, val_big, torch.where(neg, val_neg, val_mid))


def log_ndtr(z: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\Phi(z)` with a gradient that stays exact in the far lower tail.

    For :math:`z < 0`: :math:`\log\Phi(z) = -z^2/2 - \log 2 + \log\mathrm{erfcx}(-z/\sqrt2)`, whose derivative
    is the inverse Mills ratio :math:`\sqrt2(w + K_1)`. (The backward of :func:`torch.special.log_ndtr` is
    :math:`\exp(-(\log\Phi(z) + z^2/2))/\sqrt{2\pi}`, which for :math:`z = -10^5` in float32 adds two numbers
    of size :math:`5\cdot10^9` and returns garbage.) For :math:`z \ge 0` it is :func:`torch.special.log_ndtr`.
    """
    z = torch.as_tensor(z)
    neg = z < 0
    zn = torch.where(neg, z, torch.full_like(z, -1.0))
    val_neg = -0.5 * zn * zn - LOG_2 + log_erfcx(-zn / SQRT_2)
    zp = torch.where(neg, torch.zeros_like(z), z)
    return torch.where(neg, val_neg, torch.special.log_ndtr(zp))


def log_ndtr_diff_scaled(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\Phi(hi) - \Phi(lo)) + c^2/2` with :math:`c = \mathrm{clamp}(0, lo, hi)`, the point of
    :math:`[lo, hi]` closest to 0.

    The shift :math:`c^2/2` removes the part of :math:`\log Z` that is quadratic in the bounds, so that
    callers can cancel it *analytically* against other quadratic terms (e.g. in a log-density), instead of
    subtracting two numbers of size :math:`10^{10}`. Three regimes:

    * :math:`hi < 0` (lower tail), with :math:`\ell = \log\Phi`: :math:`-\log 2 +
      \log\mathrm{erfcx}(-hi/\sqrt2) + \mathrm{log1mexp}(\ell(lo) - \ell(hi))`, where :math:`\ell(lo) -
      \ell(hi) = -(lo - hi)(lo + hi)/2 + \log\mathrm{erfcx}(-lo/\sqrt2) - \log\mathrm{erfcx}(-hi/\sqrt2)`;
    * :math:`lo > 0` (upper tail): the mirror image, by :math:`\Phi(hi) - \Phi(lo) = \Phi(-lo) - \Phi(-hi)`;
    * :math:`lo \le 0 \le hi`: :math:`\log(\tfrac12[\mathrm{erf}(hi/\sqrt2) + \mathrm{erf}(-lo/\sqrt2)])`, a
      sum of two non-negative terms (no cancellation even for a tiny interval around 0).

    ``lo == hi`` gives ``-inf``; ``lo = -inf`` and ``hi = +inf`` are allowed.
    """
    lo, hi = torch.broadcast_tensors(torch.as_tensor(lo), torch.as_tensor(hi))
    straddle = (lo <= 0) & (hi >= 0)
    upper = lo > 0
    # Mirror the upper-tail case onto the lower tail.
    l = torch.where(upper, -hi, lo)
    h = torch.where(upper, -lo, hi)
    tail = ~straddle
    # Safe inputs for the tail branch: -2 < -1 < 0; an infinite far bound contributes exactly nothing.
    h_t = torch.where(tail, h, torch.full_like(h, -1.0))
    l_fin = torch.isfinite(l)
    l_t = torch.where(tail & l_fin, l, h_t - 1.0)
    lerfcx_h = log_erfcx(-h_t / SQRT_2)
    log_ratio = -0.5 * (l_t - h_t) * (l_t + h_t) + log_erfcx(-l_t / SQRT_2) - lerfcx_h
    # Guard the exact-zero-width case: log1mexp(0) = -inf is the right value, but keep it out of gradients.
    log_ratio = torch.where(l_fin, log_ratio, torch.full_like(log_ratio, -math.inf))
    val_tail = -LOG_2 + lerfcx_h + log1mexp(torch.clamp(log_ratio, max=0.0))
    # Straddling 0.
    l_s = torch.where(straddle, lo, torch.full_like(lo, -1.0))
    h_s = torch.where(straddle, hi, torch.full_like(hi, 1.0))
    val_mid = torch.log(0.5 * (torch.erf(h_s / SQRT_2) + torch.erf(-l_s / SQRT_2)))
    return torch.where(straddle, val_mid, val_tail)


def log_ndtr_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\Phi(hi) - \Phi(lo))` for :math:`lo \le hi`, stable in both tails and across 0.

    ``lo == hi`` gives ``-inf``; infinite bounds are allowed. See :func:`log_ndtr_diff_scaled` for the
    regimes.
    """
    lo, hi = torch.broadcast_tensors(torch.as_tensor(lo), torch.as_tensor(hi))
    zero = torch.zeros_like(lo)
    c = torch.minimum(torch.maximum(zero, lo), hi)
    c = torch.where(torch.isfinite(c), c, zero)
    out = log_ndtr_diff_scaled(lo, hi) - 0.5 * c * c
    return torch.where(lo == hi, torch.full_like(out, -math.inf), out)


def _log_phi_over_Phi(z: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\varphi(z) / \Phi(z))`, the log inverse Mills ratio (finite for finite z)."""
    neg = z < 0
    zn = torch.where(neg, z, torch.full_like(z, -1.0))
    k1, _, _ = laplace_cf(-zn / SQRT_2)
    val_neg = 0.5 * LOG_2 + torch.log(-zn / SQRT_2 + k1)
    zp = torch.where(neg, torch.zeros_like(z), z)
    val_pos = -0.5 * zp * zp - LOG_SQRT_2PI - torch.special.log_ndtr(zp)
    return torch.where(neg, val_neg, val_pos)


def ndtri_exp(log_p: torch.Tensor) -> torch.Tensor:
    r"""The inverse of :math:`\log\Phi`: :math:`z` with :math:`\log\Phi(z) = \log p`, for :math:`\log p \le
    0`.

    Accurate for every :math:`\log p`, including :math:`\log p \ll \log(\text{tiny})` (e.g. :math:`-10^5`,
    where :math:`p` itself underflows):

    * :math:`\log p > -\log 2`: :math:`-\Phi^{-1}(-\mathrm{expm1}(\log p))` (the upper tail by symmetry, so
      that :math:`1 - p` is not rounded away);
    * moderate :math:`\log p`: :math:`\Phi^{-1}(e^{\log p})`;
    * below :math:`\log(\text{tiny}) + 8`: the asymptotic start :math:`z_0 = -\sqrt{q - \log q}`, :math:`q =
      -2\log p - \log 2\pi`, then Newton steps on :func:`log_ndtr`.

    A final Newton step is taken with gradients enabled; it polishes the value and makes the derivative the
    exact implicit one, :math:`dz/d\log p = \Phi(z)/\varphi(z)`.
    """
    log_p = torch.as_tensor(log_p)
    finfo = torch.finfo(log_p.dtype)
    log_tiny = math.log(finfo.tiny) + 8.0
    with torch.no_grad():
        lp = log_p.detach()
        upper = lp > -LOG_2
        deep = lp < log_tiny
        mid = ~(upper | deep)
        lp_u = torch.where(upper, lp, torch.full_like(lp, -LOG_2))
        z_u = -torch.special.ndtri(-torch.expm1(lp_u))
        lp_m = torch.where(mid, lp, torch.full_like(lp, -1.0))
        z_m = torch.special.ndtri(torch.exp(lp_m))
        lp_d = torch.where(deep, lp, torch.full_like(lp, log_tiny))
        q = -2.0 * lp_d - 2.0 * LOG_SQRT_2PI
        z_d = -torch.sqrt(q - torch.log(q))
        # the start is good to O(log q / q^2); Newton doubles the digits, and one more step follows below
        for _ in range(2):
            z_d = z_d - (log_ndtr(z_d) - lp_d) * torch.exp(-_log_phi_over_Phi(z_d))
        z0 = torch.where(upper, z_u, torch.where(mid, z_m, z_d))
        finite = torch.isfinite(z0)
        z0s = torch.where(finite, z0, torch.zeros_like(z0))
        inv_r = torch.exp(-_log_phi_over_Phi(z0s))
        ok = finite & torch.isfinite(inv_r)
        inv_r = torch.where(ok, inv_r, torch.zeros_like(inv_r))
        lz = log_ndtr(z0s)
    # Newton step carrying the gradient with respect to log_p only (z0, its log-cdf and slope are constants).
    step = (lz - torch.where(ok, log_p, lz)) * inv_r
    return torch.where(ok, z0s - step, z0)


def laplace_cf_far(w: torch.Tensor, depth: int = 5, halves=None) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`K_1, K_2` of :func:`laplace_cf` by the continued fraction alone, for large :math:`w` only.

    ``depth`` levels are evaluated bottom-up from the tail estimate :math:`K_{n+1} \approx (n+1)/(2w)`. The
    relative error falls off like :math:`w^{-2n}`; against mpmath, (:math:`K_1`, :math:`K_2`):

    ========  ==========================  ==========================
    depth     :math:`w = 6.4`             :math:`w = 21.2`
    ========  ==========================  ==========================
    3         2e-6, 9e-5                  2e-10, 8e-8
    4         1e-7, 6e-6                  1e-12, 5e-10
    5         9e-9, 4e-7                  9e-15, 4e-12
    ========  ==========================  ==========================

    Cheap (two operations per level) and free of the cancellation of the back-substitution through
    ``erfcx``; garbage for small :math:`w`, so callers select its result only far out. ``halves[n]`` may
    supply the numerators :math:`n/2` (e.g. as 0-dim tensors, which are cheaper operands than Python numbers).
    """
    if halves is None:
        halves = [0.5 * n for n in range(depth + 2)]
    k = halves[depth + 1] / w
    k2 = k
    for n in range(depth, 0, -1):
        k = halves[n] / (w + k)
        if n == 2:
            k2 = k
    return k, k2
