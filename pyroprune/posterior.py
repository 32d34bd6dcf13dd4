"""The fitted posterior over the gates, in one shape for every guide.

A :class:`GatePosterior` holds, per gate site, either the exact marginal of :math:`x = \\log\\theta` (a
distribution with batch shape ``[C]``, e.g. the truncated normal of the SBP/BMRS guide, or the logit-normal
of an ``AutoNormal``) or only posterior draws of :math:`\\theta` (any other guide). Decision rules
(:mod:`pyroprune.methods`) read it; they use closed forms where the marginal admits them, quadrature where
only a density is known, and Monte Carlo where only draws are.

Real-valued gates (RBP's Gaussian dropout noise, :class:`~pyroprune.guides.NormalNoiseGuide`) have no
:math:`\\log\\theta`: their marginals are kept over :math:`\\theta` itself, in ``theta_marginals``; ``draws``,
``mean`` and ``stddev`` read them, so every consumer of draws (the diagnostics) works unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import autoguide
from torch.distributions import biject_to

from .distributions import TruncatedNormal
from .gates import GatedNet, GateSite
from .guides import NormalNoiseGuide, TruncatedLogNormalGuide

__all__ = ["GatePosterior", "posterior_from_guide"]


@dataclass
class GatePosterior:
    """Posterior over the gates of a gated network.

    :param sites: the gate sites, in execution order.
    :param low: lower bound :math:`a` of :math:`\\log\\theta` under the prior.
    :param high: upper bound :math:`b`.
    :param marginals: per site, the marginal distribution of :math:`\\log\\theta` (batch ``[C]``), if known.
    :param samples: per site, posterior draws of :math:`\\theta` with shape ``[S, C]``.
    :param guide_name: what produced it (recorded in plans and reports).
    :param theta_marginals: per site, the marginal distribution of :math:`\\theta` itself (batch ``[C]``), for
        real-valued gates (RBP); ``low``/``high`` are then :math:`\\mp\\infty`.
    :param sample_scores: for a posterior of particles (SVGD, DLLP), a score per stored draw (``[S]``, higher is
        better, e.g. validation agreement with the dense network), read by rules that pick one draw.
    """

    sites: tuple[GateSite, ...]
    low: float
    high: float
    marginals: dict[str, dist.Distribution] = field(default_factory=dict)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)
    guide_name: str = ""
    theta_marginals: dict[str, dist.Distribution] = field(default_factory=dict)
    sample_scores: torch.Tensor | None = None

    @property
    def num_stored_draws(self) -> int | None:
        """How many draws the posterior stores (particles, or draws of a generic guide); ``None`` if it has
        marginals to draw from instead."""
        if self.marginals or self.theta_marginals or not self.samples:
            return None
        return min(int(v.shape[0]) for v in self.samples.values())

    def site(self, name: str) -> GateSite:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no gate site {name!r}")

    def draws(self, name: str, num_samples: int = 1000) -> torch.Tensor:
        """Draws of :math:`\\theta` for site ``name``, shape ``[S, C]`` (from the marginal if known)."""
        if name in self.samples:
            return self.samples[name]
        if name in self.theta_marginals:
            return self.theta_marginals[name].sample((num_samples,))
        x = self.marginals[name].sample((num_samples,))
        return x.exp()

    def mean(self, name: str) -> torch.Tensor:
        """:math:`E[\\theta]` per structure of site ``name``."""
        m = self.marginals.get(name)
        if isinstance(m, TruncatedNormal):
            return _theta_of(m).mean
        if name in self.theta_marginals:
            return self.theta_marginals[name].mean
        return self.draws(name).mean(0)

    def stddev(self, name: str) -> torch.Tensor:
        """:math:`\\mathrm{sd}[\\theta]` per structure of site ``name``."""
        m = self.marginals.get(name)
        if isinstance(m, TruncatedNormal):
            return _theta_of(m).variance.sqrt()
        if name in self.theta_marginals:
            return self.theta_marginals[name].stddev
        return self.draws(name).std(0)

    def truncated_normal(self, name: str) -> TruncatedNormal | None:
        """The site's marginal of :math:`\\log\\theta` if it is a truncated normal on the prior's bounds."""
        m = self.marginals.get(name)
        if isinstance(m, TruncatedNormal):
            return m
        return None

    def normal(self, name: str) -> dist.Normal | None:
        """The site's marginal of :math:`\\theta` if it is a Normal (RBP's Gaussian noise), else ``None``."""
        m = self.theta_marginals.get(name)
        return m if isinstance(m, dist.Normal) else None


def _theta_of(m: TruncatedNormal):
    from .distributions import TruncatedLogNormal

    return TruncatedLogNormal(m.loc, m.scale, m.low, m.high)


def _prior_bounds(gated: GatedNet) -> tuple[float, float]:
    prior = gated.prior(gated.sites[0])
    support = prior.support
    low = getattr(support, "log_low", None)
    high = getattr(support, "log_high", None)
    if low is None:
        low, high = torch.as_tensor(support.lower_bound).log(), torch.as_tensor(support.upper_bound).log()
    return float(torch.as_tensor(low).reshape(-1)[0]), float(torch.as_tensor(high).reshape(-1)[0])


@torch.no_grad()
def posterior_from_guide(
    guide,
    gated: GatedNet,
    num_samples: int = 256,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> GatePosterior:
    """Turn a fitted guide into a :class:`GatePosterior`.

    * :class:`~pyroprune.guides.TruncatedLogNormalGuide`: exact truncated-normal marginals of
      :math:`\\log\\theta`.
    * :class:`~pyroprune.guides.NormalNoiseGuide` (RBP): exact Normal marginals of :math:`\\theta` itself
      (``theta_marginals``).
    * ``AutoNormal`` over the gate sites: its marginals pushed through the support's bijection (a logit-normal
      on :math:`[a, b]` in :math:`\\log\\theta`).
    * any other guide: ``num_samples`` joint draws, taken in one vectorised call (a particle plate outside
      all other plates), kept as samples of :math:`\\theta`.
    """
    if isinstance(guide, NormalNoiseGuide):
        theta = {name: guide.distribution(name) for name in guide.site_names}
        theta = {name: dist.Normal(d.loc.detach(), d.scale.detach()) for name, d in theta.items()}
        return GatePosterior(gated.sites, -math.inf, math.inf, theta_marginals=theta, guide_name=type(guide).__name__)
    low, high = _prior_bounds(gated)
    if isinstance(guide, TruncatedLogNormalGuide):
        marginals = {
            name: TruncatedNormal(guide.loc[k].detach(), guide.log_scale[k].detach().exp(), guide.low, guide.high)
            for name, k in ((n, n.replace(".", "__")) for n in guide.site_names)
        }
        return GatePosterior(gated.sites, low, high, marginals=marginals, guide_name=type(guide).__name__)
    if isinstance(guide, autoguide.AutoNormal):
        marginals = {}
        with pyro.settings.context(module_local_params=True):
            for s in gated.sites:
                loc, scale = guide._get_loc_and_scale(s.name)
                to_theta = biject_to(gated.prior(s).support)
                to_x = _log_space_part(to_theta)
                marginals[s.name] = dist.TransformedDistribution(dist.Normal(loc, scale), to_x)
        return GatePosterior(gated.sites, low, high, marginals=marginals, guide_name=type(guide).__name__)
    # Generic guide: vectorised draws. The particle plate sits left of every plate the model uses.
    model_kwargs = dict(model_kwargs or {})
    with pyro.settings.context(module_local_params=True):
        with pyro.plate("_gate_draws", num_samples, dim=-2):
            trace = poutine.trace(guide).get_trace(*model_args, **model_kwargs)
    samples = {}
    for s in gated.sites:
        if s.name not in trace.nodes:
            raise ValueError(f"guide {type(guide).__name__} has no sample site {s.name!r}")
        v = trace.nodes[s.name]["value"]
        samples[s.name] = v.reshape(num_samples, s.size)
    return GatePosterior(gated.sites, low, high, samples=samples, guide_name=type(guide).__name__)


def _log_space_part(to_theta):
    """The part of the unconstrained -> theta bijection that ends at log(theta) (drops the final exp)."""
    from torch.distributions.transforms import ComposeTransform, ExpTransform

    parts = list(to_theta.parts) if isinstance(to_theta, ComposeTransform) else [to_theta]
    if not parts or not isinstance(parts[-1], ExpTransform):
        raise ValueError(
            "AutoNormal posterior: the gate prior's support bijection does not go through log(theta); "
            "use a LogUniform / TruncatedLogNormal prior"
        )
    return ComposeTransform(parts[:-1])
