"""Physical removal equals the deterministic gated network, for every architecture in models/."""

import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

from pyroprune.gates import GatedNet
from pyroprune.measure import count_macs, count_params
from pyroprune.models import MODEL_REGISTRY, build_model
from pyroprune.plan import PruningPlan, SitePlan
from pyroprune.serialization import load_pruned, save_pruned
from pyroprune.surgery import remove

# Small inputs so that every architecture runs fast; widths as published unless noted.
CASES = {
    "bmrs-mlp": ({"in_features": 64}, (5, 64)),
    "lenet-300-100": ({"in_features": 64}, (5, 64)),
    "lenet-500-300": ({"in_features": 64}, (5, 64)),
    "lenet5-caffe": ({"input_size": 8}, (5, 1, 8, 8)),
    "bmrs-lenet5": ({"input_size": 8}, (5, 1, 8, 8)),
    "vgg-like": ({"in_channels": 3, "width": 0.25}, (5, 3, 32, 32)),
    "resnet20": ({}, (5, 3, 16, 16)),
    "resnet56": ({}, (3, 3, 8, 8)),
    "small-resnet": ({}, (5, 1, 16, 16)),
}


def test_every_registered_model_has_a_case():
    assert set(CASES) == set(MODEL_REGISTRY)


def random_plan(gated: GatedNet, generator: torch.Generator, rate: float = 0.4) -> PruningPlan:
    sites = []
    for s in gated.sites:
        keep = torch.rand(s.size, generator=generator) > rate
        keep[torch.randint(s.size, (1,), generator=generator)] = True
        fold = 0.2 + torch.rand(s.size, generator=generator, dtype=torch.float64)
        sites.append(SitePlan(s, keep.tolist(), [0.0] * s.size, fold.tolist()))
    return PruningPlan("test", {}, sites)


def gated_reference(gated: GatedNet, plan: PruningPlan, x: torch.Tensor) -> torch.Tensor:
    gates = {sp.site.name: torch.tensor(sp.fold, dtype=x.dtype) * sp.keep_tensor() for sp in plan.sites}
    return gated.forward_with_gates(x, gates)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pruned_network_equals_deterministic_gated_network(name):
    kwargs, shape = CASES[name]
    torch.manual_seed(0)
    net = build_model(name, **kwargs).double()
    x = torch.randn(*shape, dtype=torch.float64)
    net.train()
    net(x)  # give BatchNorm non-trivial running statistics
    net.eval()
    gated = GatedNet(net, x)
    gated.eval()
    plan = random_plan(gated, torch.Generator().manual_seed(1))
    pruned = remove(gated, plan, x)
    pruned.eval()
    torch.testing.assert_close(pruned(x), gated_reference(gated, plan, x), rtol=0, atol=1e-5)
    assert not any(isinstance(m, PyroModule) or m._forward_hooks for m in pruned.modules())
    assert count_params(pruned) < count_params(net)
    assert count_macs(pruned, x) < count_macs(net, x)
    # the kept widths are what the plan says
    modules = dict(pruned.named_modules())
    for sp in plan.sites:
        m = modules[sp.site.producers[0]]
        width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        assert width == sp.kept


def test_plan_applies_to_the_original_network_later_and_round_trips(tmp_path):
    net = build_model("resnet20").double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gated = GatedNet(net, x)
    plan = random_plan(gated, torch.Generator().manual_seed(2))
    plan.save(tmp_path / "plan.json")
    again = PruningPlan.load(tmp_path / "plan.json")
    a = remove(gated, plan, x)
    b = remove(net, again, x)  # the plain original network, from the JSON plan
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-12)
    save_pruned(b, tmp_path / "model", arch={"name": "resnet20", "kwargs": {}})
    loaded = load_pruned(tmp_path / "model").double()
    torch.testing.assert_close(loaded(x), b(x), rtol=0, atol=1e-12)


def test_plan_for_another_network_is_rejected():
    x = torch.randn(2, 64)
    gated = GatedNet(build_model("bmrs-mlp", in_features=64), x)
    plan = random_plan(gated, torch.Generator().manual_seed(0))
    other = build_model("bmrs-mlp", in_features=64, hidden=20)
    with pytest.raises(ValueError, match="does not belong"):
        remove(other, plan, x)
    with pytest.raises(TypeError, match="PruningPlan"):
        remove(other, {"sites": []}, x)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_pruned(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pruned(tmp_path)
    with pytest.raises(ValueError, match="pyroprune plan"):
        PruningPlan.from_dict({"method": "x"})
