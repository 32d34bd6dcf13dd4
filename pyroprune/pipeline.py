"""The whole flow in one call: gate -> fit -> decide -> remove -> fine-tune -> measure.

Two schedules (Wright, Igel & Selvan 2024, §4 and their public code):

* ``"post-training"``: fit the gate posterior (weights trained jointly) for ``epochs``, decide once.
* ``"continuous"``: after every epoch decide again and fix the pruned gates at zero for the rest of training
  (masks only ever shrink), decide once more at the end.
* ``"recursive"`` (RBP, :mod:`pyroprune.infer.recursive`): layer by layer from the input side, each layer's
  Gaussian dropout noise fitted under the Dirac-like prior with the earlier layers already pruned and fixed.
* ``"svgd"`` (DLLP, :mod:`pyroprune.infer.dllp`): SVGD particles over relaxed keep indicators of the trained
  network (weights fixed) under a distribution-lossless likelihood; the particles are sub-networks.
* ``"reinit"`` (SR-init, :mod:`pyroprune.infer.srinit`): each residual block re-initialised with several seeds,
  its accuracy drop measured on the validation split; insensitive blocks removed (depth, no gates).

``depth="srinit"`` runs SR-init's block removal first and any width method on the shallower network.

Then the pruned structures are physically removed, the kept gates' :math:`E[\\theta]` folded into the
weights, and the plain network fine-tuned (best validation checkpoint kept).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .data import DataSplits
from .gates import GatedNet
from .guides import TruncatedLogNormalGuide
from .infer import FitHistory, evaluate, fit_svi, train_plain
from .measure import count_macs, count_params, measure_latency
from .methods import RULES, decide
from .plan import PruningPlan, per_layer_string
from .posterior import GatePosterior, posterior_from_guide
from .surgery import remove

__all__ = [
    "PruneConfig",
    "PruneResult",
    "prune_network",
    "network_metrics",
    "predict_proba",
    "prune_and_measure",
    "measure_result",
    "remove_and_finetune",
    "finetune_pruned",
    "decide_again",
    "SCHEDULES",
]

SCHEDULES = ("post-training", "continuous", "recursive", "svgd", "reinit")


@dataclass
class PruneConfig:
    """Settings of :func:`prune_network` (every field has the default used by ``pyroprune demo``)."""

    method: str = "bmrs-n"
    method_params: dict = field(default_factory=dict)
    schedule: str = "continuous"
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    guide_lr: float = 0.1
    kl_weighting: str = "elbo"
    prior_low: float = -20.0
    prior_high: float = 0.0
    init_log_scale: float = -5.0
    finetune_epochs: int = 10
    finetune_lr: float = 1e-3
    seed: int = 0
    #: ``Linear`` layers (module paths, ``fnmatch`` patterns allowed) whose input features get gate sites too
    #: (SBP's input gates, e.g. ``["features.0"]`` for LeNet-500-300's pixels); see ``GatedNet(input_gates=...)``.
    input_gates: list[str] = field(default_factory=list)
    #: RBP (``schedule="recursive"``): the Dirac-like prior's width at the first and the last epoch of each layer's
    #: fit, how it moves in between (``"geometric"`` or ``"constant"``), and plain fine-tuning epochs after each
    #: layer's decision; see ``docs/methods/rbp.md``.
    prior_eps: float = 1.0
    prior_eps_end: float = 0.1
    eps_schedule: str = "geometric"
    finetune_epochs_per_layer: int = 0
    #: DLLP (``schedule="svgd"``): SVGD particles and kernel, the relaxation's temperature at the first and the
    #: last step, the discrete prior (keep probability rho of an average structure, weight gamma of the measured
    #: saliency, calibration inputs it is measured on) and the weights of the lossless and label likelihoods; see
    #: ``docs/methods/dllp.md``. The particles' learning rate is ``guide_lr``.
    num_particles: int = 16
    kernel: str = "rbf"
    temperature: float = 1.0
    temperature_end: float = 0.1
    prior_keep: float = 0.5
    saliency_weight: float = 2.0
    saliency: str = "fisher"
    calibration_size: int = 512
    lossless_weight: float = 1.0
    label_weight: float = 0.0
    #: SR-init (``method="srinit"``, ``schedule="reinit"``, or ``depth="srinit"`` before a width method): the
    #: residual blocks (module paths or patterns; empty: found by their ``shortcut``/``downsample``), the
    #: re-initialisations per block and their kind (``"kaiming"``, ``"default"``), and the bootstrap of the drops'
    #: posterior (``"bayesian"`` or ``"classical"``, number of draws); see ``docs/methods/srinit.md``. The depth
    #: stage of a combined run decides with ``depth_params`` (the srinit rule's ``tau``/``prob`` or a budget) and
    #: fine-tunes ``depth_finetune_epochs`` before the width method.
    blocks: list[str] = field(default_factory=list)
    reinit_seeds: int = 5
    reinit_init: str = "kaiming"
    bootstrap: str = "bayesian"
    bootstrap_draws: int = 2000
    depth: str = "none"
    depth_params: dict = field(default_factory=dict)
    depth_finetune_epochs: int = 0

    def validate(self) -> None:
        if not isinstance(self.input_gates, list | tuple) or not all(isinstance(g, str) for g in self.input_gates):
            raise ValueError(f"'input_gates' must be a list of module paths (strings), got {self.input_gates!r}")
        if self.method not in RULES:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(RULES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not self.prior_low < self.prior_high:
            raise ValueError(f"'prior_low' must be < 'prior_high' (got {self.prior_low}, {self.prior_high})")
        for name in ("epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"'{name}' must be >= 0")
        for name in ("batch_size",):
            if getattr(self, name) <= 0:
                raise ValueError(f"'{name}' must be > 0")
        for name in ("lr", "guide_lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"'{name}' must be > 0")
        self._validate_recursive()
        self._validate_svgd()
        self._validate_reinit()

    def _validate_reinit(self) -> None:
        from .blocks import BLOCK_INITS
        from .infer.srinit import DEPTH_METHODS, SRINIT_METHODS
        from .methods.srinit import check_srinit_params
        from .sensitivity import BOOTSTRAPS

        reinit = self.schedule == "reinit"
        if reinit and self.method not in SRINIT_METHODS:
            raise ValueError(f"schedule 'reinit' needs method 'srinit', got 'method' {self.method!r}")
        if not reinit and self.method in SRINIT_METHODS:
            raise ValueError(f"method {self.method!r} needs schedule 'reinit' (got 'schedule' {self.schedule!r})")
        if self.depth not in DEPTH_METHODS:
            raise ValueError(f"'depth' must be one of {', '.join(DEPTH_METHODS)}, got {self.depth!r}")
        if reinit and self.depth != "none":
            raise ValueError("'depth' adds SR-init before a width method; method 'srinit' is depth pruning already")
        if not isinstance(self.blocks, list | tuple) or not all(isinstance(b, str) for b in self.blocks):
            raise ValueError(f"'blocks' must be a list of module paths (strings), got {self.blocks!r}")
        if self.reinit_init not in BLOCK_INITS:
            raise ValueError(f"'reinit_init' must be one of {', '.join(BLOCK_INITS)}, got {self.reinit_init!r}")
        if self.bootstrap not in BOOTSTRAPS:
            raise ValueError(f"'bootstrap' must be one of {', '.join(BOOTSTRAPS)}, got {self.bootstrap!r}")
        for name in ("reinit_seeds", "bootstrap_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be >= 1, got {getattr(self, name)}")
        if self.depth_finetune_epochs < 0:
            raise ValueError(f"'depth_finetune_epochs' must be >= 0, got {self.depth_finetune_epochs}")
        if self.depth == "none" and (self.depth_params or self.depth_finetune_epochs):
            which = "depth_params" if self.depth_params else "depth_finetune_epochs"
            raise ValueError(f"'{which}' is set but 'depth' is 'none' (set 'depth' to 'srinit' for a depth stage)")
        if reinit:
            check_srinit_params(**self.method_params)
        elif self.depth == "srinit":
            try:
                check_srinit_params(**self.depth_params)
            except (TypeError, ValueError) as e:
                raise ValueError(f"'depth_params': {e}") from None

    def _validate_svgd(self) -> None:
        from .infer.dllp import DLLP_METHODS
        from .infer.svgd import check_num_particles, make_kernel
        from .methods.dllp import temperature_schedule

        svgd = self.schedule == "svgd"
        if svgd and self.method not in DLLP_METHODS:
            raise ValueError(
                f"schedule 'svgd' needs a particle method ({', '.join(DLLP_METHODS)}), got 'method' {self.method!r}"
            )
        if not svgd and self.method in DLLP_METHODS:
            raise ValueError(f"method {self.method!r} needs schedule 'svgd' (got 'schedule' {self.schedule!r})")
        if not svgd:
            return
        check_num_particles(self.num_particles)
        make_kernel(self.kernel)
        temperature_schedule(self.temperature, self.temperature_end, 1)
        if not 0.0 < self.prior_keep < 1.0:
            raise ValueError(f"'prior_keep' must be in (0, 1), got {self.prior_keep}")
        for name in ("saliency_weight", "lossless_weight", "label_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"'{name}' must be >= 0, got {getattr(self, name)}")
        if self.lossless_weight == 0 and self.label_weight == 0:
            raise ValueError("'lossless_weight' and 'label_weight' are both 0: the particles would ignore the data")
        from .lossless import SALIENCY_METHODS

        if self.saliency not in SALIENCY_METHODS:
            raise ValueError(f"'saliency' must be one of {', '.join(SALIENCY_METHODS)}, got {self.saliency!r}")
        if self.calibration_size < 1:
            raise ValueError(f"'calibration_size' must be >= 1, got {self.calibration_size}")

    def _validate_recursive(self) -> None:
        from .infer.recursive import RBP_METHODS
        from .methods.rbp import eps_schedule

        eps_schedule(self.prior_eps, self.prior_eps_end, 1, self.eps_schedule)  # widths and kind
        if self.finetune_epochs_per_layer < 0:
            raise ValueError(f"'finetune_epochs_per_layer' must be >= 0, got {self.finetune_epochs_per_layer}")
        recursive = self.schedule == "recursive"
        if recursive and self.method not in RBP_METHODS:
            raise ValueError(
                f"schedule 'recursive' needs an RBP method ({', '.join(RBP_METHODS)}), got 'method' {self.method!r}"
            )
        if not recursive and self.method in RBP_METHODS:
            raise ValueError(f"method {self.method!r} needs schedule 'recursive' (got 'schedule' {self.schedule!r})")
        if recursive and self.input_gates:
            raise ValueError("'input_gates' is not supported by the recursive schedule")


@dataclass
class PruneResult:
    """Everything :func:`prune_network` produced.

    SR-init alone (``schedule="reinit"``) fits no gates: ``gated``, ``guide`` and ``posterior`` are ``None`` and
    ``plan`` is the block plan. ``depth`` holds the depth stage (:class:`~pyroprune.infer.srinit.DepthStage`)
    of SR-init and of combined runs (``depth="srinit"``), whose ``plan`` is then the width plan on the
    shallower network.
    """

    gated: GatedNet | None
    guide: nn.Module | None
    posterior: GatePosterior | None
    plan: PruningPlan
    pruned: nn.Module
    history: FitHistory
    finetune_history: list[dict]
    config: PruneConfig
    depth: object | None = None

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "history": self.history.epochs,
            "finetune": self.finetune_history,
        }


def prune_network(
    net: nn.Module,
    data: DataSplits,
    config: PruneConfig | None = None,
    progress: bool = True,
    checkpoint_dir=None,
    resume: bool = False,
    fingerprint: dict | None = None,
) -> PruneResult:
    """Prune ``net`` (ideally trained) on ``data`` (already on the device) with ``config``.

    With ``checkpoint_dir`` the SVI stage writes a checkpoint after every epoch and, with ``resume``, continues
    from it (see :func:`~pyroprune.infer.fit_svi`); deciding, removal and fine-tuning are deterministic given the
    seed, so a resumed run ends with the same plan as an uninterrupted one.

    The input network is not modified.
    """
    from .distributions import LogUniform

    config = config or PruneConfig()
    config.validate()
    if config.schedule == "reinit":  # SR-init: depth only (pyroprune.infer.srinit)
        from .infer.srinit import prune_srinit

        return prune_srinit(net, data, config, progress, checkpoint_dir=checkpoint_dir, resume=resume)
    if config.depth == "srinit":  # SR-init's blocks first, then the width method on the shallower network
        from .infer.srinit import with_depth_stage

        if resume:
            raise ValueError("'resume' is not supported with depth='srinit' (the depth stage is not checkpointed)")
        stage, shallow = with_depth_stage(net, data, config, progress)
        result = prune_network(
            shallow,
            data,
            replace(config, depth="none", depth_params={}, depth_finetune_epochs=0),
            progress,
            checkpoint_dir=checkpoint_dir,
            fingerprint=fingerprint,
        )
        result.depth = stage
        result.config = config
        return result
    if config.schedule == "recursive":  # RBP: layer by layer (pyroprune.infer.recursive)
        from .infer.recursive import prune_recursive

        return prune_recursive(net, data, config, progress, checkpoint_dir=checkpoint_dir, resume=resume)
    if config.schedule == "svgd":  # DLLP: SVGD particles over keep indicators (pyroprune.infer.dllp)
        from .infer.dllp import prune_dllp

        return prune_dllp(net, data, config, progress, checkpoint_dir=checkpoint_dir, resume=resume)
    example = data.train.x[:2]
    gated = GatedNet(
        net,
        example,
        prior=LogUniform(config.prior_low, config.prior_high),
        num_data=len(data.train),
        input_gates=list(config.input_gates),
    )
    device = example.device
    dtype = next(net.parameters()).dtype
    guide = TruncatedLogNormalGuide(
        gated, config.prior_low, config.prior_high, init_log_scale=config.init_log_scale
    ).to(device=device, dtype=dtype)
    gated.to(device)

    def current_plan(posterior: GatePosterior) -> PruningPlan:
        plan = decide(posterior, config.method, gated, **config.method_params)
        return plan.with_masks(gated.masks) if gated.masks else plan

    def on_epoch_end(epoch: int, record: dict) -> dict:
        plan = current_plan(posterior_from_guide(guide, gated))
        if config.schedule == "continuous":
            gated.set_masks(plan.masks())
        kept = sum(plan.kept) / sum(plan.total)
        val = _gated_accuracy(gated, guide, data, plan)
        return {"kept": kept, "val_acc": val}

    history = fit_svi(
        gated,
        guide,
        data.train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        guide_lr=config.guide_lr,
        kl_weighting=config.kl_weighting,
        seed=config.seed,
        on_epoch_end=on_epoch_end,
        progress=progress,
        description=f"SVI {config.method}",
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        fingerprint=fingerprint,
    )
    posterior = posterior_from_guide(guide, gated)
    plan = current_plan(posterior)
    pruned, finetune = remove_and_finetune(gated, plan, data, config, progress=progress)
    return PruneResult(gated, guide, posterior, plan, pruned, history, finetune, config)


def remove_and_finetune(
    gated: GatedNet | nn.Module, plan: PruningPlan, data: DataSplits, config: PruneConfig, progress: bool = True
) -> tuple[nn.Module, list[dict]]:
    """Physically remove what ``plan`` prunes (kept gates' :math:`E[\\theta]` folded in), then fine-tune the
    plain network for ``config.finetune_epochs`` (best validation checkpoint kept).

    :returns: the pruned network and the fine-tuning history.
    """
    pruned = remove(gated, plan, data.train.x[:2])
    return pruned, finetune_pruned(pruned, data, config, progress=progress)


def finetune_pruned(pruned: nn.Module, data: DataSplits, config: PruneConfig, progress: bool = True) -> list[dict]:
    """Train the pruned plain network for ``config.finetune_epochs`` (in place; best validation epoch kept).

    :returns: the per-epoch records.
    """
    return train_plain(
        pruned,
        data.train,
        epochs=config.finetune_epochs,
        batch_size=config.batch_size,
        lr=config.finetune_lr,
        val=data.val,
        seed=config.seed,
        progress=progress,
        description="fine-tune",
    )


def decide_again(
    result: PruneResult,
    data: DataSplits,
    method: str,
    method_params: dict | None = None,
    progress: bool = True,
    net: nn.Module | None = None,
) -> PruneResult:
    """Another rule applied to the posterior ``result`` already holds: decide, remove, fine-tune.

    Valid for the post-training schedule, where the fit does not depend on the rule, so one SVI fit serves
    every rule (as in the comparisons of Wright et al. 2024), for the svgd schedule (DLLP's particles do not
    depend on the rule either; e.g. ``dllp`` with ``select="best"``) and for SR-init's reinit schedule (the
    drops do not depend on the rule; e.g. ``srinit`` with another ``tau`` or ``prob``), which removes the blocks
    from ``net``, the network that was scored (a result holds only the pruned one). Under the continuous
    schedule the masks applied during training came from ``result``'s own rule, so this raises.
    """
    if result.config.schedule not in ("post-training", "svgd", "reinit"):
        raise ValueError(
            f"decide_again needs a post-training fit (schedule {result.config.schedule!r} ties the fit to its rule)"
        )
    config = replace(result.config, method=method, method_params=dict(method_params or {}))
    config.validate()
    if config.schedule == "reinit":  # SR-init: the same drops, another decision, removed from the scored network
        from .infer.srinit import DepthStage

        if net is None:
            raise ValueError("decide_again of an SR-init result needs the network that was scored: pass 'net'")
        plan = decide(result.depth.sensitivity, method, None, **config.method_params)
        pruned, finetune = remove_and_finetune(net, plan, data, config, progress=progress)
        depth = DepthStage(result.depth.sensitivity, plan)
        return PruneResult(None, None, None, plan, pruned, result.history, finetune, config, depth)
    plan = decide(result.posterior, method, result.gated, **config.method_params)
    pruned, finetune = remove_and_finetune(result.gated, plan, data, config, progress=progress)
    return PruneResult(
        result.gated, result.guide, result.posterior, plan, pruned, result.history, finetune, config, result.depth
    )


@torch.no_grad()
def _gated_accuracy(gated: GatedNet, guide: TruncatedLogNormalGuide, data: DataSplits, plan: PruningPlan) -> float:
    """Validation accuracy of the gated network with gates at :math:`E[\\theta]` and the plan's mask."""
    was = gated.training
    gated.eval()
    ref = data.val.x
    gates = {
        sp.site.name: torch.tensor(sp.fold, dtype=ref.dtype, device=ref.device) * sp.keep_tensor(ref.device)
        for sp in plan.sites
    }
    acc = evaluate(lambda x: gated.forward_with_gates(x, gates), data.val)["accuracy"]
    gated.train(was)
    return acc


