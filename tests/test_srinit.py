"""SR-init: residual block discovery, re-initialisation scoring with uncertainty, the rule, removal, pipeline."""

from __future__ import annotations

import copy
import dataclasses

import pyro
import pytest
import torch
import torchvision
from torch import nn

from pyroprune.blocks import REMOVED_BLOCKS_ATTR, find_residual_blocks, reinitialise, remove_blocks, removed_blocks
from pyroprune.data import TensorSplit, load_digits
from pyroprune.gates import find_gate_sites
from pyroprune.infer import evaluate, train_plain
from pyroprune.measure import count_macs, count_params
from pyroprune.methods import decide
from pyroprune.methods.srinit import check_srinit_params, srinit
from pyroprune.models import BasicBlock, build_model, resnet20
from pyroprune.pipeline import PruneConfig, decide_again, measure_result, prune_network
from pyroprune.plan import PruningPlan
from pyroprune.sensitivity import BlockSensitivity, _bootstrap_means, block_sensitivity
from pyroprune.serialization import load_pruned, save_pruned
from pyroprune.surgery import remove

# -- fixtures ----------------------------------------------------------------------------------------------------


class ZeroBranchBlock(nn.Module):
    """A residual block whose branch is multiplied by zero: :math:`\\mathrm{ReLU}(0 \\cdot F(x) + x)`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()

    def forward(self, x):
        return torch.relu(0.0 * self.bn(self.conv(x)) + self.shortcut(x))


class PaddingShortcut(nn.Module):
    """Option-A style block: the shortcut pads channels and subsamples."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.shortcut = lambda x: nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, cout - cin))

    def forward(self, x):
        return torch.relu(self.conv(x) + self.shortcut(x))


