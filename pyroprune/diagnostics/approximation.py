r"""How good is the variational approximation? Pareto-smoothed importance sampling diagnostics.

Yao, Vehtari, Simpson & Gelman (2018) check a variational posterior :math:`q(\theta)` by treating it as an
importance-sampling proposal for the true posterior :math:`p(\theta \mid D)`. With joint draws
:math:`\theta^{(s)} \sim q`, :math:`s = 1..S`, the log importance ratios are

.. math::

    \log w_s = \log p(D, \theta^{(s)}) - \log q(\theta^{(s)}), \qquad
    \log p(D, \theta) = \sum_{n=1}^{N} \log p(y_n \mid x_n, \theta, W) + \sum_{\text{sites } j} \log p(\theta_j),

known up to the constant :math:`\log p(D)`, which PSIS never needs. The right tail of the ratios
:math:`w_s` is fitted by a generalized Pareto distribution; its shape estimate :math:`\hat k` tells how heavy
the tail is, i.e. how far :math:`q` is from :math:`p(\theta \mid D)` in the direction that matters for
importance sampling (the ratio :math:`p/q` has finite variance only if :math:`k < 1/2`, and the PSIS
estimate converges at a practically useful rate for :math:`k < 0.7`; Vehtari, Simpson, Gelman, Yao & Gabry
2024).

Here :math:`\theta` are the gates of a :class:`~pyroprune.gates.GatedNet` and the network weights :math:`W`
are the point estimates in the model, so the diagnostic refers to the conditional posterior
:math:`p(\theta \mid D, W)`.

The generalized Pareto fit is ArviZ's: :meth:`arviz_stats.base.array_stats.psislw` (the array back-end of
``DataArray.azstats.psislw``), called as ArviZ's own LOO code calls it, with the negated log ratios and
``r_eff = 1`` (independent draws from :math:`q`).

References
----------
* Y. Yao, A. Vehtari, D. Simpson, A. Gelman (2018), "Yes, but did it work?: Evaluating variational
  inference", ICML 2018.
* A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry (2024), "Pareto smoothed importance sampling", JMLR
  25(72).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..data import TensorSplit
from ..gates import GatedNet
from ..guides import TruncatedLogNormalGuide
from ..posterior import GatePosterior

__all__ = [
    "KHAT_GOOD",
    "KHAT_BAD",
    "log_importance_ratios",
    "log_joint",
    "pareto_khat",
    "interpret_khat",
    "importance_ess",
    "khat_report",
]

#: Below this :math:`\hat k` the approximation is reliable (Yao et al. 2018; Vehtari et al. 2024).
KHAT_GOOD = 0.5
#: Above this :math:`\hat k` importance-sampling corrections of :math:`q` cannot be trusted.
KHAT_BAD = 0.7


# -- log importance ratios ------------------------------------------------------------------------------------


def _draws_from_guide(
    guide: TruncatedLogNormalGuide, gated: GatedNet, num_draws: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Joint draws of :math:`\\theta` (``[S, C]`` per site) from the mean-field guide, and :math:`\\log q` ``[S]``."""
    gates, log_q = {}, None
    for site in gated.sites:
        d = guide.distribution(site.name)
        theta = d.sample((num_draws,))
        lq = d.log_prob(theta).sum(-1)
        gates[site.name] = theta
        log_q = lq if log_q is None else log_q + lq
    return gates, log_q


