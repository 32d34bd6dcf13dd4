"""Input-feature gate sites (SBP's gates on the inputs of a Linear): discovery, gating, masks, exact removal,
counting, saving, the pipeline and recipes."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pyro
import pytest
import torch
from torch import nn

from pyroprune.gates import GatedNet, GateSite, feature_site_name, find_gate_sites
from pyroprune.guides import TruncatedLogNormalGuide
from pyroprune.layers import FeatureSelectLinear
from pyroprune.measure import count_macs, count_params
from pyroprune.methods import decide
from pyroprune.models import BMRSMLP, LeNet5Caffe, LeNet300100, LeNet500300, build_model
from pyroprune.pipeline import PruneConfig, prune_and_measure, prune_network
from pyroprune.plan import PruningPlan, SitePlan
from pyroprune.posterior import posterior_from_guide
from pyroprune.recipes import load_recipe, recipe_from_dict
from pyroprune.serialization import load_pruned, save_pruned
from pyroprune.surgery import remove

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def minimal() -> dict:
    """The smallest valid recipe (as in test_recipes.py)."""
    return {
        "name": "t",
        "model": {"name": "bmrs-mlp", "kwargs": {"in_features": 64}},
        "data": {"name": "digits"},
        "prune": {"method": "bmrs-n", "method_params": {}},
    }


def error_of(d: dict) -> str:
    with pytest.raises(ValueError) as info:
        recipe_from_dict(d)
    message = str(info.value)
    assert "\n" not in message
    return message


def random_plan(gated: GatedNet, seed: int, rate: float = 0.4, dead: dict[str, list[int]] | None = None) -> PruningPlan:
    """Random keep masks and fold values; ``dead[site]`` lists indices pruned in any case."""
    g = torch.Generator().manual_seed(seed)
    sites = []
    for s in gated.sites:
        keep = torch.rand(s.size, generator=g) > rate
        for i in (dead or {}).get(s.name, []):
            keep[i] = False
        if not keep.any():
            keep[torch.randint(s.size, (1,), generator=g)] = True
        fold = 0.2 + torch.rand(s.size, generator=g, dtype=torch.float64)
        sites.append(SitePlan(s, keep.tolist(), [0.0] * s.size, fold.tolist()))
    return PruningPlan("test", {}, sites)


def reference(gated: GatedNet, plan: PruningPlan, x: torch.Tensor) -> torch.Tensor:
    """The deterministic gated network: gates at the fold values, pruned ones at 0."""
    gates = {sp.site.name: torch.tensor(sp.fold, dtype=x.dtype) * sp.keep_tensor() for sp in plan.sites}
    return gated.forward_with_gates(x, gates)


# ------------------------------------------------------------------------------------------------- discovery


def test_feature_sites_names_sizes_and_order():
    net = LeNet500300(in_features=64)
    sites = find_gate_sites(net, torch.randn(2, 64), input_gates=["features.0"])
    assert [(s.name, s.kind, s.size) for s in sites] == [
        ("features.0:in", "feature", 64),
        ("features.0", "neuron", 500),
        ("features.2", "neuron", 300),
    ]
    feat = sites[0]
    assert feat.name == feature_site_name("features.0")
    assert feat.producers == feat.gated_modules == ("features.0",)
    assert feat.dim_name == "features_0_in_feature" and feat.is_feature and not sites[1].is_feature
    assert GateSite.from_dict(json.loads(json.dumps(feat.to_dict()))) == feat
    # LeNet-5-Caffe: the flattened features entering fc1 come between conv2 and fc1 (SBP's 3-18-284-283)
    lenet5 = find_gate_sites(LeNet5Caffe(input_size=28), torch.randn(2, 1, 28, 28), input_gates=["classifier.0"])
    assert [(s.name, s.size) for s in lenet5] == [
        ("features.0", 20),
        ("features.3", 50),
        ("classifier.0:in", 800),
        ("classifier.0", 500),
    ]
    # a pattern picks the Linear layers among its matches; a type selects every Linear, the classifier included
    mlp = LeNet300100(in_features=8)
    x = torch.randn(2, 8)
    assert [s.name for s in find_gate_sites(mlp, x, input_gates=["features.*"]) if s.is_feature] == [
        "features.0:in",
        "features.2:in",
    ]
    names = [s.name for s in find_gate_sites(mlp, x, input_gates=[nn.Linear])]
    assert names == ["features.0:in", "features.0", "features.2:in", "features.2", "classifier:in"]
    # include/exclude do not touch feature sites
    only = find_gate_sites(mlp, x, exclude=[nn.Linear], input_gates=["features.0"])
    assert [s.name for s in only] == ["features.0:in"]


def test_selector_errors():
    net = LeNet300100(in_features=8)
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="no Linear layer of the network matches 'fc1'") as info:
        find_gate_sites(net, x, input_gates=["fc1"])
    assert "\n" not in str(info.value) and "features.0" in str(info.value)  # lists the Linear layers
    with pytest.raises(ValueError, match="'features.1'.*ReLU.*not a Linear"):
        GatedNet(net, x, input_gates=["features.1"])
    with pytest.raises(ValueError, match="Conv2d is not a Linear"):
        find_gate_sites(net, x, input_gates=[nn.Conv2d])
    with pytest.raises(ValueError, match="no Linear"):
        find_gate_sites(LeNet5Caffe(input_size=8), torch.randn(2, 1, 8, 8), input_gates=[FeatureSelectLinear])
    with pytest.raises(TypeError, match="module paths or types"):
        find_gate_sites(net, x, input_gates=[3])
    clash = nn.Sequential(OrderedDict([("fc", nn.Linear(8, 6)), ("fc:in", nn.ReLU()), ("out", nn.Linear(6, 3))]))
    with pytest.raises(ValueError, match="is the path of a module"):
        find_gate_sites(clash, x, input_gates=["fc"])


# ---------------------------------------------------------------------------------------------------- gating


def test_weight_space_and_hook_paths_agree_with_both_gates_on_one_linear():
    pyro.set_rng_seed(0)
    net = LeNet300100(in_features=12).double().eval()
    x = torch.randn(7, 12, dtype=torch.float64)
    gated = GatedNet(net, x, input_gates=["features.*"]).eval()
    assert [s.name for s in gated.sites] == ["features.0:in", "features.0", "features.2:in", "features.2"]
    gates = {s.name: torch.rand(s.size, dtype=torch.float64) for s in gated.sites}
    a = gated.forward_with_gates(x, gates)  # weight space: columns and rows of features.2 scaled
    b = gated.forward_with_gates(x, {k: v[None] for k, v in gates.items()})  # hooks, one draw
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # by hand: each gate multiplies its structures
    h = torch.relu(net.features[0](x * gates["features.0:in"])) * gates["features.0"]
    h = torch.relu(net.features[2](h * gates["features.2:in"])) * gates["features.2"]
    torch.testing.assert_close(a, net.classifier(h), rtol=0, atol=1e-12)
    # S vectorised draws equal a loop over them
    draws = {s.name: torch.rand(3, 1, s.size, dtype=torch.float64) for s in gated.sites}
    many = gated.forward_with_gates(x, draws)
    assert many.shape == (3, 7, 10)
    for i in range(3):
        one = gated.forward_with_gates(x, {k: v[i, 0] for k, v in draws.items()})
        torch.testing.assert_close(many[i], one, rtol=0, atol=1e-12)
    # the Pyro model samples the feature site like any other
    trace = pyro.poutine.trace(gated).get_trace(x, torch.zeros(7, dtype=torch.long))
    assert trace.nodes["features.0:in"]["value"].shape == (12,)
    # the plain network has neither forward hooks nor pre-hooks left
    plain = gated.plain_net()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in plain.modules())
    torch.testing.assert_close(plain(x), net(x))


def test_masks_on_feature_sites():
    net = BMRSMLP(in_features=10, hidden=6, depth=2).double()
    x = torch.randn(4, 10, dtype=torch.float64)
    gated = GatedNet(net, x, input_gates=["features.0"])
    gates = {s.name: 0.5 + torch.rand(s.size, dtype=torch.float64) / 2 for s in gated.sites}
    mask = torch.ones(10, dtype=torch.bool)
    mask[[1, 4, 7]] = False
    gated.set_masks({"features.0:in": mask})
    zeroed = {**gates, "features.0:in": gates["features.0:in"] * mask}
    expected = GatedNet(net, x, input_gates=["features.0"]).forward_with_gates(x, zeroed)
    torch.testing.assert_close(gated.forward_with_gates(x, gates), expected, rtol=0, atol=1e-12)
    one = gated.forward_with_gates(x, {k: v[None] for k, v in gates.items()})  # hook path
    torch.testing.assert_close(one, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"expected \(10,\)"):
        gated.set_masks({"features.0:in": torch.ones(6, dtype=torch.bool)})


# ---------------------------------------------------------------------------------------------------- removal


SURGERY = {
    "lenet-300-100": ({"in_features": 64}, (6, 64), ["features.0"]),
    "lenet-500-300": ({"in_features": 64}, (6, 64), ["features.0"]),
    "lenet5-caffe": ({"input_size": 28}, (4, 1, 28, 28), ["classifier.0"]),
}


@pytest.mark.parametrize("name", sorted(SURGERY))
def test_removal_equals_deterministic_gated_network(name):
    kwargs, shape, input_gates = SURGERY[name]
    torch.manual_seed(0)
    net = build_model(name, **kwargs).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    gated = GatedNet(net, x, input_gates=input_gates).eval()
    plan = random_plan(gated, seed=1)
    pruned = remove(gated, plan, x).eval()
    torch.testing.assert_close(pruned(x), reference(gated, plan, x), rtol=0, atol=1e-5)
    assert count_params(pruned) < count_params(net) and count_macs(pruned, x) < count_macs(net, x)
    layer = dict(pruned.named_modules())[input_gates[0]]
    feat = plan[f"{input_gates[0]}:in"]
    assert isinstance(layer, FeatureSelectLinear) and layer.out_features == plan[input_gates[0]].kept
    if name.startswith("lenet-"):  # pixels: every kept feature is read, nothing upstream can shrink
        assert layer.in_features == feat.kept and layer.original_in_features == 64
        assert layer.in_index.tolist() == [i for i, k in enumerate(feat.keep) if k]
        assert layer.in_index.dtype == torch.long
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pruned.modules())


def test_lenet5_conv_channels_and_fc1_features_together():
    """conv2 channels pruned by their own site, others whose 16 features are all pruned removed too."""
    torch.manual_seed(0)
    net = LeNet5Caffe(input_size=28).double().eval()
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    gated = GatedNet(net, x, input_gates=["classifier.0"]).eval()
    # fc1's input feature f comes from conv2 channel f // 16; make channels 3 and 7 dead in fc1 only
    dead = [f for c in (3, 7) for f in range(16 * c, 16 * c + 16)]
    plan = random_plan(gated, seed=3, dead={"classifier.0:in": dead})
    conv2, feat = plan["features.3"], plan["classifier.0:in"]
    for c in (3, 7):
        conv2.keep[c] = True  # the conv2 site keeps them: only the feature site kills them
    pruned = remove(gated, plan, x).eval()
    torch.testing.assert_close(pruned(x), reference(gated, plan, x), rtol=0, atol=1e-5)
    # channels with no kept feature are removed (exactly: nothing else reads them)
    unused = [c for c in range(50) if conv2.keep[c] and not any(feat.keep[16 * c : 16 * c + 16])]
    assert {3, 7} <= set(unused)
    kept_channels = [c for c in range(50) if conv2.keep[c] and c not in unused]
    assert pruned.features[3].out_channels == len(kept_channels)
    fc1 = pruned.classifier[0]
    assert isinstance(fc1, FeatureSelectLinear)
    assert fc1.original_in_features == 16 * len(kept_channels)
    assert fc1.in_features == sum(feat.keep[16 * c + p] for c in kept_channels for p in range(16))
    # the kept string reads like SBP's: conv1-conv2-fc1 inputs-fc1
    assert plan.kept_string() == "-".join(str(sp.kept) for sp in plan.sites)


def test_feature_gates_on_every_linear_and_unused_neurons():
    """A feature site after a Linear: a pruned feature is a neuron nothing else reads, so the neuron goes."""
    torch.manual_seed(0)
    net = LeNet300100(in_features=16).double().eval()
    x = torch.randn(5, 16, dtype=torch.float64)
    gated = GatedNet(net, x, input_gates=[nn.Linear]).eval()
    plan = random_plan(gated, seed=5)
    pruned = remove(gated, plan, x).eval()
    torch.testing.assert_close(pruned(x), reference(gated, plan, x), rtol=0, atol=1e-5)
    both = [a and b for a, b in zip(plan["features.0"].keep, plan["features.2:in"].keep, strict=True)]
    assert pruned.features[0].out_features == sum(both)
    assert type(pruned.features[2]) is nn.Linear  # every pruned feature went with its neuron
    # the plan applies to the plain original network too
    torch.testing.assert_close(remove(net, plan, x)(x), pruned(x), rtol=0, atol=1e-12)


def test_plan_errors_for_feature_sites():
    net = LeNet300100(in_features=8)
    x = torch.randn(2, 8)
    gated = GatedNet(net, x, input_gates=["features.0"])
    plan = random_plan(gated, seed=0)
    plan["features.0:in"].keep = [False] * 8
    with pytest.raises(ValueError, match="every structure of site 'features.0:in'"):
        remove(gated, plan, x)
    other = LeNet300100(in_features=9)
    with pytest.raises(ValueError, match="does not belong"):
        remove(other, random_plan(gated, seed=0), torch.randn(2, 9))


def test_macs_of_feature_select_linear_by_hand():
    torch.manual_seed(0)
    net = LeNet300100(in_features=64).eval()
    x = torch.randn(3, 64)
    gated = GatedNet(net, x, input_gates=["features.0"])
    plan = random_plan(gated, seed=2)
    pruned = remove(gated, plan, x)
    d, h1, h2 = plan.kept
    assert isinstance(pruned.features[0], FeatureSelectLinear) and pruned.features[0].in_features == d
    # Torch-Pruning counts bias additions and one op per ReLU output
    linear = (d * h1 + h1) + (h1 * h2 + h2) + (h2 * 10 + 10)
    assert count_macs(pruned, x) == linear + h1 + h2
    assert count_params(pruned) == linear
    dense = (64 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10)
    assert count_macs(net, x) == dense + 300 + 100


def test_feature_select_linear_layer():
    layer = nn.Linear(6, 3)
    sel = FeatureSelectLinear.from_linear(layer, [0, 2, 5])
    x = torch.randn(4, 2, 6)
    masked = x * torch.tensor([1.0, 0, 1, 0, 0, 1])
    torch.testing.assert_close(sel(x), layer(masked))
    assert sel.in_features == 3 and sel.original_in_features == 6 and "original_in_features=6" in repr(sel)
    assert set(sel.state_dict()) == {"weight", "bias", "in_index"}
    assert sel.double().in_index.dtype == torch.long
    for bad in ([], [2, 1], [0, 6]):
        with pytest.raises(ValueError, match="in_index|at least one"):
            FeatureSelectLinear(bad, 3, original_in_features=6)


def test_save_and_load_pruned_with_feature_select(tmp_path):
    torch.manual_seed(0)
    net = LeNet5Caffe(input_size=28).eval()
    x = torch.randn(3, 1, 28, 28)
    gated = GatedNet(net, x, input_gates=["classifier.0"])
    pruned = remove(gated, random_plan(gated, seed=4), x).eval()
    assert isinstance(pruned.classifier[0], FeatureSelectLinear)
    save_pruned(pruned, tmp_path / "m", arch={"name": "lenet5-caffe", "kwargs": {"input_size": 28}})
    spec = json.loads((tmp_path / "m" / "model.json").read_text())["modules"]["classifier.0"]
    assert spec["type"] == "FeatureSelectLinear"
    assert spec["in_features"] == pruned.classifier[0].in_features
    assert spec["original_in_features"] == pruned.classifier[0].original_in_features
    loaded = load_pruned(tmp_path / "m")
    assert isinstance(loaded.classifier[0], FeatureSelectLinear)
    torch.testing.assert_close(loaded.classifier[0].in_index, pruned.classifier[0].in_index, rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)
    again = load_pruned(tmp_path / "m", skeleton=LeNet5Caffe(input_size=28))
    torch.testing.assert_close(again(x), pruned(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- rules, pipeline


def test_rules_on_feature_sites():
    torch.manual_seed(0)
    net = LeNet300100(in_features=16)
    x = torch.randn(2, 16)
    gated = GatedNet(net, x, input_gates=["features.0"])
    guide = TruncatedLogNormalGuide(gated)
    assert "features__0:in" in dict(guide.loc.named_parameters())
    posterior = posterior_from_guide(guide, gated)
    plan = decide(posterior, "weight-norm", gated, amount=0.5)
    column_norms = net.features[0].weight.detach().norm(dim=0).double()
    torch.testing.assert_close(
        torch.tensor(plan["features.0:in"].score, dtype=torch.float64), column_norms, rtol=1e-5, atol=1e-6
    )
    top = set(torch.argsort(column_norms, descending=True)[:8].tolist())
    assert {i for i, k in enumerate(plan["features.0:in"].keep) if k} == top
    # a rule never empties a feature site
    with torch.no_grad():
        guide.loc["features__0:in"].fill_(-19.0)
        guide.log_scale["features__0:in"].fill_(2.0)
    snr = decide(posterior_from_guide(guide, gated), "snr", gated)
    assert snr["features.0:in"].kept == 1 and len(snr["features.0:in"].forced) == 1


def test_prune_network_removes_input_features(digits, tmp_path):
    torch.manual_seed(0)
    net = BMRSMLP(in_features=64, hidden=12, depth=2)
    cfg = PruneConfig(
        method="magnitude",
        method_params={"amount": 0.5},
        epochs=1,
        batch_size=256,
        finetune_epochs=0,
        schedule="post-training",
        input_gates=["features.0"],
    )
    result, metrics = prune_and_measure(net, digits, cfg, model="bmrs-mlp", progress=False)
    assert [s.name for s in result.gated.sites] == ["features.0:in", "features.0", "features.2"]
    first = result.pruned.features[0]
    assert isinstance(first, FeatureSelectLinear) and first.in_features == result.plan.kept[0] == 32
    x = digits.test.x
    result.gated.eval()
    torch.testing.assert_close(result.pruned(x), reference(result.gated, result.plan, x), rtol=1e-4, atol=1e-5)
    # SBP-style kept strings: the input width is not printed twice
    assert metrics["dense"]["kept"] == "64-12-12"
    assert metrics["pruned"]["kept"] == "-".join(map(str, result.plan.kept)) and metrics["pruned"]["kept"][:3] == "32-"
    # a run directory rebuilds the feature sites from the recorded config
    from pyroprune.runs import load_run, save_run

    arch = {"name": "bmrs-mlp", "kwargs": {"in_features": 64, "hidden": 12, "depth": 2}}
    save_run(tmp_path / "run", result, net, arch=arch, data={"name": "digits", "seed": 0})
    run, _ = load_run(tmp_path / "run")
    assert [s.name for s in run.gated.sites] == [s.name for s in result.gated.sites]
    assert isinstance(run.pruned.features[0], FeatureSelectLinear)
    torch.testing.assert_close(run.pruned(x), result.pruned(x), rtol=0, atol=0)
    # the continuous schedule masks feature sites like the others
    cfg.schedule = "continuous"
    cont = prune_network(net, digits, cfg, progress=False)
    assert "features.0:in" in cont.gated.masks


def test_config_and_recipe_validation_of_input_gates():
    with pytest.raises(ValueError, match="'input_gates' must be a list"):
        PruneConfig(input_gates=[1]).validate()
    d = minimal()
    d["prune"]["input_gates"] = ["features.0"]
    assert recipe_from_dict(d).prune.input_gates == ["features.0"]
    d["prune"]["input_gates"] = "features.0"
    assert "'prune.input_gates' must be an array" in error_of(d)
    d["prune"]["input_gates"] = [1]
    assert "'prune.input_gates'" in error_of(d)
    d["prune"]["input_gates"] = ["fc1"]
    message = error_of(d)
    assert "'prune.input_gates'" in message and "'fc1'" in message and "features.0" in message
    for stem, layer in (("sbp-lenet-500-300-mnist", "features.0"), ("sbp-lenet5-caffe-mnist", "classifier.0")):
        recipe = load_recipe(RECIPES / f"{stem}.toml")
        assert recipe.prune.input_gates == [layer]
        assert "input" in recipe.description


def test_datatree_with_a_feature_site(digits, tmp_path):
    from pyroprune.diagnostics.datatree import build_datatree, load_datatree, save_datatree

    gated = GatedNet(BMRSMLP(in_features=64, hidden=6, depth=2), digits.train.x[:2], input_gates=["features.0"])
    posterior = posterior_from_guide(TruncatedLogNormalGuide(gated), gated)
    tree = build_datatree(
        [(gated, posterior)], digits.test, method="snr", prior="LogUniform", guide_name="g", num_draws=4
    )
    assert tree.posterior["features.0:in"].dims == ("chain", "draw", "features_0_in_feature")
    path = save_datatree(tree, tmp_path / "t.nc")
    assert load_datatree(path).posterior["features.0:in"].shape == (1, 4, 64)