def network_metrics(net: nn.Module, data: DataSplits, kept: str, latency_batch: int = 256, repeats: int = 50) -> dict:
    """Test-split figures of a plain network: accuracy (fraction), NLL, Brier score and ECE (15 bins) of its
    softmax, parameters, MACs per example, the kept-structures string and the median latency (ms) of one forward
    pass over ``latency_batch`` test examples."""
    from .diagnostics.metrics import brier, ece, nll

    x = data.test.x[:latency_batch]
    probs = predict_proba(net, data.test)
    labels = data.test.y
    return {
        "accuracy": evaluate(net, data.test)["accuracy"],
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels),
        "params": count_params(net),
        "macs": count_macs(net, x),
        "kept": kept,
        "latency_ms": measure_latency(net, x, repeats=repeats),
    }


def prune_and_measure(
    dense: nn.Module,
    data: DataSplits,
    config: PruneConfig,
    *,
    model: str,
    progress: bool = True,
    dense_trained: bool = True,
    **prune_kwargs,
) -> tuple[PruneResult, dict]:
    """Prune ``dense`` with ``config`` (:func:`prune_network`) and measure both networks on the test split.

    :param model: the architecture's name, recorded in the metrics.
    :param dense_trained: ``False`` when ``dense`` was never trained (gates trained from scratch): its accuracy,
        NLL, Brier and ECE are then ``None`` -- only its size and speed are comparable.
    :param prune_kwargs: passed to :func:`prune_network` (e.g. ``checkpoint_dir``, ``resume``, ``fingerprint``).
    :returns: the result and a metrics dict with ``dense`` and ``pruned`` objects (see :func:`network_metrics`),
        the pruned test error in percent and the reduction ratios. The kept-structures strings start with the
        input width for flat inputs.
    """
    result = prune_network(dense, data, config, progress=progress, **prune_kwargs)
    return result, measure_result(result, dense, data, model=model, dense_trained=dense_trained)