def _draws_from_marginals(
    posterior: GatePosterior, gated: GatedNet, num_draws: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Joint draws from the product of the posterior's marginals of :math:`x = \\log\\theta`.

    The density of :math:`\\theta = e^x` is :math:`q_\\theta(\\theta) = q_x(x)\\, e^{-x}`, hence
    :math:`\\log q_\\theta = \\log q_x(x) - x`.
    """
    missing = [s.name for s in gated.sites if s.name not in posterior.marginals]
    if missing:
        if posterior.samples:
            raise ValueError(
                f"posterior ({posterior.guide_name or 'GatePosterior'}) holds only draws for sites {missing}: "
                "importance ratios need the density log q(theta); pass the fitted guide or a posterior with "
                "marginals (TruncatedLogNormalGuide, AutoNormal)"
            )
        raise ValueError(
            f"posterior has no marginal over log theta for gate sites {missing} (e.g. RBP's Gaussian gates live on "
            "the real line): these importance ratios are defined for gates fitted in log space"
        )
    gates, log_q = {}, None
    for site in gated.sites:
        d = posterior.marginals[site.name]
        x = d.sample((num_draws,))
        if tuple(x.shape) != (num_draws, site.size):
            raise ValueError(
                f"marginal of site {site.name!r} draws shape {tuple(x.shape)}, expected ({num_draws}, {site.size})"
            )
        lq = (d.log_prob(x) - x).sum(-1)
        gates[site.name] = x.exp()
        log_q = lq if log_q is None else log_q + lq
    return gates, log_q


def _net_reference(gated: GatedNet) -> torch.Tensor | None:
    return next(iter(gated.net.parameters()), None)


@torch.no_grad()
def log_joint(
    gated: GatedNet,
    gates: Mapping[str, torch.Tensor],
    train: TensorSplit,
    batch_size: int = 256,
) -> torch.Tensor:
    r""":math:`\log p(D, \theta^{(s)} \mid W)` for ``S`` gate draws at once, shape ``[S]``.

    .. math::

        \log p(D, \theta) = \sum_{n=1}^{N} \log \mathrm{Cat}\big(y_n \mid \mathrm{softmax} f_W(x_n; \theta)\big)
            + \sum_j \log p(\theta_j),

    the likelihood summed exactly over the whole split (not the :math:`N/B`-scaled minibatch estimate of the
    ELBO), streamed in batches of ``batch_size`` examples; every batch evaluates all ``S`` draws in one pass of
    :meth:`~pyroprune.gates.GatedNet.forward_with_gates`. The network runs in eval mode (BatchNorm running
    statistics, no dropout), so that the density is a deterministic function of :math:`\theta`; its previous
    mode is restored. Masks set on ``gated`` apply, as in the model.

    :param gates: site name -> :math:`\theta` draws of shape ``[S, C]`` (every site of ``gated``).
    :param train: the data :math:`D` (moved batch by batch to the network's device).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    missing = [s.name for s in gated.sites if s.name not in gates]
    if missing:
        raise ValueError(f"no gate values for sites {missing}")
    ref = _net_reference(gated)
    first = gates[gated.sites[0].name]
    num_draws = first.shape[0]
    total = torch.zeros(num_draws, dtype=first.dtype, device=first.device)
    for site in gated.sites:
        total = total + gated.prior(site).log_prob(gates[site.name]).sum(-1).to(total)
    was_training = gated.training
    gated.eval()
    try:
        for xb, yb in train.batches(batch_size):
            if ref is not None:
                xb = xb.to(device=ref.device, dtype=ref.dtype if xb.is_floating_point() else xb.dtype)
                yb = yb.to(ref.device)
            logits = gated.forward_with_gates(xb, gates)  # [S, B, K]
            log_lik = torch.log_softmax(logits, dim=-1)
            picked = log_lik.gather(-1, yb.reshape(1, -1, 1).expand(num_draws, -1, 1)).squeeze(-1)  # [S, B]
            total = total + picked.sum(-1).to(total)
    finally:
        gated.train(was_training)
    return total


@torch.no_grad()
def log_importance_ratios(
    gated: GatedNet,
    guide_or_posterior: TruncatedLogNormalGuide | GatePosterior,
    train: TensorSplit,
    num_draws: int = 1000,
    batch_size: int = 256,
) -> torch.Tensor:
    r"""Log importance ratios :math:`\log w_s = \log p(D, \theta^{(s)}) - \log q(\theta^{(s)})`, shape ``[S]``.

    The ``S`` joint draws :math:`\theta^{(s)} \sim q` are taken at once and pushed through the network together
    (one :meth:`~pyroprune.gates.GatedNet.forward_with_gates` call per data batch, all draws vectorised); the
    log-likelihood is summed over the whole ``train`` split, see :func:`log_joint`.

    * :class:`~pyroprune.guides.TruncatedLogNormalGuide`: draws and :math:`\log q` from its
      :meth:`~pyroprune.guides.TruncatedLogNormalGuide.distribution` per site (densities over :math:`\theta`).
    * :class:`~pyroprune.posterior.GatePosterior` with ``marginals`` (of :math:`\log\theta`): :math:`q` is taken
      as the product of the marginals, :math:`\log q(\theta) = \sum_{j,c} \log q_{j,c}(\theta_{j,c})` -- exact
      for the mean-field guides that produce marginals (SBP/BMRS, ``AutoNormal``).
    * a sample-only :class:`~pyroprune.posterior.GatePosterior`: :class:`ValueError` (no density :math:`q`).

    The ratios are unnormalised: they are off by the constant :math:`\log p(D \mid W)`, which PSIS and the
    self-normalised weights ignore.

    :param num_draws: ``S``; :math:`\hat k` needs a few hundred at least (the tail fit uses
        :math:`\lfloor 3\sqrt{S}\rfloor` draws).
    :param batch_size: data examples per forward pass (memory grows as ``S * batch_size``).
    :raises ValueError: for a posterior without densities, or ``num_draws < 1``.
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if isinstance(guide_or_posterior, TruncatedLogNormalGuide):
        gates, log_q = _draws_from_guide(guide_or_posterior, gated, num_draws)
    elif isinstance(guide_or_posterior, GatePosterior):
        gates, log_q = _draws_from_marginals(guide_or_posterior, gated, num_draws)
    elif isinstance(guide_or_posterior, nn.Module):
        raise ValueError(
            f"log_importance_ratios: guide {type(guide_or_posterior).__name__} is not a TruncatedLogNormalGuide; "
            "convert it with pyroprune.posterior.posterior_from_guide (needs marginals, e.g. AutoNormal)"
        )
    else:
        raise TypeError(
            "guide_or_posterior must be a TruncatedLogNormalGuide or a GatePosterior, "
            f"got {type(guide_or_posterior).__name__}"
        )
    ref = _net_reference(gated)
    if ref is not None:
        gates = {k: v.to(ref) for k, v in gates.items()}
    log_p = log_joint(gated, gates, train, batch_size=batch_size)
    return log_p - log_q.to(log_p)


# -- Pareto k-hat ---------------------------------------------------------------------------------------------


def _as_numpy(log_ratios: torch.Tensor | np.ndarray | list) -> np.ndarray:
    if isinstance(log_ratios, torch.Tensor):
        arr = log_ratios.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(log_ratios, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"log_ratios must be one-dimensional (one per draw), got shape {arr.shape}")
    if np.isnan(arr).any() or np.isposinf(arr).any():
        raise ValueError("log_ratios contain NaN or +inf")
    if not np.isfinite(arr).any():
        raise ValueError("every log ratio is -inf: no draw of q has positive target density")
    return arr


def _rounding_tolerance(log_ratios: torch.Tensor | np.ndarray | list, arr: np.ndarray) -> float:
    """Spread of log ratios below which they count as constant: 64 ulps of the input's dtype at its magnitude."""
    if isinstance(log_ratios, torch.Tensor) and log_ratios.is_floating_point():
        eps = torch.finfo(log_ratios.dtype).eps
    elif isinstance(log_ratios, np.ndarray) and np.issubdtype(log_ratios.dtype, np.floating):
        eps = np.finfo(log_ratios.dtype).eps
    else:
        eps = np.finfo(np.float64).eps
    finite = arr[np.isfinite(arr)]
    return 64.0 * float(eps) * max(1.0, float(np.abs(finite).max()))


def pareto_khat(log_ratios: torch.Tensor | np.ndarray) -> float:
    r"""Pareto :math:`\hat k` of the importance ratios :math:`w_s = \exp(\log w_s)` (ArviZ's PSIS).

    Fits a generalized Pareto distribution to the :math:`M = \lfloor 3\sqrt S\rfloor` largest ratios (``S >
    225``; :math:`S/5` otherwise) with ArviZ's :meth:`arviz_stats.base.array_stats.psislw` (``r_eff = 1``: the
    draws from :math:`q` are independent) and returns the shape estimate :math:`\hat k`; see
    :func:`interpret_khat` for what it means.

    Edge case: when every ratio is equal (up to the rounding error of the input's dtype) -- :math:`q` *is* the
    posterior, :math:`\log w_s = \log p(D)` for all draws -- the weights have no tail at all; the generalized
    Pareto limit of a point mass is :math:`k \to -\infty`, and that is what is returned (ArviZ refuses to fit a
    constant tail).

    :param log_ratios: ``[S]`` log importance ratios (any additive constant).
    :returns: :math:`\hat k`; ``-inf`` for constant ratios.
    :raises ValueError: for NaN/+inf ratios, a non-1-D input or fewer than 25 draws.
    """
    from arviz_stats.base import array_stats

    arr = _as_numpy(log_ratios)
    if arr.size < 25:
        raise ValueError(f"pareto_khat needs at least 25 draws (the tail fit uses >= 5 of them), got {arr.size}")
    finite = arr[np.isfinite(arr)]
    if finite.size == arr.size and float(np.ptp(finite)) <= _rounding_tolerance(log_ratios, arr):
        return -math.inf
    # ArviZ's PSIS takes the log-likelihood-like quantity whose negative is the log ratio (as in its LOO code).
    _, khat = array_stats.psislw(-(arr - finite.max()), r_eff=1.0)
    return float(np.asarray(khat))


def interpret_khat(k: float) -> str:
    r"""The meaning of a Pareto :math:`\hat k` for a variational approximation (Yao et al. 2018; Vehtari et al.
    2024).

    * :math:`\hat k < 0.5` -- **reliable**: the variational posterior is close to the true posterior; the
      importance ratios have finite variance and (PSIS-corrected) posterior expectations are accurate.
    * :math:`0.5 \le \hat k \le 0.7` -- **usable with care**: the ratios have infinite variance but PSIS still
      converges at a practical rate; the approximation is usable for expectations, with some bias and
      Monte Carlo error.
    * :math:`\hat k > 0.7` -- **unreliable**: the variational posterior is too far from the true posterior for
      importance-sampling corrections to work; posterior expectations and uncertainties from :math:`q` are
      not to be trusted, though point estimates (e.g. the posterior means a pruning rule thresholds) may still
      be fine.

    Vehtari et al. (2024) refine the upper threshold to :math:`\min(1 - 1/\log_{10} S, 0.7)` for small
    sample sizes ``S``; with ``S >= 2000`` draws it is 0.7. ``-inf`` (constant ratios: :math:`q` equals the
    posterior) is reliable; NaN is reported as undetermined.
    """
    if math.isnan(k):
        return "undetermined: the Pareto fit of the importance ratios failed"
    if k < KHAT_GOOD:
        return (
            f"reliable (k-hat {k:.2f} < {KHAT_GOOD}): the variational posterior is close to the true posterior; "
            "importance-sampling corrected expectations are accurate"
        )
    if k <= KHAT_BAD:
        return (
            f"usable with care ({KHAT_GOOD} <= k-hat {k:.2f} <= {KHAT_BAD}): the importance ratios have infinite "
            "variance but PSIS still converges; expectations from q carry noticeable bias and Monte Carlo error"
        )
    return (
        f"unreliable (k-hat {k:.2f} > {KHAT_BAD}): the variational posterior is too far from the true posterior "
        "for importance-sampling corrections; its uncertainties are not to be trusted, though point estimates "
        "may still be fine"
    )


def importance_ess(log_ratios: torch.Tensor | np.ndarray) -> float:
    r"""Effective sample size of the self-normalised importance weights, :math:`(\sum_s w_s)^2 / \sum_s w_s^2`.

    Computed stably from the log ratios as :math:`\exp(2\,\mathrm{LSE}(\log w) - \mathrm{LSE}(2\log w))`. It
    lies in :math:`[1, S]`: :math:`S` when all weights are equal (:math:`q` is the posterior), near 1 when one
    draw carries all the weight. This is the *importance-sampling efficiency* of :math:`q` as a proposal for
    the posterior (Kong 1992), not an MCMC effective sample size: the draws from :math:`q` are independent,
    there is no autocorrelation to account for, and it says nothing about mixing. With heavy-tailed weights
    (:math:`\hat k > 0.5`) it is itself noisy and optimistic; trust :math:`\hat k` first.
    """
    arr = _as_numpy(log_ratios)
    m = arr[np.isfinite(arr)].max()
    w = np.exp(arr - m)
    return float(w.sum() ** 2 / np.square(w).sum())


def khat_report(
    gated: GatedNet,
    guide_or_posterior: TruncatedLogNormalGuide | GatePosterior,
    train: TensorSplit,
    num_draws: int = 1000,
    batch_size: int = 256,
) -> dict:
    r"""PSIS diagnostic of a fitted gate posterior: :math:`\hat k`, its meaning and the weights' efficiency.

    Draws ``num_draws`` joint samples from :math:`q`, computes :func:`log_importance_ratios` over the whole
    ``train`` split and returns

    * ``khat`` -- :func:`pareto_khat` of the ratios (ArviZ's PSIS);
    * ``interpretation`` -- :func:`interpret_khat` (thresholds 0.5 and 0.7);
    * ``num_draws`` -- ``S``;
    * ``ess_of_weights`` -- :func:`importance_ess`, :math:`(\sum w)^2/\sum w^2` of the normalised importance
      weights: the importance-sampling efficiency of :math:`q`, **not** an MCMC effective sample size.

    No :math:`\hat R` is computed: the draws are independent samples from :math:`q`, not Markov chains.
    """
    log_w = log_importance_ratios(gated, guide_or_posterior, train, num_draws=num_draws, batch_size=batch_size)
    khat = pareto_khat(log_w)
    return {
        "khat": khat,
        "interpretation": interpret_khat(khat),
        "num_draws": int(log_w.shape[0]),
        "ess_of_weights": importance_ess(log_w),
    }


@torch.no_grad()
def approximate_loo(dt, runs, train: TensorSplit, batch_size: int = 256):
    r"""PSIS-LOO of the DataTree's ``log_likelihood`` corrected for the variational approximation.

    ArviZ's ``loo_approximate_posterior`` (Magnusson et al. 2019) needs, for every posterior draw of the
    DataTree, the target log density :math:`\log p(D, \theta^{(s)})` (:func:`log_joint` on the training split) and
    the proposal log density :math:`\log q(\theta^{(s)}) = \sum_j \log q_x(\log\theta_j) - \log\theta_j`. The draws
    are read back from the DataTree's ``posterior`` group, so both densities belong to exactly the draws the
    pointwise log-likelihood was computed for.

    :param dt: a DataTree from :func:`~pyroprune.diagnostics.datatree.build_datatree`.
    :param runs: the ``(gated, posterior)`` pairs it was built from, one per chain (posteriors with marginals).
    :returns: ArviZ's ELPD object.
    """
    import arviz as az
    import xarray as xr

    num_chains = dt.posterior.sizes["chain"]
    if len(runs) != num_chains:
        raise ValueError(f"runs has {len(runs)} entries but the DataTree has {num_chains} chains")
    log_p, log_q = [], []
    for c, (gated, posterior) in enumerate(runs):
        ref = _net_reference(gated)
        gates, lq = {}, None
        for site in gated.sites:
            if site.name not in posterior.marginals:
                raise ValueError(f"approximate LOO needs the posterior density of site {site.name!r}")
            theta = torch.as_tensor(dt.posterior[site.name].isel(chain=c).values)
            if ref is not None:
                theta = theta.to(device=ref.device, dtype=ref.dtype)
            x = theta.log()
            d = posterior.marginals[site.name]
            term = (d.log_prob(x.to(d.loc.dtype)) - x.to(d.loc.dtype)).sum(-1)
            lq = term if lq is None else lq + term
            gates[site.name] = theta
        log_p.append(log_joint(gated, gates, train, batch_size).double().cpu())
        log_q.append(lq.double().cpu())
    dims = ("chain", "draw")
    lp = xr.DataArray(torch.stack(log_p).numpy(), dims=dims)
    lqa = xr.DataArray(torch.stack(log_q).numpy(), dims=dims)
    return az.loo_approximate_posterior(dt, log_p=lp, log_q=lqa)
