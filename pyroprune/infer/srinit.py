"""SR-init in the pipeline: score the residual blocks, decide, remove, fine-tune (``schedule="reinit"``), or the
same as a depth stage before a width method (``PruneConfig(depth="srinit")``).

The scoring is :func:`~pyroprune.sensitivity.block_sensitivity` on the validation split, the rule
:func:`~pyroprune.methods.srinit.srinit`, the removal :func:`~pyroprune.surgery.remove` (block sites) and the
fine-tuning :func:`~pyroprune.pipeline.finetune_pruned`, the same loop every method uses. The whole method is
described in ``docs/methods/srinit.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

from ..data import DataSplits
from ..plan import PruningPlan
from ..sensitivity import BlockSensitivity, block_sensitivity

__all__ = ["DepthStage", "depth_stage", "prune_srinit", "SRINIT_METHODS", "DEPTH_METHODS"]

#: Methods run by the ``"reinit"`` schedule.
SRINIT_METHODS = ("srinit",)
#: Values of ``PruneConfig.depth``: no depth stage, or SR-init before the width method.
DEPTH_METHODS = ("none", "srinit")

#: Validation examples per forward pass while scoring (times ``reinit_seeds``, vectorised).
SCORING_BATCH = 256


@dataclass
class DepthStage:
    """The depth (block) decision of a run: the measured drops, the block plan and, in a combined run, the
    fine-tuning that followed the block removal before the width method started.

    :param sensitivity: the re-initialisation drops and their posterior.
    :param plan: the block plan (sites of kind ``"block"``).
    :param finetune_history: per-epoch records of that fine-tuning (empty without one).
    """

    sensitivity: BlockSensitivity
    plan: PruningPlan
    finetune_history: list[dict] = field(default_factory=list)

    @property
    def removed(self) -> list[str]:
        """Paths of the removed blocks."""
        return [p for sp in self.plan.sites for p, k in zip(sp.site.producers, sp.keep, strict=True) if not k]


def depth_stage(
    net: nn.Module, data: DataSplits, config, params: dict, progress: bool = True
) -> tuple[DepthStage, nn.Module]:
    """Score ``net``'s blocks on ``data.val`` with ``config``'s settings (``blocks``, ``reinit_seeds``,
    ``reinit_init``, ``bootstrap``, ``bootstrap_draws``, ``seed``), decide with the srinit rule's ``params`` and
    remove the blocks.

    :returns: the stage (without fine-tuning) and the shallower plain network (a copy; ``net`` is untouched).
    :raises ValueError: if the validation split is empty (SR-init never scores on the test split).
    """
    from ..methods.srinit import srinit
    from ..surgery import remove

    if len(data.val) == 0:
        raise ValueError("SR-init scores the blocks on the validation split, which is empty (set 'val_size')")
    sensitivity = block_sensitivity(
        net,
        data.val,
        blocks=list(config.blocks) or None,
        num_seeds=config.reinit_seeds,
        init=config.reinit_init,
        seed=config.seed,
        batch_size=SCORING_BATCH,
        num_draws=config.bootstrap_draws,
        bootstrap=config.bootstrap,
    )
    plan = srinit(sensitivity, None, **params)
    shallow = remove(net, plan, data.train.x[:2])
    stage = DepthStage(sensitivity, plan)
    if progress:
        print(f"SR-init: removed {len(stage.removed)} of {len(sensitivity.blocks)} removable blocks: {stage.removed}")
    return stage, shallow


def prune_srinit(net: nn.Module, data: DataSplits, config, progress: bool = True, checkpoint_dir=None, resume=False):
    """:func:`~pyroprune.pipeline.prune_network` for ``schedule="reinit"``: score, decide (``method_params``),
    remove, fine-tune. The result has no gated network, guide or gate posterior (``None``); its ``depth`` holds
    the sensitivity and ``plan`` is the block plan."""
    from ..infer import FitHistory
    from ..pipeline import PruneResult, finetune_pruned

    if resume:
        raise ValueError("'resume' is not supported by the reinit schedule (the scoring is not checkpointed)")
    stage, shallow = depth_stage(net, data, config, dict(config.method_params), progress)
    finetune = finetune_pruned(shallow, data, config, progress=progress)
    history = FitHistory([_scoring_record(stage)])
    return PruneResult(None, None, None, stage.plan, shallow, history, finetune, config, depth=stage)


def with_depth_stage(net: nn.Module, data: DataSplits, config, progress: bool = True) -> tuple[DepthStage, nn.Module]:
    """The depth stage of a combined run (``depth="srinit"``): :func:`depth_stage` with ``depth_params``, then
    ``depth_finetune_epochs`` of fine-tuning of the shallower network before the width method starts."""
    from ..pipeline import finetune_pruned

    stage, shallow = depth_stage(net, data, config, dict(config.depth_params), progress)
    if config.depth_finetune_epochs > 0:
        stage.finetune_history = finetune_pruned(
            shallow, data, replace(config, finetune_epochs=config.depth_finetune_epochs), progress=progress
        )
    return stage, shallow


def _scoring_record(stage: DepthStage) -> dict:
    s = stage.sensitivity
    return {
        "epoch": 0,
        "loss": None,
        "val_acc": s.baseline_accuracy,
        "blocks": len(s.blocks),
        "removed": len(stage.removed),
    }
