"""Stochastic variational inference for gated networks.

The loss is Pyro's ELBO with analytic KL where one is registered (``TraceMeanField_ELBO``; Monte Carlo
otherwise), built per call from explicit ``nn.Module`` parameters -- never from Pyro's global param store.
Two weightings of the KL are offered:

* ``"elbo"`` (default): the properly scaled negative ELBO,
  :math:`N\\cdot\\overline{\\mathrm{CE}} + \\sum_s \\mathrm{KL}(q_s\\|p_s)`;
* ``"bmrs"``: the weighting of the BMRS authors' public code,
  :math:`\\overline{\\mathrm{CE}} + \\frac1L\\sum_{l=1}^L \\frac1{C_l}\\mathrm{KL}(q_l\\|p_l)`
  (per-layer mean KL, then mean over layers) -- far heavier on the KL than :math:`1/N`.

The weighting is applied by scaling sites in *both* model and guide (:class:`SiteScale`), so it works with any
guide, including AutoGuides.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from torch import nn

from ..checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from ..data import TensorSplit
from ..gates import GatedNet
from ..guides import check_local_params
from .progress import progress_bar

__all__ = [
    "SiteScale",
    "FitHistory",
    "TrainingDiverged",
    "elbo_loss",
    "fit_svi",
    "site_scales",
    "KL_WEIGHTINGS",
]

KL_WEIGHTINGS = ("elbo", "bmrs")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model and guide hold the last good state."""


class SiteScale(Messenger):
    """Multiply the log-density scale of named sample sites (``{name: factor}``)."""

    def __init__(self, scales: Mapping[str, float]) -> None:
        super().__init__()
        self.scales = dict(scales)

    def _process_message(self, msg) -> None:
        factor = self.scales.get(msg["name"])
        if factor is not None:
            msg["scale"] = factor * msg["scale"]


def site_scales(gated: GatedNet, kl_weighting: str, num_data: int) -> dict[str, float]:
    """The :class:`SiteScale` factors implementing ``kl_weighting``."""
    if kl_weighting == "elbo":
        return {}
    if kl_weighting == "bmrs":
        num_layers = len(gated.sites)
        scales = {s.name: 1.0 / (num_layers * s.size) for s in gated.sites}
        scales["obs"] = 1.0 / num_data  # the data plate already scales by N/B: this leaves the batch mean
        return scales
    raise ValueError(f"kl_weighting must be one of {KL_WEIGHTINGS}, got {kl_weighting!r}")


