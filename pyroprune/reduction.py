r"""Bayesian model reduction for gate pruning (BMRS: Wright, Igel & Selvan, NeurIPS 2024, "BMRS: Bayesian
Model Reduction for Structured Pruning").

Given a fitted posterior :math:`q(x)` over :math:`x = \log\theta` under the prior :math:`p` (log-uniform on
:math:`[a, b]`), replacing :math:`p` by a *reduced* prior :math:`\tilde p` changes the log-evidence by

.. math::

    \Delta F = \log \int q(x)\,\frac{\tilde p(x)}{p(x)}\,dx,

with no refitting. A gate is pruned iff :math:`\Delta F \ge 0` (the reduced model, which switches the gate
off, is at least as probable): no threshold to tune.

* :func:`delta_f_bmrs_n` -- :math:`\tilde p = \mathcal N(a, \sigma_p^2)` truncated to :math:`[a, b]`, by
  default in the limit :math:`\sigma_p \to 0` (BMRS_N);
* :func:`delta_f_bmrs_u` -- :math:`\tilde p` log-uniform on :math:`[\log 2^{-23}, \log 2^{-k}]` (BMRS_U-k);
* :func:`delta_f_quadrature` -- any 1-D posterior / prior / reduced prior, by Gauss--Legendre quadrature;
* :func:`log_snr` -- SBP's signal-to-noise ratio :math:`E[\theta]/\mathrm{sd}[\theta]`, in log space, for
  comparison.

All closed forms are elementwise, broadcast, follow the inputs' dtype and device, and stay finite and accurate
for :math:`\mu \in [-25, 5]`, :math:`\sigma \in [10^{-4}, 150]`, :math:`[a, b] = [-20, 0]`.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch.distributions import constraints

from .distributions import TruncatedLogNormal, TruncatedNormal, _clamp, _log_expm1
from .special import LOG_SQRT_2PI, SQRT_2, log_ndtr_diff_scaled

__all__ = [
    "delta_f_bmrs_n",
    "delta_f_bmrs_u",
    "delta_f_dirac_like",
    "delta_f_quadrature",
    "log_snr",
    "reduced_normal_posterior",
]

_LOG_2 = math.log(2.0)


def delta_f_bmrs_n(
    loc: torch.Tensor | float,
    scale: torch.Tensor | float,
    low: torch.Tensor | float = -20.0,
    high: torch.Tensor | float = 0.0,
    reduced_scale: torch.Tensor | float = 0.0,
    include_log_2pi: bool = True,
) -> torch.Tensor:
    r""":math:`\Delta F` of BMRS_N: the reduced prior is :math:`\tilde p = \mathcal N(a, \sigma_p^2)`
    truncated to :math:`[a, b]` (a spike at the lower bound, i.e. :math:`\theta \approx e^{a} \approx 0`), the
    posterior is :math:`q = \mathcal N(\mu, \sigma^2)` truncated to :math:`[a, b]`, the prior log-uniform on
    :math:`[a, b]`.

    For :math:`\sigma_p > 0` (exact):

    .. math::

        \Delta F = \log\frac{(b - a)\,\tilde Z_q}{Z_q\,\tilde Z_p}
            - \tfrac12\log\bigl(2\pi(\sigma^2 + \sigma_p^2)\bigr) - \frac{(\mu - a)^2}{2(\sigma^2 +
            \sigma_p^2)},

    :math:`Z_q = \Phi(\beta) - \Phi(\alpha)`, :math:`\tilde Z_p = \Phi((b - a)/\sigma_p) - \tfrac12`, and
    :math:`\tilde Z_q` the mass on :math:`[a, b]` of the normalised product :math:`\mathcal N(\mu,
    \sigma^2)\,\mathcal N(a, \sigma_p^2) \propto \mathcal N(\tilde m, \tilde s^2)`, :math:`\tilde m =
    (\mu\sigma_p^2 + a\sigma^2)/(\sigma^2 + \sigma_p^2)`, :math:`\tilde s^2 = \sigma^2\sigma_p^2/(\sigma^2 +
    \sigma_p^2)`. Both masses are taken in scaled form and their quadratic parts are combined with the last
    term analytically (see ``docs/distributions.md``), so nothing of size :math:`10^{9}` is ever subtracted.

    For ``reduced_scale = 0`` (default) the limit :math:`\sigma_p \to 0`:

    .. math::

        \Delta F = \log\bigl[(b - a)\,q(x = a)\bigr]
            = \log(b - a) - \tfrac12\log 2\pi - \log\sigma - \tfrac12\alpha^2 - \log Z_q.

    :param include_log_2pi: ``True`` (default) is the exact expression. ``False`` drops the
        :math:`-\tfrac12\log 2\pi` term, as the authors' public code does; :math:`\Delta F` is then larger by
        exactly :math:`\tfrac12\log 2\pi \approx 0.919`, so slightly more gates are pruned.
    :returns: :math:`\Delta F`, broadcast over the inputs (prune where :math:`\ge 0`).
    """
    q = TruncatedNormal(loc, scale, low, high)
    loc, scale, low, high = q.loc, q.scale, q.low, q.high
    if isinstance(reduced_scale, numbers.Real):
        if not reduced_scale >= 0:
            raise ValueError(f"delta_f_bmrs_n: 'reduced_scale' must be >= 0 (got reduced_scale={reduced_scale})")
        limit_only = reduced_scale == 0
    else:
        limit_only = False
    limit = torch.log(high - low) + q._log_prob(low)
    if limit_only:
        df = limit
    else:
        sp = torch.as_tensor(reduced_scale, dtype=loc.dtype, device=loc.device)
        loc, scale, low, high, sp = torch.broadcast_tensors(loc, scale, low, high, sp)
        positive = sp > 0
        sp_safe = torch.where(positive, sp, torch.ones_like(sp))
        df = torch.where(positive, _bmrs_n_exact(loc, scale, low, high, sp_safe), limit.expand(sp.shape))
    if not include_log_2pi:
        df = df + LOG_SQRT_2PI
    return df


def _bmrs_n_exact(loc, scale, low, high, sp):
    var, var_p = scale * scale, sp * sp
    s2 = var + var_p
    width = high - low
    # the reduced posterior N(m~, s~^2), with its bounds measured from m~ directly (no rounding of m~)
    s_t = scale * sp / torch.sqrt(s2)
    a_rel = (low - loc) * var_p / s2  # a - m~
    b_rel = ((high - loc) * var_p + width * var) / s2  # b - m~
    lhat_rq = log_ndtr_diff_scaled(a_rel / s_t, b_rel / s_t)
    lhat_q = log_ndtr_diff_scaled((low - loc) / scale, (high - loc) / scale)
    log_zp = torch.log(0.5 * torch.erf(width / (sp * SQRT_2)))
    # The quadratic remainder c_q^2/2 - c~^2/2 - (mu - a)^2 / (2 s2), with c = clamp(0, alpha, beta) of each
    # law, simplified case by case (u = mu - b > 0 when the posterior sits above b):
    u = loc - high
    below = loc < low
    inside = (loc >= low) & (loc <= high)
    rq_inside = u * var_p <= width * var  # m~ <= b
    quad_inside = -((loc - low) ** 2) / (2.0 * s2)
    quad_above_in = (u * u * var_p - var * width * (2.0 * u + width)) / (2.0 * var * s2)
    quad_above_out = -(width * width) / (2.0 * var_p)
    quad = torch.where(
        below,
        torch.zeros_like(loc),
        torch.where(inside, quad_inside, torch.where(rq_inside, quad_above_in, quad_above_out)),
    )
    return torch.log(width) - log_zp - 0.5 * torch.log(s2) - LOG_SQRT_2PI + lhat_rq - lhat_q + quad


def delta_f_bmrs_u(
    loc: torch.Tensor | float,
    scale: torch.Tensor | float,
    low: torch.Tensor | float = -20.0,
    high: torch.Tensor | float = 0.0,
    k: float = 8,
    reduced_low: float = -23 * _LOG_2,
) -> torch.Tensor:
    r""":math:`\Delta F` of BMRS_U-k: the reduced prior is log-uniform on :math:`[a', b'] = [\log 2^{-23},
    \log 2^{-k}]` (gates below float32's resolution of 1):

    .. math::

        \Delta F = \log Q([a', b']) - \log\frac{b' - a'}{b - a},\qquad
        Q([a', b']) = \frac{\Phi(\beta') - \Phi(\alpha')}{\Phi(\beta) - \Phi(\alpha)},

    the posterior mass of :math:`[a', b']` against its prior mass. The ratio of masses is taken in scaled
    form, its quadratic parts cancelling as a difference of squares.

    :param k: the reduced prior's upper bound is :math:`-k\log 2` (the paper uses 8 and 4).
    :param reduced_low: :math:`a'` (default :math:`\log 2^{-23}`).
    :raises ValueError: if ``k`` is not positive, :math:`b' \le a'`, or :math:`[a', b'] \not\subseteq [a, b]`.
    """
    if not isinstance(k, numbers.Real) or isinstance(k, bool) or not k > 0:
        raise ValueError(f"delta_f_bmrs_u: 'k' must be a positive number (got k={k!r})")
    a_r, b_r = float(reduced_low), -float(k) * _LOG_2
    if not b_r > a_r:
        raise ValueError(
            f"delta_f_bmrs_u: 'k' too large: the reduced prior [{a_r:.4g}, -k log 2 = {b_r:.4g}] is empty "
            f"(need k < {-a_r / _LOG_2:.4g} with reduced_low={reduced_low:.4g})"
        )
    check_now = isinstance(low, numbers.Real) and isinstance(high, numbers.Real)
    q = TruncatedNormal(loc, scale, low, high)
    loc, scale, low, high = q.loc, q.scale, q.low, q.high
    # Python bounds are checked for free; tensor bounds only with validation on (the check syncs the device)
    if check_now or q._validate_args:
        if not bool(((low <= a_r) & (high >= b_r)).all()):
            raise ValueError(
                f"delta_f_bmrs_u: 'k'={k} and 'reduced_low'={reduced_low:.4g} give the reduced prior "
                f"[{a_r:.4g}, {b_r:.4g}], which must lie inside the prior's [low, high]"
            )
    a_r_t = torch.full_like(loc, a_r)
    b_r_t = torch.full_like(loc, b_r)
    x1 = _clamp(loc, a_r_t, b_r_t)
    x2 = _clamp(loc, low, high)
    log_mass = (
        log_ndtr_diff_scaled((a_r_t - loc) / scale, (b_r_t - loc) / scale)
        - log_ndtr_diff_scaled((low - loc) / scale, (high - loc) / scale)
        - (x1 - x2) * (x1 + x2 - 2.0 * loc) / (2.0 * scale * scale)
    )
    return log_mass - math.log(b_r - a_r) + torch.log(high - low)


def log_snr(
    loc: torch.Tensor | float,
    scale: torch.Tensor | float,
    low: torch.Tensor | float = -20.0,
    high: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    r""":math:`\log \mathrm{SNR} = \log(E[\theta]/\mathrm{sd}[\theta]) = -\tfrac12\log\mathrm{expm1}(D)` for
    :math:`\theta \sim` :class:`~pyroprune.distributions.TruncatedLogNormal`, with :math:`D = \log(1 +
    \mathrm{Var}[\theta]/E[\theta]^2)` as in its ``variance``. SBP (Neklyudov et al. 2017) prunes where
    :math:`\mathrm{SNR} < 1`, i.e. ``log_snr < 0``."""
    d = TruncatedLogNormal(loc, scale, low, high)._log_ratio_d()
    loc_t = torch.as_tensor(loc)
    dtype = loc_t.dtype if loc_t.is_floating_point() else torch.get_default_dtype()
    return (-0.5 * _log_expm1(d)).to(dtype)


# ----------------------------------------------------------------------------------------------------------
# quadrature
# ----------------------------------------------------------------------------------------------------------


def _interval_of(d) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        support = d.support
    except NotImplementedError:
        return None
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    lo = getattr(support, "lower_bound", None)
    hi = getattr(support, "upper_bound", None)
    if lo is None and hi is None:
        return None
    return lo, hi


def _location_scale(d) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(centre, scale) pairs where ``d`` has its mass: mean/stddev, and loc/scale when those exist."""
    out = []
    for c_name, s_name in (("mean", "stddev"), ("loc", "scale")):
        try:
            c, s = getattr(d, c_name), getattr(d, s_name)
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(c, torch.Tensor) and isinstance(s, torch.Tensor):
            out.append((c.detach(), s.detach()))
    return out


def _log_prob_on(d, x: torch.Tensor) -> torch.Tensor:
    """``d.log_prob(x)``, ``-inf`` outside ``d``'s interval support (evaluated at a clamped point there, so
    that a validating distribution does not raise and a formula outside its domain cannot produce NaN)."""
    bounds = _interval_of(d)
    if bounds is None:
        return d.log_prob(x)
    lo, hi = bounds
    inside = torch.ones_like(x, dtype=torch.bool)
    xc = x
    if lo is not None:
        lo = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
        inside = inside & (x >= lo)
        xc = torch.maximum(xc, lo)
    if hi is not None:
        hi = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
        inside = inside & (x <= hi)
        xc = torch.minimum(xc, hi)
    lp = d.log_prob(xc)
    return torch.where(inside, lp, torch.full_like(lp, -math.inf))


def _local_scale(d, x: torch.Tensor) -> torch.Tensor:
    """1 / |d/dx log d(x)| at ``x`` (detached; NaN/inf where undefined)."""
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        lp = _log_prob_on(d, xx)
        (g,) = torch.autograd.grad(lp.sum(), xx, allow_unused=True)
    if g is None:
        return torch.full_like(x, math.nan)
    return 1.0 / g.detach().abs()


#: Half-width, in scales, of the integration window of :func:`delta_f_quadrature` for priors on the real line.
_WINDOW_SCALES = 40.0


def _mass_window(posterior, reduced_prior) -> tuple[torch.Tensor, torch.Tensor] | None:
    r"""The union of :math:`[c - 40 s, c + 40 s]` over the posterior and the reduced prior: where
    :math:`q\,\tilde p/p` has its mass when the prior :math:`p` lives on the whole real line (a Gaussian-type
    :math:`p` wider than :math:`\tilde p` cannot lift the integrand anywhere else)."""
    lows, highs = [], []
    for d in (posterior, reduced_prior):
        for c, s in _location_scale(d)[:1]:
            lows.append(c - _WINDOW_SCALES * s)
            highs.append(c + _WINDOW_SCALES * s)
    if len(lows) < 2:
        return None
    lo, hi = torch.broadcast_tensors(*lows), torch.broadcast_tensors(*highs)
    return torch.stack(lo).min(0).values, torch.stack(hi).max(0).values


def delta_f_quadrature(
    posterior,
    prior,
    reduced_prior,
    num_points: int = 16,
    num_panels: int = 24,
) -> torch.Tensor:
    r""":math:`\Delta F = \log\int q(x)\,\tilde p(x)/p(x)\,dx` for any univariate posterior, prior and reduced
    prior over :math:`x` (e.g. :math:`x = \log\theta`), by composite Gauss--Legendre quadrature in log space.

    The integration interval is the prior's support (an interval); for a prior on the whole real line (e.g. the
    Dirac-like prior of RBP) it is the union of :math:`[c - 40 s, c + 40 s]` over the posterior and the reduced
    prior (centre :math:`c`, scale :math:`s`). It is cut into ``num_panels`` equal panels
    plus panels concentrated where the integrand has its mass: around the centre (``mean`` and ``loc``) of
    each of the three distributions, and of the Gaussian product of the posterior and the reduced prior, at
    distances :math:`\pm 2^{j} s` (:math:`j = -3, \dots, 7`) for their scale :math:`s` (``stddev``,
    ``scale``), and at the ends of the posterior's and the reduced prior's supports (a reduced prior whose
    support is narrower than the prior's contributes exactly 0 outside it), with a ladder there on the
    posterior's local scale :math:`1/|\partial_x \log q|`. A narrow spike of :math:`q` (e.g. :math:`2\cdot
    10^{-9}` wide) or of :math:`\tilde p` is thus resolved. Each panel gets ``num_points`` nodes and the nodes
    are combined with ``logsumexp``.

    :param posterior: :math:`q`, batch shape e.g. ``[C]``.
    :param prior: :math:`p` (its support must be an interval).
    :param reduced_prior: :math:`\tilde p`.
    :param num_points: Gauss--Legendre nodes per panel.
    :param num_panels: equal panels across the prior's support.
    :returns: :math:`\Delta F`, of the broadcast batch shape.
    """
    bounds = _interval_of(prior)
    if bounds is None or bounds[0] is None or bounds[1] is None:
        bounds = _mass_window(posterior, reduced_prior)
        if bounds is None:
            raise ValueError(
                "delta_f_quadrature: the prior's support must be a bounded interval, or the posterior and the "
                "reduced prior must have a location and scale (mean/stddev or loc/scale) to bound the integral"
            )
    ref = None
    for d in (posterior, prior, reduced_prior):
        for c, _ in _location_scale(d):
            ref = c
            break
        if ref is not None:
            break
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else None
    lo = torch.as_tensor(bounds[0], dtype=dtype, device=device).detach()
    hi = torch.as_tensor(bounds[1], dtype=dtype, device=device).detach()
    batch = torch.broadcast_shapes(posterior.batch_shape, prior.batch_shape, reduced_prior.batch_shape, lo.shape)
    lo, hi = lo.expand(batch), hi.expand(batch)

    # -- breakpoints [*batch, P]
    steps = torch.linspace(0.0, 1.0, num_panels + 1, dtype=dtype, device=device)
    points = [lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * steps]
    ladder = torch.tensor([0.0] + [2.0**j for j in range(-3, 8)], dtype=dtype, device=device)
    ladder = torch.cat([-ladder.flip(0)[:-1], ladder])
    features = []
    for d in (posterior, reduced_prior, prior):
        features.extend(_location_scale(d))
    # the product of the posterior and the reduced prior, as if both were Gaussian, locates their overlap
    for cq, sq in _location_scale(posterior):
        for cr, sr in _location_scale(reduced_prior):
            prec = 1.0 / (sq * sq) + 1.0 / (sr * sr)
            features.append(((cq / (sq * sq) + cr / (sr * sr)) / prec, prec.rsqrt()))
    for c, s in features:
        c, s = c.to(dtype).expand(batch), s.to(dtype).expand(batch)
        ok = torch.isfinite(c) & torch.isfinite(s) & (s > 0)
        c = torch.where(ok, c, lo)
        s = torch.where(ok, s, torch.zeros_like(s))
        points.append(c.unsqueeze(-1) + s.unsqueeze(-1) * ladder)
    # ends of the supports; at each, a ladder on the local scale 1/|d log q / dx| of the posterior (a spike's
    # tail cut by a narrower reduced prior decays on that scale, however far it is from the spike itself)
    for d in (posterior, reduced_prior):
        b = _interval_of(d)
        if b is not None:
            for v in b:
                if v is None:
                    continue
                e = torch.as_tensor(v, dtype=dtype, device=device).detach().expand(batch)
                e = torch.where(torch.isfinite(e), e, lo)
                points.append(e.unsqueeze(-1))
                s = _local_scale(posterior, e)
                ok = torch.isfinite(s) & (s > 0)
                s = torch.where(ok, s, torch.zeros_like(s))
                points.append(e.unsqueeze(-1) + s.unsqueeze(-1) * ladder)
    pts = torch.cat(points, dim=-1)
    pts = torch.where(torch.isfinite(pts), pts, lo.unsqueeze(-1))
    pts = torch.sort(_clamp(pts, lo.unsqueeze(-1), hi.unsqueeze(-1)), dim=-1).values
    left, length = pts[..., :-1], pts[..., 1:] - pts[..., :-1]  # [*batch, P-1]

    # -- Gauss-Legendre nodes
    import numpy as np

    nodes_np, weights_np = np.polynomial.legendre.leggauss(num_points)
    nodes = torch.as_tensor(nodes_np, dtype=dtype, device=device)
    weights = torch.as_tensor(weights_np, dtype=dtype, device=device)
    x = left.unsqueeze(-1) + 0.5 * length.unsqueeze(-1) * (nodes + 1.0)  # [*batch, P-1, n]
    log_w = torch.log(0.5 * length.unsqueeze(-1) * weights)  # -inf on empty panels
    x = x.flatten(-2)
    log_w = log_w.flatten(-2)
    # distributions broadcast against the batch on the right: put the node dimension first
    xn = x.movedim(-1, 0)
    log_f = _log_prob_on(posterior, xn) + _log_prob_on(reduced_prior, xn) - _log_prob_on(prior, xn)
    log_f = log_f.movedim(0, -1)
    # empty panels (coinciding breakpoints) carry weight 0 whatever the integrand does there
    terms = torch.where(torch.isfinite(log_w), log_w + log_f, torch.full_like(log_f, -math.inf))
    return torch.logsumexp(terms, dim=-1)


# ----------------------------------------------------------------------------------------------------------
# RBP: reduction of a Gaussian gate posterior against the Dirac-like spike
# ----------------------------------------------------------------------------------------------------------


def _dirac_like_terms(loc, scale, eps_fit, eps_spike):
    r"""``(log D, 1 - r)`` with :math:`r = (\varepsilon_s/\varepsilon_f)^2`, :math:`D = \varepsilon_s^2 + (1 -
    r)\sigma^2`, broadcast tensors; validates the widths."""
    from .distributions import _check_eps

    _check_eps(eps_fit, "eps_fit")
    _check_eps(eps_spike, "eps_spike")
    loc_t = torch.as_tensor(loc)
    dtype = loc_t.dtype if loc_t.is_floating_point() else torch.get_default_dtype()
    loc, scale, eps_fit, eps_spike = (
        torch.as_tensor(v, dtype=dtype, device=loc_t.device) for v in (loc, scale, eps_fit, eps_spike)
    )
    loc, scale, eps_fit, eps_spike = torch.broadcast_tensors(loc, scale, eps_fit, eps_spike)
    log_ratio = torch.log(eps_spike) - torch.log(eps_fit)
    if not bool((log_ratio < 0).all()):
        raise ValueError("'eps_spike' must be < 'eps_fit' (the reduced prior is the narrower spike)")
    one_minus_r = -torch.expm1(2.0 * log_ratio)
    log_d = torch.logaddexp(2.0 * torch.log(eps_spike), torch.log(one_minus_r) + 2.0 * torch.log(scale))
    return loc, scale, eps_fit, eps_spike, log_d, one_minus_r


def delta_f_dirac_like(loc, scale, eps_fit, eps_spike=1e-3) -> torch.Tensor:
    r""":math:`\Delta F` of RBP's threshold-free rule: the Gaussian gate posterior :math:`q(\theta) = \mathcal
    N(\mu, \sigma^2)`, fitted under the Dirac-like prior :math:`p = \mathcal N(0, \varepsilon_f^2)`
    (:class:`~pyroprune.distributions.DiracLike`), against the reduced, narrower spike :math:`\tilde p =
    \mathcal N(0, \varepsilon_s^2)`, :math:`\varepsilon_s < \varepsilon_f`:

    .. math::

        \Delta F = \log \int q(\theta)\,\frac{\tilde p(\theta)}{p(\theta)}\,d\theta
            = \log\varepsilon_f - \tfrac12 \log D - \frac{(1 - r)\,\mu^2}{2D},
        \qquad r = \frac{\varepsilon_s^2}{\varepsilon_f^2},\quad D = \varepsilon_s^2 + (1 - r)\,\sigma^2.

    (Gaussian integral of :math:`q` times :math:`e^{-\lambda\theta^2/2}`, :math:`\lambda =
    \varepsilon_s^{-2} - \varepsilon_f^{-2}`.) :math:`\Delta F = 0` when :math:`q = p`; the limit
    :math:`\varepsilon_s \to 0` is the Savage--Dickey ratio :math:`\log[q(0)/p(0)] = \log(\varepsilon_f/\sigma)
    - \mu^2/(2\sigma^2)`. :math:`1 - r` is taken as ``-expm1``, :math:`\log D` as a ``logaddexp``, so nothing
    overflows for widths from :math:`10^{-30}` to :math:`10^{30}`. Prune where :math:`\ge 0`.

    :raises ValueError: if a width is not finite and > 0 or :math:`\varepsilon_s \ge \varepsilon_f`.
    """
    loc, scale, eps_fit, eps_spike, log_d, one_minus_r = _dirac_like_terms(loc, scale, eps_fit, eps_spike)
    return torch.log(eps_fit) - 0.5 * log_d - 0.5 * one_minus_r * loc * loc * torch.exp(-log_d)


def reduced_normal_posterior(loc, scale, eps_fit, eps_spike=1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The posterior after reduction, :math:`\tilde q \propto q\,\tilde p/p` (BMR's second output): for the
    pair of :func:`delta_f_dirac_like` it is Gaussian,

    .. math::

        \tilde q = \mathcal N\!\left(\frac{\varepsilon_s^2}{D}\,\mu,\; \frac{\varepsilon_s^2}{D}\,\sigma^2\right).

    :returns: ``(loc, scale)`` of :math:`\tilde q`.
    """
    loc, scale, eps_fit, eps_spike, log_d, _ = _dirac_like_terms(loc, scale, eps_fit, eps_spike)
    shrink = torch.exp(2.0 * torch.log(eps_spike) - log_d)
    return loc * shrink, scale * shrink.sqrt()
