"""Guides for the gates of a :class:`~pyroprune.gates.GatedNet`.

The guide of SBP (Neklyudov et al., 2017) and BMRS (Wright, Igel & Selvan, 2024) is mean-field over the
structures, each gate a truncated log-normal:

.. math::

    q(\\theta_{s,c}) = \\mathrm{LogN}_{[a,b]}(\\theta_{s,c} \\mid \\mu_{s,c}, \\sigma_{s,c}^2),
    \\qquad \\log \\theta_{s,c} \\in [a, b],

initialised at :math:`\\mu = 0`, :math:`\\log\\sigma = -5` (SBP's initialisation: every gate starts at
:math:`\\theta \\approx 1`, i.e. the pretrained network).

:class:`TruncatedLogNormalGuide` is deliberately short: copy it to write your own (see ``docs/guides.md``).
Its parameters are plain ``torch.nn.Parameter`` s, so it never touches Pyro's global param store.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from .distributions import TruncatedLogNormal
from .gates import GatedNet, GateSite

__all__ = ["NormalNoiseGuide", "TruncatedLogNormalGuide", "auto_guide", "check_local_params"]


def _key(site_name: str) -> str:
    # nn.ParameterDict keys may not contain "."; module paths do.
    return site_name.replace(".", "__")


class TruncatedLogNormalGuide(nn.Module):
    """Mean-field truncated log-normal guide over every gate site of ``gated``.

    :param gated: the gated network (or a sequence of :class:`~pyroprune.gates.GateSite`).
    :param low: lower bound :math:`a` of :math:`\\log\\theta` (must match the prior's support).
    :param high: upper bound :math:`b` of :math:`\\log\\theta`.
    :param init_loc: initial :math:`\\mu` (SBP: 0).
    :param init_log_scale: initial :math:`\\log\\sigma` (SBP: -5).
    """

    def __init__(
        self,
        gated: GatedNet | list[GateSite] | tuple[GateSite, ...],
        low: float = -20.0,
        high: float = 0.0,
        init_loc: float = 0.0,
        init_log_scale: float = -5.0,
    ) -> None:
        super().__init__()
        if not low < high:
            raise ValueError(f"TruncatedLogNormalGuide: 'low' must be < 'high' (got low={low}, high={high})")
        sites = gated.sites if isinstance(gated, GatedNet) else tuple(gated)
        self.site_names = [s.name for s in sites]
        self.low, self.high = float(low), float(high)
        self.loc = nn.ParameterDict({_key(s.name): nn.Parameter(torch.full((s.size,), float(init_loc))) for s in sites})
        self.log_scale = nn.ParameterDict(
            {_key(s.name): nn.Parameter(torch.full((s.size,), float(init_log_scale))) for s in sites}
        )

    def distribution(self, name: str) -> TruncatedLogNormal:
        """The variational distribution of gate site ``name`` (batch shape ``[C]``)."""
        loc = self.loc[_key(name)]
        return TruncatedLogNormal(loc, self.log_scale[_key(name)].exp(), self.low, self.high)

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {name: pyro.sample(name, self.distribution(name).to_event(1)) for name in self.site_names}


def auto_guide(guide_cls: Callable[..., PyroModule], gated: GatedNet, **kwargs) -> PyroModule:
    r"""Build a Pyro AutoGuide (e.g. ``AutoNormal``) over ``gated`` with module-local parameters.

    Pyro modules decide at construction whether their parameters live in the global param store;
    pyroprune never uses it, so AutoGuides are built under ``pyro.settings.context(module_local_params=True)``
    (equivalently, build them inside that context yourself). Thanks to the log-space support bijection of the
    gate priors, the AutoGuide's latent is :math:`\mathrm{logit}((\log\theta - a)/(b - a))`.
    """
    with pyro.settings.context(module_local_params=True):
        return guide_cls(gated, **kwargs)


def check_local_params(module) -> None:
    """Raise a clear error for a Pyro module built to use the global param store."""
    for m in module.modules() if isinstance(module, nn.Module) else ():
        if isinstance(m, PyroModule) and not hasattr(m._pyro_context, "param_state"):
            raise ValueError(
                f"{type(m).__name__} was built with Pyro's global param store; pyroprune keeps parameters "
                "module-local: build it with pyroprune.guides.auto_guide(" + type(m).__name__ + ", gated, ...) "
                "or inside pyro.settings.context(module_local_params=True)"
            )


class NormalNoiseGuide(nn.Module):
    r"""Mean-field Gaussian dropout-noise guide of RBP over every gate site of ``gated``:

    .. math::

        q(\theta_{s,c}) = \mathcal N(\theta_{s,c} \mid \mu_{s,c}, \sigma_{s,c}^2),
        \qquad \theta_{s,c} \in \mathbb R,

    i.e. multiplicative Gaussian noise :math:`\theta = \mu(1 + \sqrt{\alpha}\,\xi)`, :math:`\xi \sim
    \mathcal N(0, 1)`, with learnable mean :math:`\mu` and variance :math:`\sigma^2` (dropout rate
    :math:`\alpha = \sigma^2/\mu^2`). Initialised at :math:`\mu = 1` (the pretrained network) and a small
    :math:`\sigma`. Same conventions as :class:`TruncatedLogNormalGuide`: module-local ``nn.Parameter`` s
    ``loc`` and ``log_scale`` (one ``nn.ParameterDict`` entry per site), no global param store. Pair it with a
    :class:`~pyroprune.distributions.DiracLike` prior (closed-form KL).

    :param gated: the gated network (or a sequence of :class:`~pyroprune.gates.GateSite`).
    :param init_loc: initial :math:`\mu` (1: the gate leaves the structure as trained).
    :param init_log_scale: initial :math:`\log\sigma`.
    """

    def __init__(
        self,
        gated: GatedNet | list[GateSite] | tuple[GateSite, ...],
        init_loc: float = 1.0,
        init_log_scale: float = -5.0,
    ) -> None:
        super().__init__()
        sites = gated.sites if isinstance(gated, GatedNet) else tuple(gated)
        self.site_names = [s.name for s in sites]
        self.loc = nn.ParameterDict({_key(s.name): nn.Parameter(torch.full((s.size,), float(init_loc))) for s in sites})
        self.log_scale = nn.ParameterDict(
            {_key(s.name): nn.Parameter(torch.full((s.size,), float(init_log_scale))) for s in sites}
        )

    def distribution(self, name: str) -> dist.Normal:
        r"""The variational distribution of gate site ``name`` (batch shape ``[C]``), a Normal over
        :math:`\theta`."""
        return dist.Normal(self.loc[_key(name)], self.log_scale[_key(name)].exp())

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {name: pyro.sample(name, self.distribution(name).to_event(1)) for name in self.site_names}
