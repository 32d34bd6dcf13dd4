r"""DLLP's fit: SVGD particles over the relaxed keep indicators of a trained network (``docs/methods/dllp.md``).

1. Gate the trained network (:class:`~pyroprune.gates.GatedNet`) and measure each structure's saliency
   :math:`r_{s,c}` -- the KL from the dense predictive distribution when it alone is removed -- on a calibration
   sample of the training inputs (:func:`~pyroprune.lossless.structure_saliency`);
2. turn it into the discrete prior :math:`z_{s,c} \sim \mathrm{Bernoulli}(\pi_{s,c})`
   (:func:`~pyroprune.lossless.keep_prior_logits`), relaxed as in :class:`~pyroprune.lossless.LosslessGateModel`;
3. move :math:`K` particles :math:`v^{(k)}` with :class:`~pyroprune.infer.svgd.SVGD` (network weights fixed) for
   ``epochs`` passes over the training set, the temperature annealed per step
   (:func:`~pyroprune.methods.dllp.temperature_schedule`);
4. the posterior is the particles' sub-networks :math:`z^{(k)} = \mathbb 1[v^{(k)} > 0]`
   (:class:`~pyroprune.posterior.GatePosterior` draws), each scored on the validation split by its agreement
   with the dense predictive distribution (``sample_scores`` = :math:`-\overline{\mathrm{KL}}`).

The gated network returned carries the *discrete* prior (``Bernoulli(pi)`` over :math:`\theta = z`), so the
diagnostics' prior draws are sub-networks, like the posterior's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..data import DataSplits, TensorSplit
from ..gates import GatedNet
from ..lossless import LosslessGateModel, hard_gates, keep_prior_logits, kl_log_probs, structure_saliency
from ..methods.dllp import temperature_schedule
from ..posterior import GatePosterior
from .svgd import SVGD, SteinKernel, check_num_particles, fit_svgd
from .svi import FitHistory

__all__ = ["DLLP_METHODS", "DLLPFit", "fit_dllp", "particle_posterior", "particle_scores", "prune_dllp"]

#: The rules the ``"svgd"`` schedule decides with (they read a posterior of particles).
DLLP_METHODS = ("dllp",)


@dataclass
class DLLPFit:
    """The outcome of :func:`fit_dllp`.

    :param gated: the gated network with the discrete prior :math:`\\mathrm{Bernoulli}(\\pi)` over each gate.
    :param model: the relaxed Pyro model the particles were fitted to (its ``temperature`` is the final one).
    :param engine: the SVGD engine; ``engine.particles`` are the :math:`v` particles (``[K, D]``).
    :param posterior: the particles' hard sub-networks as draws of :math:`\\theta`, with validation scores.
    :param saliency: site -> per-structure saliency :math:`r_{s,c}`.
    :param history: per-epoch records (loss, temperature, kept share, validation agreement and KL of the
        particle ensemble with the dense network).
    """

    gated: GatedNet
    model: LosslessGateModel
    engine: SVGD
    posterior: GatePosterior
    saliency: dict[str, torch.Tensor]
    history: FitHistory


@torch.no_grad()
def particle_scores(
    gated: GatedNet, gates: dict[str, torch.Tensor], split: TensorSplit, batch_size: int = 512
) -> dict[str, torch.Tensor]:
    """Per-particle agreement with the dense network on ``split``: ``kl`` (mean KL(dense || particle), ``[K]``),
    ``agreement`` (share of equal argmax, ``[K]``), ``accuracy`` (``[K]``), and the particle ensemble's
    ``ensemble_kl`` / ``ensemble_agreement`` / ``ensemble_accuracy`` (scalars). ``gates`` are ``[K, C]`` per site.
    """
    was_training = gated.training
    gated.eval()
    k = next(iter(gates.values())).shape[0]
    sums = torch.zeros(3, k, dtype=torch.float64, device=split.x.device)
    ens = torch.zeros(3, dtype=torch.float64, device=split.x.device)
    try:
        for x, y in split.batches(max(1, batch_size // k)):
            teacher = torch.log_softmax(gated.net(x), dim=-1)
            log_p = torch.log_softmax(gated.forward_with_gates(x, gates), dim=-1)  # [K, B, C]
            dense_class = teacher.argmax(-1)
            sums[0] += kl_log_probs(teacher, log_p).sum(-1).double()
            sums[1] += (log_p.argmax(-1) == dense_class).sum(-1).double()
            sums[2] += (log_p.argmax(-1) == y).sum(-1).double()
            log_mix = torch.logsumexp(log_p, dim=0) - math.log(k)
            ens[0] += kl_log_probs(teacher, log_mix).sum().double()
            ens[1] += (log_mix.argmax(-1) == dense_class).sum().double()
            ens[2] += (log_mix.argmax(-1) == y).sum().double()
    finally:
        gated.train(was_training)
    n = len(split)
    sums, ens = (sums / n).clamp_min(0), (ens / n).clamp_min(0)
    return {
        "kl": sums[0],
        "agreement": sums[1],
        "accuracy": sums[2],
        "ensemble_kl": float(ens[0]),
        "ensemble_agreement": float(ens[1]),
        "ensemble_accuracy": float(ens[2]),
    }


def fit_dllp(
    net: nn.Module,
    train: TensorSplit,
    example_input: torch.Tensor,
    *,
    num_particles: int = 16,
    kernel: str | SteinKernel | None = "rbf",
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 0.1,
    temperature: float = 1.0,
    temperature_end: float = 0.1,
    prior_keep: float = 0.5,
    saliency_weight: float = 2.0,
    saliency: str = "fisher",
    lossless_weight: float = 1.0,
    label_weight: float = 0.0,
    calibration_size: int = 512,
    input_gates: Sequence[str] | None = None,
    val: TensorSplit | None = None,
    seed: int | None = 0,
    progress: bool = True,
) -> DLLPFit:
    r"""DLLP's fit (module docstring) of the trained ``net`` (not modified).

    :param num_particles: :math:`K \ge 2` SVGD particles (sub-networks).
    :param kernel: the SVGD kernel (``"rbf"``, ``"imq"`` or a :class:`~pyroprune.infer.svgd.SteinKernel`).
    :param epochs: passes over ``train``.
    :param lr: Adam learning rate of the particles.
    :param temperature: :math:`\lambda_0` of the relaxation.
    :param temperature_end: :math:`\lambda_1`.
    :param prior_keep: :math:`\rho`, see :func:`~pyroprune.lossless.keep_prior_logits`.
    :param saliency_weight: :math:`\gamma`.
    :param saliency: ``"fisher"`` or ``"exact"``, see :func:`~pyroprune.lossless.structure_saliency`.
    :param lossless_weight: :math:`\beta` of the distribution-lossless likelihood.
    :param label_weight: :math:`\alpha` of the label likelihood.
    :param calibration_size: training inputs the saliencies are measured on.
    :param input_gates: ``Linear`` layers whose input features get gate sites too (as in
        :class:`~pyroprune.gates.GatedNet`).
    :param val: validation split: per-epoch agreement of the particle ensemble with the dense network, and the
        particles' scores (``posterior.sample_scores``); without it the scores are computed on ``train``.
    :raises ValueError: one line naming the parameter, for a bad setting.
    """
    if isinstance(calibration_size, bool) or not isinstance(calibration_size, int) or calibration_size < 1:
        raise ValueError(f"'calibration_size' must be an integer >= 1, got {calibration_size!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"'epochs' must be an integer >= 0, got {epochs!r}")
    check_num_particles(num_particles)  # before the saliencies, which take a while on a big network
    steps = epochs * math.ceil(len(train) / batch_size)
    schedule = temperature_schedule(temperature, temperature_end, steps)
    if seed is not None:
        pyro.set_rng_seed(seed)
    gated = GatedNet(net, example_input, num_data=len(train), input_gates=input_gates)
    ref = next(gated.parameters())
    gated.to(ref.device)
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    calib = train.x[torch.randperm(len(train), generator=generator)[:calibration_size].to(train.x.device)]
    saliencies = structure_saliency(gated, calib, saliency)
    keep_logits = keep_prior_logits(saliencies, prior_keep, saliency_weight)
    keep_logits = {k: v.to(ref) for k, v in keep_logits.items()}
    gated.set_prior({name: dist.Bernoulli(logits=v) for name, v in keep_logits.items()})
    model = LosslessGateModel(
        gated, keep_logits, schedule[0] if schedule else temperature_end, lossless_weight, label_weight
    )
    engine = SVGD(model, kernel, num_particles=num_particles, max_plate_nesting=1, lr=lr)
    score_split = val if val is not None else train

    def particle_gates() -> dict[str, torch.Tensor]:
        return particle_posterior(engine, gated).samples

    def before_step(step: int, total: int) -> None:
        model.temperature = schedule[step]

    def on_epoch_end(epoch: int, record: dict) -> dict:
        gates = particle_gates()
        scores = particle_scores(gated, gates, score_split)
        kept = sum(float((g.mean(0) >= 0.5).sum()) for g in gates.values()) / sum(s.size for s in gated.sites)
        return {
            "temperature": model.temperature,
            "kept": kept,
            "val_ensemble_agreement": scores["ensemble_agreement"],
            "val_ensemble_kl": scores["ensemble_kl"],
        }

    history = fit_svgd(
        engine,
        train,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        before_step=before_step,
        on_epoch_end=on_epoch_end,
        progress=progress,
        description="SVGD dllp",
    )
    if engine.particles is None:  # epochs = 0: particles from the prior
        engine.setup(train.x[:2], train.y[:2], num_data=len(train))
    scores = particle_scores(gated, particle_gates(), score_split)
    posterior = particle_posterior(engine, gated, sample_scores=-scores["kl"])
    return DLLPFit(gated, model, engine, posterior, saliencies, history)


def particle_posterior(engine: SVGD, gated: GatedNet, sample_scores: torch.Tensor | None = None) -> GatePosterior:
    """The :class:`~pyroprune.posterior.GatePosterior` of DLLP particles: per site the hard sub-networks
    :math:`z^{(k)} = \\mathbb 1[v^{(k)} > 0]` as ``[K, C]`` draws of :math:`\\theta`."""
    named = engine.get_named_particles()
    k = engine.num_particles
    gates = hard_gates({s.name: named[s.name].reshape(k, s.size) for s in gated.sites})
    return GatePosterior(
        gated.sites,
        -math.inf,
        0.0,
        samples={name: v.detach() for name, v in gates.items()},
        guide_name=f"SVGD, {k} particles",
        sample_scores=sample_scores,
    )


def prune_dllp(net, data: DataSplits, config, progress: bool = True, checkpoint_dir=None, resume: bool = False):
    """:func:`~pyroprune.pipeline.prune_network` for ``schedule="svgd"``: :func:`fit_dllp`, decide, remove and
    fine-tune, as a :class:`~pyroprune.pipeline.PruneResult` whose ``guide`` is the SVGD engine."""
    from ..methods import decide
    from ..pipeline import PruneResult, remove_and_finetune

    if resume:
        raise ValueError("'resume' is not supported by the svgd schedule (the particles are not checkpointed)")
    fit = fit_dllp(
        net,
        data.train,
        data.train.x[:2],
        num_particles=config.num_particles,
        kernel=config.kernel,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.guide_lr,
        temperature=config.temperature,
        temperature_end=config.temperature_end,
        prior_keep=config.prior_keep,
        saliency_weight=config.saliency_weight,
        saliency=config.saliency,
        lossless_weight=config.lossless_weight,
        label_weight=config.label_weight,
        calibration_size=config.calibration_size,
        input_gates=list(config.input_gates),
        val=data.val,
        seed=config.seed,
        progress=progress,
    )
    plan = decide(fit.posterior, config.method, fit.gated, **config.method_params)
    pruned, finetune = remove_and_finetune(fit.gated, plan, data, config, progress=progress)
    return PruneResult(fit.gated, fit.engine, fit.posterior, plan, pruned, fit.history, finetune, config)
