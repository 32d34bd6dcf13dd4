r"""DLLP's model: a discrete keep/redundant prior per structure, relaxed, under a distribution-lossless likelihood.

DLLP ("Efficient Stein Variational Inference for Reliable Distribution-lossless Network Pruning", 2022) rejects
"small value means redundant": it re-models the *trained* network as a discrete prior over which structures form
the pruned sub-network and which are redundancy, and asks the sub-network to keep the dense network's predictive
distribution. Only the abstract is public; the formulation below is this package's (``docs/methods/dllp.md``).

**Discrete prior.** Structure :math:`c` of site :math:`s` is kept (:math:`z_{s,c} = 1`) or redundant (0),
:math:`z_{s,c} \sim \mathrm{Bernoulli}(\pi_{s,c})`, with :math:`\pi` built from the trained network itself
(:func:`keep_prior_logits` of :func:`structure_saliency`: how much removing the structure alone changes the dense
predictive distribution).

**Relaxation** (binary concrete; Maddison, Mnih & Teh 2017, Jang, Gu & Poole 2017). The latent of structure
:math:`c` is :math:`v_c = \operatorname{logit}\pi_c + L_c` with :math:`L_c \sim \mathrm{Logistic}(0, 1)`, i.e.

.. math::

    v_c \sim \mathrm{Logistic}(\operatorname{logit}\pi_c,\, 1), \qquad
    \tilde z_c = \sigma(v_c / \lambda), \qquad z_c = \mathbb 1[v_c > 0],

so :math:`P(z_c = 1) = \pi_c` at every temperature :math:`\lambda`, and :math:`\tilde z_c \to z_c` as
:math:`\lambda \to 0`. The gate multiplying structure :math:`c` is :math:`\tilde z_c`. Putting the particles on
:math:`v` (the logistic noise plus the prior logit) rather than on :math:`\operatorname{logit}\tilde z` keeps the
prior fixed while :math:`\lambda` is annealed: only the likelihood sharpens.

**Distribution-lossless likelihood.** With :math:`p_1(\cdot\mid x)` the dense network's class probabilities and
:math:`p_{\tilde z}` the gated network's,

.. math::

    \log p(\mathcal D \mid v) = -\beta\, \frac{N}{B} \sum_{n \in \text{batch}}
        \mathrm{KL}\big(p_1(\cdot \mid x_n) \,\|\, p_{\tilde z}(\cdot \mid x_n)\big)
        + \alpha\, \frac{N}{B} \sum_{n \in \text{batch}} \log p_{\tilde z}(y_n \mid x_n),

a tempered self-distillation likelihood (``lossless_weight`` :math:`\beta`) plus an optional label term
(``label_weight`` :math:`\alpha`, default 0: no labels needed). The posterior over :math:`v` is what SVGD
approaches (:class:`~pyroprune.infer.svgd.SVGD`); no KL against an unknown density is needed.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .gates import GatedNet

__all__ = [
    "SALIENCY_METHODS",
    "kl_log_probs",
    "LosslessGateModel",
    "structure_saliency",
    "keep_prior_logits",
    "hard_gates",
    "relaxed_gates",
]


def kl_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(p \| q) = \sum_k p_k (\log p_k - \log q_k)` over the last dimension, from log-probabilities
    (exact for every :math:`q_k > 0`, no clamping)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def relaxed_gates(v: Mapping[str, torch.Tensor], temperature: float) -> dict[str, torch.Tensor]:
    r"""The relaxed keep indicators :math:`\tilde z = \sigma(v/\lambda)` per site."""
    return {name: torch.sigmoid(x / temperature) for name, x in v.items()}


def hard_gates(v: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    r"""The keep indicators :math:`z = \mathbb 1[v > 0]` per site (the :math:`\lambda \to 0` limit), as floats."""
    return {name: (x > 0).to(x.dtype) for name, x in v.items()}


class LosslessGateModel(nn.Module):
    r"""The Pyro model of DLLP over a :class:`~pyroprune.gates.GatedNet` (module docstring).

    ``model(x, y, num_data=N)`` samples one latent site per gate site (the same names, values :math:`v` of shape
    ``[C]``, or ``[K, 1, C]`` under a particle plate), runs the network with gates :math:`\sigma(v/\lambda)` and
    adds the distribution-lossless log-likelihood as a ``pyro.factor`` inside ``pyro.plate("data", N,
    subsample=...)``. The network runs in eval mode (weights and BatchNorm statistics are constants of the target
    density; DLLP prunes a trained network).

    :param gated: the gated network; its weights stay fixed.
    :param keep_logits: site name -> :math:`\operatorname{logit}\pi` (``[C]``), see :func:`keep_prior_logits`.
    :param temperature: :math:`\lambda > 0`; an attribute a schedule may change between steps.
    :param lossless_weight: :math:`\beta \ge 0`.
    :param label_weight: :math:`\alpha \ge 0`.
    """

    def __init__(
        self,
        gated: GatedNet,
        keep_logits: Mapping[str, torch.Tensor],
        temperature: float = 1.0,
        lossless_weight: float = 1.0,
        label_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(gated, GatedNet):
            raise TypeError(f"LosslessGateModel needs a GatedNet, got {type(gated).__name__}")
        missing = [s.name for s in gated.sites if s.name not in keep_logits]
        if missing:
            raise ValueError(f"keep_logits has no entry for gate site(s) {', '.join(missing)}")
        for s in gated.sites:
            if tuple(keep_logits[s.name].shape) != (s.size,):
                raise ValueError(
                    f"keep_logits[{s.name!r}] has shape {tuple(keep_logits[s.name].shape)}, expected ({s.size},)"
                )
        for name, value in (("lossless_weight", lossless_weight), ("label_weight", label_weight)):
            if not value >= 0:
                raise ValueError(f"'{name}' must be >= 0, got {value}")
        if lossless_weight == 0 and label_weight == 0:
            raise ValueError("'lossless_weight' and 'label_weight' are both 0: the model would ignore the data")
        self.gated = gated
        ref = next(gated.parameters())
        for s in gated.sites:
            self.register_buffer(_key(s.name), keep_logits[s.name].detach().to(ref).clone())
        self.temperature = temperature
        self.lossless_weight = float(lossless_weight)
        self.label_weight = float(label_weight)

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"'temperature' must be > 0, got {value}")
        self._temperature = float(value)

    def keep_logit(self, name: str) -> torch.Tensor:
        r""":math:`\operatorname{logit}\pi` of site ``name``."""
        return getattr(self, _key(name))

    def prior(self, name: str) -> dist.Logistic:
        r"""The prior of the latent :math:`v` of site ``name``: :math:`\mathrm{Logistic}(\operatorname{logit}\pi,
        1)`, batch ``[C]``."""
        loc = self.keep_logit(name)
        return dist.Logistic(loc, torch.ones_like(loc))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None) -> torch.Tensor:
        v = {s.name: pyro.sample(s.name, self.prior(s.name).to_event(1)) for s in self.gated.sites}
        was_training = self.gated.training
        self.gated.eval()
        try:
            with torch.no_grad():
                teacher = torch.log_softmax(self.gated.net(x), dim=-1)  # no gate values set: the dense network
            logits = self.gated.forward_with_gates(x, relaxed_gates(v, self.temperature))
        finally:
            self.gated.train(was_training)
        log_p = torch.log_softmax(logits, dim=-1)
        n = num_data or self.gated.num_data or x.shape[0]
        with pyro.plate("data", size=n, subsample=torch.arange(x.shape[0], device=x.device)):
            if self.lossless_weight:
                kl = kl_log_probs(teacher, log_p)
                pyro.factor("lossless", -self.lossless_weight * kl)
            if self.label_weight:
                if y is None:
                    raise ValueError("'label_weight' > 0 needs the labels y")
                ll = log_p.gather(-1, y.expand(log_p.shape[:-1]).unsqueeze(-1)).squeeze(-1)
                pyro.factor("labels", self.label_weight * ll)
        return logits


def _key(name: str) -> str:
    return "keep_logit__" + name.replace(".", "__").replace(":", "_")


#: Ways of measuring a structure's saliency (:func:`structure_saliency`).
SALIENCY_METHODS = ("fisher", "exact")


def structure_saliency(
    gated: GatedNet, x: torch.Tensor, method: str = "fisher", max_batch: int = 8192
) -> dict[str, torch.Tensor]:
    r"""The distribution loss of removing each structure alone from the trained network,

    .. math::

        r_{s,c} = \frac1{|X|}\sum_{x \in X} \mathrm{KL}\big(p_1(\cdot\mid x) \,\|\, p_{-(s,c)}(\cdot\mid x)\big),

    where :math:`p_{-(s,c)}` is the network with gate :math:`(s, c)` at 0 and every other at 1, on the calibration
    inputs ``x``. The network runs in eval mode.

    * ``"exact"``: every removal evaluated (as a batch of gate draws, at most ``max_batch`` examples per forward
      pass): :math:`\sum_s C_s` forward passes of ``x`` -- exact, but slow for wide layers on a CPU;
    * ``"fisher"`` (default): the second-order expansion around the dense network,
      :math:`r_{s,c} \approx \tfrac12 F_{cc}` with the Fisher information of the gate,
      :math:`F_{cc} = \frac1{|X|}\sum_x \sum_y p_1(y\mid x)\, (\partial_{z_c} \log p_z(y\mid x))^2\big|_{z=1}`
      (the first-order term vanishes at :math:`z = 1`). Per-example gradients come from per-example gate copies
      in one backward pass per class: :math:`2K` passes of ``x`` whatever the width (Theis et al. 2018, "Faster
      gaze prediction with dense networks and Fisher pruning", use the empirical version).

    :returns: site name -> ``[C]`` non-negative saliencies (float64, on the network's device).
    :raises ValueError: for an unknown ``method``.
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"'saliency' must be one of {', '.join(SALIENCY_METHODS)}, got {method!r}")
    was_training = gated.training
    gated.eval()
    try:
        if method == "exact":
            return _exact_saliency(gated, x, max_batch)
        return _fisher_saliency(gated, x)
    finally:
        gated.train(was_training)


@torch.no_grad()
def _exact_saliency(gated: GatedNet, x: torch.Tensor, max_batch: int) -> dict[str, torch.Tensor]:
    teacher = torch.log_softmax(gated.net(x), dim=-1)
    chunk = max(1, max_batch // x.shape[0])
    out = {}
    for site in gated.sites:
        values = []
        for start in range(0, site.size, chunk):
            idx = torch.arange(start, min(start + chunk, site.size), device=x.device)
            gates = torch.ones(idx.numel(), site.size, dtype=x.dtype, device=x.device)
            gates[torch.arange(idx.numel(), device=x.device), idx] = 0.0
            log_p = torch.log_softmax(gated.forward_with_gates(x, {site.name: gates}), dim=-1)
            kl = kl_log_probs(teacher, log_p).mean(-1)
            values.append(kl.clamp_min(0.0).double())
        out[site.name] = torch.cat(values)
    return out


def _fisher_saliency(gated: GatedNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    n = x.shape[0]
    # One gate vector per example: the gate hooks fold a leading dimension of n "draws" out of a batch of n
    # examples, so example i is multiplied by row i and d log p_i / d z_i are the per-example gradients.
    gates = {s.name: torch.ones(n, s.size, dtype=x.dtype, device=x.device, requires_grad=True) for s in gated.sites}
    with torch.enable_grad(), gated.gate_values(gates):
        log_p = torch.log_softmax(gated.net(x), dim=-1)
    probs = log_p.detach().exp()
    fisher = {
        name: torch.zeros(s, dtype=torch.float64, device=x.device)
        for name, s in ((s.name, s.size) for s in gated.sites)
    }
    classes = log_p.shape[-1]
    for y in range(classes):
        grads = torch.autograd.grad(log_p[:, y].sum(), list(gates.values()), retain_graph=y < classes - 1)
        for (name, _), g in zip(gates.items(), grads, strict=True):
            fisher[name] += (probs[:, y : y + 1].double() * g.double().square()).sum(0)
    return {name: 0.5 * f / n for name, f in fisher.items()}


def keep_prior_logits(
    saliency: Mapping[str, torch.Tensor], prior_keep: float = 0.5, saliency_weight: float = 2.0, floor: float = 1e-12
) -> dict[str, torch.Tensor]:
    r"""The prior keep logits from the saliencies:

    .. math::

        \operatorname{logit}\pi_{s,c} = \operatorname{logit}\rho + \gamma\, \operatorname{clip}\Big(
            \frac{\ell_{s,c} - \bar\ell_s}{\mathrm{sd}(\ell_s)}, -3, 3\Big), \qquad \ell_{s,c} = \log(r_{s,c} + r_0),

    a structure whose removal barely moves the dense predictive distribution (relative to the rest of its site) is a
    priori redundant. :math:`\rho` (``prior_keep``) is the prior keep probability of a structure of median
    saliency, :math:`\gamma` (``saliency_weight``) how strongly the saliency informs the prior (0: uniform
    :math:`\pi = \rho`), :math:`r_0` (``floor``) keeps dead structures finite.

    :raises ValueError: for ``prior_keep`` outside (0, 1) or a negative ``saliency_weight``.
    """
    if not 0.0 < prior_keep < 1.0:
        raise ValueError(f"'prior_keep' must be in (0, 1), got {prior_keep}")
    if not saliency_weight >= 0:
        raise ValueError(f"'saliency_weight' must be >= 0, got {saliency_weight}")
    base = torch.logit(torch.tensor(float(prior_keep), dtype=torch.float64))
    out = {}
    for name, r in saliency.items():
        ell = (r.double() + floor).log()
        if ell.numel() > 1 and float(ell.std()) > 0:
            standard = ((ell - ell.mean()) / ell.std()).clamp(-3.0, 3.0)
        else:
            standard = torch.zeros_like(ell)
        out[name] = (base.to(ell.device) + saliency_weight * standard).to(r.dtype if r.is_floating_point() else None)
    return out