class Holder(nn.Module):
    """A block held as an attribute (not in a Sequential), a zero-branch block and a projection block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.stage = nn.Sequential(BasicBlock(8, 8), ZeroBranchBlock(8), BasicBlock(8, 16, stride=2))
        self.extra = BasicBlock(16, 16)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        return self.head(self.extra(self.stage(self.stem(x))))


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0, image=True)


@pytest.fixture(scope="module")
def trained(digits):
    pyro.set_rng_seed(0)
    net = resnet20(num_classes=10, in_channels=1)
    train_plain(net, digits.train, epochs=6, batch_size=64, lr=3e-3, val=digits.val, seed=0, progress=False)
    return net.eval()


@pytest.fixture(scope="module")
def holder(digits):
    pyro.set_rng_seed(0)
    net = Holder()
    train_plain(net, digits.train, epochs=4, batch_size=64, lr=3e-3, seed=0, progress=False)
    return net.eval()


@pytest.fixture(scope="module")
def sensitivity(trained, digits):
    return block_sensitivity(trained, digits.val, num_seeds=3, num_draws=400, seed=0)


# -- discovery ---------------------------------------------------------------------------------------------------


def test_cifar_resnet_blocks_identity_and_projection():
    blocks = find_residual_blocks(resnet20(), torch.randn(2, 3, 16, 16))
    assert [b.path for b in blocks] == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    fixed = {b.path: b.reason for b in blocks if not b.removable}
    assert set(fixed) == {"layer2.0", "layer3.0"}
    for reason in fixed.values():
        assert "projection shortcut 'shortcut'" in reason and "changes the shape" in reason
    one = next(b for b in blocks if b.path == "layer1.1")
    assert one.params == count_params(resnet20().layer1[1]) and one.in_shape == one.out_shape == (16, 16, 16)
    assert one.macs == count_macs(resnet20().layer1[1], torch.randn(1, 16, 16, 16))


@pytest.mark.parametrize(
    "factory, total, fixed",
    [
        (torchvision.models.resnet18, 8, {"layer2.0", "layer3.0", "layer4.0"}),
        # a bottleneck's first block widens 64 -> 256 channels even in layer1
        (torchvision.models.resnet50, 16, {"layer1.0", "layer2.0", "layer3.0", "layer4.0"}),
    ],
    ids=["basic", "bottleneck"],
)
def test_torchvision_resnets(factory, total, fixed):
    net = factory(weights=None)
    blocks = find_residual_blocks(net, torch.randn(1, 3, 64, 64))
    assert len(blocks) == total and {b.path for b in blocks if not b.removable} == fixed
    assert all("'downsample'" in b.reason for b in blocks if not b.removable)


def test_padding_shortcut_and_explicit_blocks():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), PaddingShortcut(4, 8), nn.Conv2d(8, 8, 3, padding=1))
    (block,) = find_residual_blocks(net, torch.randn(1, 1, 8, 8))
    assert not block.removable and "padding shortcut" in block.reason
    # a block without a shortcut attribute, named explicitly: removable iff the shape is kept
    explicit = find_residual_blocks(net, torch.randn(1, 1, 8, 8), blocks=["2"])
    assert explicit[0].removable and explicit[0].path == "2"
    with pytest.raises(ValueError, match="no module of the network matches 'nope'"):
        find_residual_blocks(net, torch.randn(1, 1, 8, 8), blocks=["nope"])
    with pytest.raises(ValueError, match="no residual block found"):
        find_residual_blocks(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), torch.randn(1, 64))


# -- removal -----------------------------------------------------------------------------------------------------


def test_identity_block_removal_exact_param_count():
    net = resnet20().eval()
    gone = ["layer1.1", "layer3.2"]
    expected = count_params(net) - count_params(net.layer1[1]) - count_params(net.layer3[2])
    small = remove_blocks(net, gone)
    assert count_params(small) == expected
    assert list(small.layer1._modules) == ["0", "2"] and list(small.layer3._modules) == ["0", "1"]
    assert removed_blocks(small) == gone and not hasattr(net, REMOVED_BLOCKS_ATTR)  # the input is untouched
    assert small(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert count_params(net) == expected + 4_672 + 73_984  # the original keeps every block


@pytest.mark.parametrize("factory", [torchvision.models.resnet18, torchvision.models.resnet50])
def test_torchvision_removal_runs_with_exact_count(factory):
    net = factory(weights=None).eval()
    blocks = [b for b in find_residual_blocks(net, torch.randn(1, 3, 64, 64)) if b.removable]
    gone = [blocks[0].path, blocks[-1].path]
    small = remove_blocks(net, gone)
    assert count_params(small) == count_params(net) - blocks[0].params - blocks[-1].params
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_attribute_block_becomes_identity(holder):
    small = remove_blocks(holder, ["extra"])
    assert isinstance(small.extra, nn.Identity)
    assert count_params(small) == count_params(holder) - count_params(holder.extra)


def test_zero_branch_block_removal_is_exact(holder, digits):
    small = remove_blocks(holder, ["stage.1"])
    x = digits.val.x[:64]
    with torch.no_grad():
        torch.testing.assert_close(small(x), holder(x))


def test_serialisation_records_removed_blocks(tmp_path, digits):
    net = build_model("small-resnet", in_channels=1, stem_stride=1).eval()
    small = remove_blocks(net, ["layer1.0", "layer2.2"])
    save_pruned(small, tmp_path / "m", arch={"name": "small-resnet", "kwargs": {"in_channels": 1, "stem_stride": 1}})
    back = load_pruned(tmp_path / "m")
    x = digits.val.x[:8]
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x))
    assert removed_blocks(back) == ["layer1.0", "layer2.2"]


# -- re-initialisation -------------------------------------------------------------------------------------------


def test_reinitialise_is_seeded_fresh_and_leaves_the_block():
    block = BasicBlock(8, 8)
    with torch.no_grad():
        block.bn1.running_mean.fill_(3.0)
    before = copy.deepcopy(block.state_dict())
    a = reinitialise(block, torch.Generator().manual_seed(1))
    b = reinitialise(block, torch.Generator().manual_seed(1))
    c = reinitialise(block, torch.Generator().manual_seed(2))
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k])  # not modified
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert torch.all(a["bn1.running_mean"] == 0) and torch.all(a["bn1.running_var"] == 1)
    # Kaiming fan-out: var = 2 / (out_channels * 9)
    w = reinitialise(nn.Sequential(nn.Conv2d(64, 256, 3)), torch.Generator().manual_seed(0))["0.weight"]
    assert w.var().item() == pytest.approx(2 / (256 * 9), rel=0.05)
    d = reinitialise(nn.Sequential(nn.Conv2d(64, 256, 3)), torch.Generator().manual_seed(0), "default")["0.weight"]
    assert d.abs().max() <= 1 / (64 * 9) ** 0.5


def test_reinitialise_refuses_unknown_parameters():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.alpha = nn.Parameter(torch.ones(3))

    with pytest.raises(ValueError, match="cannot re-initialise parameter 'alpha' of a Scaled"):
        reinitialise(nn.Sequential(Scaled()), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="unknown 'init' 'xavier'"):
        reinitialise(nn.Sequential(), torch.Generator(), "xavier")


# -- scoring -----------------------------------------------------------------------------------------------------


def test_zero_branch_block_has_zero_drop_and_is_removed(holder, digits):
    s = block_sensitivity(holder, digits.val, num_seeds=3, num_draws=200)
    i = s.index("stage.1")
    assert torch.all(s.drops[i] == 0) and torch.all(s.draws[i] == 0)
    assert s.prob_below(0.0)[i] == 1.0
    assert {b.path for b in s.fixed} == {"stage.2"}
    plan = srinit(s, tau=0.1, prob=0.95)
    pruned = remove(holder, plan, digits.val.x[:2])
    assert "1" not in pruned.stage._modules and "2" in pruned.stage._modules  # the projection block stays
    with torch.no_grad():
        torch.testing.assert_close(pruned(digits.val.x), holder(digits.val.x))


def test_projection_block_never_removed(holder, digits):
    s = block_sensitivity(holder, digits.val, num_seeds=2, num_draws=100)
    plan = srinit(s, tau=1e9, prob=0.5)  # every candidate goes
    assert all(not k for sp in plan.sites for k in sp.keep)
    assert "stage.2" in plan.params["fixed_blocks"] and "changes the shape" in plan.params["fixed_blocks"]["stage.2"]
    assert all("stage.2" not in sp.site.producers for sp in plan.sites)
    pruned = remove(holder, plan, digits.val.x[:2])
    assert list(pruned.stage._modules) == ["2"] and isinstance(pruned.extra, nn.Identity)
    with pytest.raises(ValueError, match="out of reach"):
        srinit(s, params_reduction=0.99)


def test_scoring_reproducible_under_seed(trained, digits, sensitivity):
    again = block_sensitivity(trained, digits.val, num_seeds=3, num_draws=400, seed=0)
    assert torch.equal(again.drops, sensitivity.drops) and torch.equal(again.draws, sensitivity.draws)
    other = block_sensitivity(trained, digits.val, num_seeds=3, num_draws=400, seed=1)
    assert not torch.equal(other.drops, sensitivity.drops)
    # a block's re-initialisations do not depend on which other blocks are scored
    alone = block_sensitivity(trained, digits.val, blocks=["layer3.2"], num_seeds=3, num_draws=10, seed=0)
    torch.testing.assert_close(alone.drops[0], sensitivity.drops[sensitivity.index("layer3.2")])


def test_scoring_leaves_the_network_and_matches_the_loop(trained, digits, sensitivity, monkeypatch):
    state = copy.deepcopy(trained.state_dict())
    trained.train()

    def no_disk(*a, **k):
        raise AssertionError("scoring must not read from disk")

    monkeypatch.setattr(torch, "load", no_disk)
    looped = block_sensitivity(trained, digits.val, num_seeds=3, num_draws=400, seed=0, vectorize=False)
    assert trained.training  # mode restored
    trained.eval()
    assert all(torch.equal(v, state[k]) for k, v in trained.state_dict().items())
    torch.testing.assert_close(looped.drops, sensitivity.drops)
    # the drops are accuracy differences on the validation split, in percentage points
    base = evaluate(trained, digits.val)["accuracy"]
    assert sensitivity.baseline_accuracy == pytest.approx(base)
    counts = sensitivity.drops * len(digits.val) / 100  # whole examples
    torch.testing.assert_close(counts, counts.round(), atol=1e-3, rtol=0)


def test_torchvision_scoring_vectorised_equals_loop():
    # torchvision's blocks use in-place ReLU and `out += identity`: both must survive vmap over seeds
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        split = TensorSplit(x, net(x).argmax(-1))
    a = block_sensitivity(net, split, num_seeds=2, num_draws=20)
    b = block_sensitivity(net, split, num_seeds=2, num_draws=20, vectorize=False)
    assert a.paths == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert torch.equal(a.drops, b.drops) and a.baseline_accuracy == 1.0


def test_sensitivity_summaries(sensitivity):
    mean, sd = sensitivity.mean(), sensitivity.std()
    lo, hi = sensitivity.interval(0.95)
    assert torch.all(lo <= hi) and torch.all((lo <= mean + 1e-6) & (mean - 1e-6 <= hi))
    torch.testing.assert_close(sensitivity.draws.mean(1), mean, atol=0.5, rtol=0.05)
    assert torch.all(sd >= 0)
    rows = sensitivity.table(tau=1.0)
    assert [r["block"] for r in rows][: len(sensitivity.blocks)] == sensitivity.paths
    assert {r["block"] for r in rows if "fixed" in r} == {"layer2.0", "layer3.0"}
    with pytest.raises(ValueError, match="'level' must be in"):
        sensitivity.interval(1.5)


@pytest.mark.parametrize("kind", ["bayesian", "classical"])
def test_bootstrap_spread_matches_the_binomial(kind):
    # one block, one seed, N examples with drop indicator p: sd of the mean is sqrt(p (1 - p) / N)
    n, p = 2000, 0.2
    diff = (torch.arange(n) < p * n).float().reshape(1, 1, n)
    draws = _bootstrap_means(diff, 4000, kind, seed=0)
    assert draws.mean().item() == pytest.approx(p, abs=3e-3)
    assert draws.std().item() == pytest.approx((p * (1 - p) / n) ** 0.5, rel=0.08)


def test_bootstrap_includes_the_seed_spread():
    # no example noise (every example flips together), two seeds disagreeing: the spread comes from the seeds
    diff = torch.stack([torch.zeros(500), torch.ones(500)]).reshape(1, 2, 500)
    draws = _bootstrap_means(diff, 4000, "bayesian", seed=0)
    # Dirichlet(1, 1) weight on seed 2 is uniform on [0, 1]
    assert draws.mean().item() == pytest.approx(0.5, abs=0.02)
    assert draws.std().item() == pytest.approx((1 / 12) ** 0.5, rel=0.05)


def test_sensitivity_persistence_and_arviz(sensitivity, tmp_path):
    import arviz as az

    sensitivity.save(tmp_path / "s.json")
    back = BlockSensitivity.load(tmp_path / "s.json")
    assert back.paths == sensitivity.paths and [b.reason for b in back.fixed] == [b.reason for b in sensitivity.fixed]
    torch.testing.assert_close(back.draws, sensitivity.draws, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.drops, sensitivity.drops)
    summary = az.summary(sensitivity.to_datatree())
    assert len(summary) == len(sensitivity.blocks)
    with pytest.raises(ValueError, match="not a block sensitivity"):
        BlockSensitivity.from_dict({"format": "x"})
    with pytest.raises(FileNotFoundError, match="block sensitivity file not found"):
        BlockSensitivity.load(tmp_path / "missing.json")


def test_scoring_errors(trained, digits):
    with pytest.raises(ValueError, match="'num_seeds' must be an integer >= 1"):
        block_sensitivity(trained, digits.val, num_seeds=0)
    with pytest.raises(ValueError, match="'bootstrap' must be one of"):
        block_sensitivity(trained, digits.val, bootstrap="jackknife")
    with pytest.raises(ValueError, match="no removable residual block"):
        block_sensitivity(trained, digits.val, blocks=["layer2.0"])


def test_scoring_float64(trained, digits):
    net = copy.deepcopy(trained).double()
    val = TensorSplit(digits.val.x.double(), digits.val.y)
    s = block_sensitivity(net, val, num_seeds=2, num_draws=50, blocks=["layer3.*"])
    assert s.paths == ["layer3.1", "layer3.2"] and s.drops.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scoring_on_cuda(trained, digits, sensitivity):
    net = copy.deepcopy(trained).cuda()
    val = TensorSplit(digits.val.x.cuda(), digits.val.y.cuda())
    s = block_sensitivity(net, val, num_seeds=3, num_draws=400, seed=0)
    assert s.paths == sensitivity.paths and s.drops.shape == sensitivity.drops.shape


# -- the rule ----------------------------------------------------------------------------------------------------


def test_rule_threshold_and_budget(sensitivity):
    tau_plan = decide(sensitivity, "srinit", None, tau=5.0, prob=0.95)
    p = sensitivity.prob_below(5.0)
    keep = [k for sp in tau_plan.sites for k in sp.keep]
    assert keep == [bool(v < 0.95) for v in p]
    assert tau_plan.kept_string() == "-".join(str(sp.kept) for sp in tau_plan.sites)
    assert [sp.site.name for sp in tau_plan.sites] == ["layer1", "layer2", "layer3"]
    assert all(sp.site.kind == "block" and sp.fold is None for sp in tau_plan.sites)
    # budget: least sensitive first until the fraction is reached
    plan = srinit(sensitivity, params_reduction=0.2)
    removed = [b for b, k in zip(sensitivity.blocks, (k for sp in plan.sites for k in sp.keep), strict=True) if not k]
    assert sum(b.params for b in removed) >= 0.2 * sensitivity.total_params
    order = torch.argsort(sensitivity.mean()).tolist()
    assert {b.path for b in removed} == {sensitivity.blocks[i].path for i in order[: len(removed)]}
    flops = srinit(sensitivity, flops_reduction=0.1)
    gone = [b for b, k in zip(sensitivity.blocks, (k for sp in flops.sites for k in sp.keep), strict=True) if not k]
    assert sum(b.macs for b in gone) >= 0.1 * sensitivity.total_macs
    assert PruningPlan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()


def test_rule_errors(sensitivity):
    with pytest.raises(ValueError, match="exactly one of 'tau'"):
        srinit(sensitivity)
    with pytest.raises(ValueError, match="got tau, params_reduction"):
        srinit(sensitivity, tau=1.0, params_reduction=0.2)
    with pytest.raises(ValueError, match="'prob' must be in"):
        check_srinit_params(tau=1.0, prob=0.0)
    with pytest.raises(ValueError, match="'flops_reduction' must be a fraction"):
        check_srinit_params(flops_reduction=1.5)
    with pytest.raises(TypeError, match="decides from a BlockSensitivity"):
        srinit(object(), tau=1.0)


# -- pipeline ----------------------------------------------------------------------------------------------------


def test_prune_network_srinit_and_combination(trained, digits):
    cfg = PruneConfig(
        method="srinit",
        schedule="reinit",
        method_params={"params_reduction": 0.3},
        reinit_seeds=2,
        bootstrap_draws=100,
        finetune_epochs=1,
    )
    result = prune_network(trained, digits, cfg, progress=False)
    assert result.gated is None and result.posterior is None and result.plan is result.depth.plan
    assert count_params(result.pruned) == count_params(trained) - sum(
        b.params for b in result.depth.sensitivity.blocks if b.path in result.depth.removed
    )
    assert len(result.finetune_history) == 1
    # the same drops decided again (the paper's median rule), removed from the scored network
    again = decide_again(result, digits, "srinit", {"tau": 1e9, "prob": 0.5}, progress=False, net=trained)
    assert again.depth.sensitivity is result.depth.sensitivity and len(again.depth.removed) == 7
    assert count_params(again.pruned) == count_params(trained) - sum(b.params for b in result.depth.sensitivity.blocks)
    with pytest.raises(ValueError, match="needs the network that was scored"):
        decide_again(result, digits, "srinit", {"tau": 1.0}, progress=False)
    combo = PruneConfig(
        method="bmrs-n",
        schedule="post-training",
        epochs=1,
        depth="srinit",
        depth_params={"params_reduction": 0.3},
        reinit_seeds=2,
        bootstrap_draws=100,
        finetune_epochs=1,
        depth_finetune_epochs=1,
    )
    both = prune_network(trained, digits, combo, progress=False)
    assert both.depth.removed == result.depth.removed and len(both.depth.finetune_history) == 1
    assert all(not any(p.startswith(f"{b}.") for p in both.gated.net.state_dict()) for b in both.depth.removed)
    assert count_params(both.pruned) <= count_params(result.pruned)
    assert both.config.depth == "srinit"
    # the dense network's description counts its own channels, not the shallower network's
    metrics = measure_result(both, trained, digits, model="resnet20")
    dense_sites = find_gate_sites(trained, digits.val.x[:2])
    assert metrics["dense"]["kept"] == "-".join(str(s.size) for s in dense_sites)
    assert len(metrics["pruned"]["kept"].split("-")) == len(both.plan.sites) < len(dense_sites)
    assert metrics["depth"]["removed_blocks"] == both.depth.removed


def test_recipe_digits_as_images():
    from pyroprune.runs import load_data

    images = load_data({"name": "digits", "flatten": False, "val_size": 300, "seed": 0})
    assert images.train.x.shape[1:] == (1, 8, 8) and len(images.val) == 300
    legacy = load_data({"name": "digits", "seed": 0})  # the demo's run directories: flat vectors
    assert legacy.train.x.shape[1:] == (64,)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"method": "srinit"}, "method 'srinit' needs schedule 'reinit'"),
        ({"schedule": "reinit"}, "schedule 'reinit' needs method 'srinit'"),
        ({"depth": "deep"}, "'depth' must be one of none, srinit"),
        ({"depth": "srinit"}, "'depth_params': srinit: give exactly one of"),
        ({"depth": "srinit", "depth_params": {"tau": 1, "k": 2}}, "'depth_params'"),
        ({"reinit_seeds": 0}, "'reinit_seeds' must be >= 1"),
        ({"reinit_init": "xavier"}, "'reinit_init' must be one of"),
        ({"bootstrap": "jackknife"}, "'bootstrap' must be one of"),
        ({"blocks": "layer1.*"}, "'blocks' must be a list"),
        ({"depth_params": {"tau": 1.0}}, "'depth_params' is set but 'depth' is 'none'"),
        ({"depth_finetune_epochs": 2}, "'depth_finetune_epochs' is set but 'depth' is 'none'"),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**{"method": "bmrs-n", "schedule": "post-training", **changes}).validate()


def test_srinit_needs_a_validation_split(trained, digits):
    cfg = PruneConfig(method="srinit", schedule="reinit", method_params={"tau": 1.0}, reinit_seeds=1)
    data = dataclasses.replace(digits, val=TensorSplit(digits.val.x[:0], digits.val.y[:0]))
    with pytest.raises(ValueError, match="validation split, which is empty"):
        prune_network(trained, data, cfg, progress=False)
