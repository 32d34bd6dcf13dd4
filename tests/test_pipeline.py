"""The whole chain: schedules, removal equals the gated network, metrics."""

import pytest
import torch

from pyroprune.infer import evaluate
from pyroprune.models import BMRSMLP
from pyroprune.pipeline import PruneConfig, network_metrics, prune_network


def small_net():
    torch.manual_seed(0)
    return BMRSMLP(in_features=64, hidden=12, depth=2)


def test_continuous_schedule_masks_only_shrink(digits):
    cfg = PruneConfig(method="snr", epochs=6, guide_lr=0.05, finetune_epochs=0, schedule="continuous")
    result = prune_network(small_net(), digits, cfg, progress=False)
    kept = [r["kept"] for r in result.history.epochs]
    assert all(b <= a for a, b in zip(kept, kept[1:], strict=False))
    # the final plan respects every mask applied during training
    for sp in result.plan.sites:
        mask = result.gated.masks.get(sp.site.name)
        if mask is not None:
            assert not any(k and not m for k, m in zip(sp.keep, mask.tolist(), strict=True))


def test_post_training_removal_equals_gated_network_without_finetuning(digits):
    net = small_net()
    cfg = PruneConfig(method="bmrs-u4", epochs=3, finetune_epochs=0, schedule="post-training")
    result = prune_network(net, digits, cfg, progress=False)
    x = digits.test.x
    gates = {sp.site.name: torch.tensor(sp.fold, dtype=x.dtype) * sp.keep_tensor() for sp in result.plan.sites}
    result.gated.eval()
    torch.testing.assert_close(result.pruned(x), result.gated.forward_with_gates(x, gates), rtol=1e-4, atol=1e-5)
    # the input network was not touched
    torch.testing.assert_close(net(x), small_net()(x))


def test_network_metrics_fields(digits):
    net = small_net()
    m = network_metrics(net, digits, "64-12-12", repeats=3)
    assert set(m) == {"accuracy", "nll", "brier", "ece", "params", "macs", "kept", "latency_ms"}
    assert 0.0 <= m["ece"] <= 1.0 and m["nll"] > 0 and 0.0 <= m["brier"] <= 2.0
    assert m["params"] == sum(p.numel() for p in net.parameters())
    assert m["macs"] == (64 * 12 + 12) + (12 * 12 + 12) + (12 * 10 + 10)  # Torch-Pruning counts bias additions
    assert m["accuracy"] == evaluate(net, digits.test)["accuracy"]
    assert m["latency_ms"] > 0


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("method", "nope", "unknown method"),
        ("schedule", "weekly", "unknown schedule"),
        ("prior_low", 1.0, "prior_low"),
        ("epochs", -1, "epochs"),
        ("batch_size", 0, "batch_size"),
        ("guide_lr", 0.0, "guide_lr"),
    ],
)
def test_config_validation(field, value, match):
    cfg = PruneConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        cfg.validate()