def measure_result(
    result: PruneResult, dense: nn.Module, data: DataSplits, *, model: str, dense_trained: bool = True
) -> dict:
    """The metrics dict of :func:`prune_and_measure` for a finished ``result`` (test split)."""
    config = result.config
    width = data.input_shape[0] if len(data.input_shape) == 1 else None
    dense_kept = result.plan.total_string(width)
    if result.depth is not None and result.gated is not None:
        # depth then width: the width plan was made on the shallower network; describe the dense one's channels
        from .gates import find_gate_sites

        sites = find_gate_sites(dense, data.train.x[:2], input_gates=list(config.input_gates) or None)
        dense_kept = per_layer_string(sites, [s.size for s in sites], width)
    dense_m = network_metrics(dense, data, dense_kept)
    pruned_m = network_metrics(result.pruned, data, result.plan.kept_string(width))
    if not dense_trained:
        dense_m.update({k: None for k in ("accuracy", "nll", "brier", "ece")})
    metrics = {
        "dataset": data.name,
        "model": model,
        "method": config.method,
        "method_params": dict(config.method_params),
        "seed": config.seed,
        "dense": dense_m,
        "pruned": pruned_m,
        "error_pct": 100.0 * (1.0 - pruned_m["accuracy"]),
        "params_reduction": dense_m["params"] / pruned_m["params"],
        "macs_reduction": dense_m["macs"] / pruned_m["macs"],
        "latency_speedup": dense_m["latency_ms"] / pruned_m["latency_ms"],
    }
    if result.depth is not None:  # SR-init: which blocks went, per stage
        plan = result.depth.plan
        metrics["depth"] = {
            "removed_blocks": result.depth.removed,
            "blocks_kept": plan.kept_string(),
            "blocks_total": plan.total_string(),
            "params": dict(plan.params, fixed_blocks=len(plan.params.get("fixed_blocks", {}))),
        }
    return metrics


@torch.no_grad()
def predict_proba(net: nn.Module, split, batch_size: int = 1024) -> torch.Tensor:
    """Softmax class probabilities ``[N, K]`` of a plain network on a split (eval mode, restored after)."""
    was = net.training
    net.eval()
    probs = torch.cat([torch.softmax(net(xb), dim=-1) for xb, _ in split.batches(batch_size)])
    net.train(was)
    return probs