def elbo_loss(
    gated: GatedNet,
    guide: Callable,
    num_data: int,
    kl_weighting: str = "elbo",
    num_particles: int = 1,
    analytic_kl: bool = True,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(x, y)``: the differentiable negative ELBO of a minibatch (see the module docstring).

    :param num_particles: Monte Carlo draws per step, vectorised (one batched forward pass).
    :param analytic_kl: use registered closed-form KLs (``TraceMeanField_ELBO``).
    """
    check_local_params(guide)
    scales = site_scales(gated, kl_weighting, num_data)
    elbo_cls = TraceMeanField_ELBO if analytic_kl else Trace_ELBO
    elbo = elbo_cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
    model = SiteScale(scales)(gated) if scales else gated
    scaled_guide = SiteScale(scales)(guide) if scales else guide

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with pyro.settings.context(module_local_params=True):
            return elbo.differentiable_loss(model, scaled_guide, x, y, num_data=num_data)

    return loss


@dataclass
class FitHistory:
    """Per-epoch records of a fit (``epoch``, ``loss`` and whatever ``on_epoch_end`` added)."""

    epochs: list[dict] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.epochs]


def _parameters(*modules) -> list[nn.Parameter]:
    seen, params = set(), []
    for m in modules:
        if isinstance(m, nn.Module):
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


def fit_svi(
    gated: GatedNet,
    guide: Callable,
    train: TensorSplit,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    guide_lr: float | None = None,
    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
    kl_weighting: str = "elbo",
    num_particles: int = 1,
    analytic_kl: bool = True,
    seed: int | None = None,
    on_epoch_end: Callable[[int, dict], dict | None] | None = None,
    progress: bool = True,
    description: str = "SVI",
    validate_every_step: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    fingerprint: dict | None = None,
) -> FitHistory:
    r"""Fit the gate posterior (and the network weights) by SVI on minibatches.

    :param gated: the gated network (model); its weights are trained jointly.
    :param guide: any Pyro guide over the gate sites that is an ``nn.Module`` (its parameters are optimised).
    :param train: training data, already on the device.
    :param lr: learning rate of the network weights.
    :param guide_lr: learning rate of the guide's parameters (default ``lr``). The variational parameters
        usually need a larger one than pretrained weights: they must travel from SBP's initialisation
        (:math:`\log\sigma = -5`) to posteriors many units away.
    :param optimizer: a ``torch.optim`` class, called with two parameter groups (network, guide).
    :param on_epoch_end: called as ``on_epoch_end(epoch, record)``; may return a dict merged into the record
        (e.g. validation accuracy, kept fraction) that the progress bar shows.
    :param validate_every_step: keep Pyro's validation (model/guide site matching, distribution arguments) on
        for every step. By default it applies to the first step only -- the structure cannot change between
        steps, and the checks cost a noticeable share of a small network's step; non-finite losses are caught
        by the NaN guard regardless.
    :param checkpoint_dir: write a checkpoint (:mod:`pyroprune.checkpoint`) into this folder after every
        completed epoch, after ``on_epoch_end`` (so masks it set are saved).
    :param resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (from scratch otherwise):
        model, guide, optimizer, minibatch order, RNG states, history and masks are restored and training goes on
        with the epoch after the saved one, so that the result equals that of an uninterrupted run with the same
        ``seed``. ``epochs`` is the total number of epochs, the resumed ones included.
    :param fingerprint: a JSON-safe description of the run (recipe, architecture, data set...) stored with the
        checkpoint; resuming refuses a checkpoint whose fingerprint differs. The training hyperparameters
        (seed, batch size, learning rates, KL weighting, particles, optimizer, gate sites, data size) are added
        under ``"fit_svi"``.
    :raises TrainingDiverged: if the loss becomes NaN/inf; model and guide are restored to the state at the
        end of the last completed epoch. The check runs once per epoch (no host synchronisation per step), so the
        rest of a diverged epoch is computed and then discarded.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    if seed is not None:
        pyro.set_rng_seed(seed)
    n = len(train)
    loss_fn = elbo_loss(gated, guide, n, kl_weighting, num_particles, analytic_kl)
    gated.train()
    # AutoGuides create their parameters lazily on the first call.
    with torch.no_grad():
        loss_fn(train.x[:2], train.y[:2])
    net_params = _parameters(gated)
    known = {id(p) for p in net_params}
    guide_params = [p for p in _parameters(guide) if id(p) not in known]
    groups = [{"params": net_params, "lr": lr}]
    if guide_params:
        groups.append({"params": guide_params, "lr": lr if guide_lr is None else guide_lr})
    opt = optimizer(groups, lr=lr)
    history = FitHistory()
    validating, first_step = is_validation_enabled(), True
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.initial_seed() % 2**63)
    start = 0
    if checkpoint_dir is not None:
        fingerprint = {
            **(fingerprint or {}),
            "fit_svi": _fit_fingerprint(
                gated, n, seed, batch_size, lr, guide_lr, opt, kl_weighting, num_particles, analytic_kl
            ),
        }
        if resume and checkpoint_exists(checkpoint_dir):
            restored = load_checkpoint(
                checkpoint_dir, gated=gated, guide=guide, optimizer=opt, generator=generator, fingerprint=fingerprint
            )
            start = restored["epoch"]
            history.epochs = list(restored["history"])
    bar = progress_bar(range(start + 1, epochs + 1), description, enabled=progress)
    for epoch in bar:
        good_state = _snapshot(gated, guide)
        # Loss bookkeeping stays on the device: no host synchronisation inside the step loop. The first
        # non-finite step is recorded there too and checked once per epoch.
        total = torch.zeros((), device=train.x.device, dtype=torch.float64)
        first_bad = torch.full((), -1, device=train.x.device, dtype=torch.long)
        count = 0
        for step, (xb, yb) in enumerate(train.batches(batch_size, shuffle=True, generator=generator)):
            opt.zero_grad(set_to_none=True)
            with pyro.validation_enabled(validating and (validate_every_step or first_step)):
                loss = loss_fn(xb, yb)
            first_step = False
            loss.backward()
            opt.step()
            detached = loss.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached), step, first_bad)
            total += detached.double() * xb.shape[0]
            count += xb.shape[0]
        if int(first_bad) >= 0:
            _restore(gated, guide, good_state)
            raise TrainingDiverged(
                f"{description}: the loss became NaN/inf at epoch {epoch}, step {int(first_bad)}; model and guide "
                f"restored to the end of epoch {epoch - 1}. Lower the learning rate (lr={lr}, guide_lr={guide_lr})."
            )
        record = {"epoch": epoch, "loss": float(total) / max(count, 1) / (n if kl_weighting == "elbo" else 1)}
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch, record) or {})
        history.epochs.append(record)
        if checkpoint_dir is not None:
            save_checkpoint(
                checkpoint_dir,
                epoch=epoch,
                gated=gated,
                guide=guide,
                optimizer=opt,
                generator=generator,
                history=history.epochs,
                masks=gated.masks,
                fingerprint=fingerprint,
            )
        bar.set_postfix({k: _fmt(v) for k, v in record.items() if k != "epoch"})
    return history


def _fit_fingerprint(
    gated: GatedNet,
    num_data: int,
    seed: int | None,
    batch_size: int,
    lr: float,
    guide_lr: float | None,
    opt: torch.optim.Optimizer,
    kl_weighting: str,
    num_particles: int,
    analytic_kl: bool,
) -> dict:
    """What a resumed fit must share with the fit that wrote the checkpoint."""
    return {
        "seed": seed,
        "num_data": num_data,
        "batch_size": batch_size,
        "lr": lr,
        "guide_lr": guide_lr,
        "optimizer": type(opt).__name__,
        "kl_weighting": kl_weighting,
        "num_particles": num_particles,
        "analytic_kl": analytic_kl,
        "sites": {s.name: s.size for s in gated.sites},
    }


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def _snapshot(*modules) -> list[dict]:
    return [
        {k: v.detach().clone() for k, v in m.state_dict().items()} if isinstance(m, nn.Module) else {} for m in modules
    ]


def _restore(gated, guide, state) -> None:
    for m, s in zip((gated, guide), state, strict=True):
        if isinstance(m, nn.Module) and s:
            m.load_state_dict(s)
