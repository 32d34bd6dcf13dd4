"""The whole flow in one call: gate -> fit -> decide -> remove -> fine-tune -> measure.

Two schedules (Wright, Igel & Selvan 2024, §4 and their public code):

* ``"post-training"``: fit the gate posterior (weights trained jointly) for ``epochs``, decide once.
* ``"continuous"``: after every epoch decide again and fix the pruned gates at zero for the rest of training
  (masks only ever shrink), decide once more at the end.

Then the pruned structures are physically removed, the kept gates' :math:`E[\\theta]` folded into the
weights, and the plain network fine-tuned (best validation checkpoint kept).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .data import DataSplits
from .gates import GatedNet
from .guides import TruncatedLogNormalGuide
from .infer import FitHistory, evaluate, fit_svi, train_plain
from .measure import count_macs, count_params, measure_latency
from .methods import RULES, decide
from .plan import PruningPlan
from .posterior import GatePosterior, posterior_from_guide
from .surgery import remove

__all__ = [
    "PruneConfig",
    "PruneResult",
    "prune_network",
    "network_metrics",
    "predict_proba",
    "prune_and_measure",
    "SCHEDULES",
]

SCHEDULES = ("post-training", "continuous")


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

    def validate(self) -> None:
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


@dataclass
class PruneResult:
    """Everything :func:`prune_network` produced."""

    gated: GatedNet
    guide: nn.Module
    posterior: GatePosterior
    plan: PruningPlan
    pruned: nn.Module
    history: FitHistory
    finetune_history: list[dict]
    config: PruneConfig

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
    example = data.train.x[:2]
    gated = GatedNet(net, example, prior=LogUniform(config.prior_low, config.prior_high), num_data=len(data.train))
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
    pruned = remove(gated, plan, example)
    finetune = train_plain(
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
    return PruneResult(gated, guide, posterior, plan, pruned, history, finetune, config)


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
    width = data.input_shape[0] if len(data.input_shape) == 1 else None
    dense_kept = "-".join(([str(width)] if width else []) + [str(s.size) for s in result.gated.sites])
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
    return result, metrics


@torch.no_grad()
def predict_proba(net: nn.Module, split, batch_size: int = 1024) -> torch.Tensor:
    """Softmax class probabilities ``[N, K]`` of a plain network on a split (eval mode, restored after)."""
    was = net.training
    net.eval()
    probs = torch.cat([torch.softmax(net(xb), dim=-1) for xb, _ in split.batches(batch_size)])
    net.train(was)
    return probs
