import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from pyroprune.distributions import LogUniform
from pyroprune.gates import GatedNet, find_gate_sites
from pyroprune.infer.svi import SiteScale, site_scales
from pyroprune.models import BMRSMLP, LeNet5Caffe, VGGLike, resnet20


def test_mlp_sites_skip_classifier():
    net = BMRSMLP(in_features=64, hidden=10, depth=3)
    sites = find_gate_sites(net, torch.randn(2, 64))
    assert [s.size for s in sites] == [10, 10, 10]
    assert all(s.kind == "neuron" for s in sites)
    produced = {p for s in sites for p in s.producers}
    assert not any(p.startswith("classifier") for p in produced)


def test_conv_sites_gate_after_batchnorm():
    net = VGGLike(in_channels=1, width=0.125, input_size=8)
    sites = find_gate_sites(net, torch.randn(2, 1, 8, 8))
    convs = [s for s in sites if s.kind == "channel"]
    assert len(convs) == 13
    modules = dict(net.named_modules())
    for s in convs:
        assert isinstance(modules[s.gated_modules[0]], nn.BatchNorm2d)
    lenet_sites = find_gate_sites(LeNet5Caffe(input_size=8), torch.randn(2, 1, 8, 8))
    assert [s.size for s in lenet_sites] == [20, 50, 500]


def test_residual_channels_share_one_site():
    net = resnet20()
    sites = find_gate_sites(net, torch.randn(2, 3, 32, 32))
    coupled = [s for s in sites if len(s.producers) > 1]
    # Each of the three stages has one residual stream coupling the stem/projection and every block's conv2.
    assert len(coupled) == 3
    stem = next(s for s in coupled if "conv1" in s.producers)
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stem.producers)
    assert all(len(s.gated_modules) == len(s.producers) for s in coupled)


def test_include_exclude_and_errors():
    net = BMRSMLP(in_features=8, hidden=4, depth=3)
    x = torch.randn(2, 8)
    all_sites = find_gate_sites(net, x)
    only_first = find_gate_sites(net, x, include=[all_sites[0].name])
    assert [s.name for s in only_first] == [all_sites[0].name]
    rest = find_gate_sites(net, x, exclude=[all_sites[0].name])
    assert [s.name for s in rest] == [s.name for s in all_sites[1:]]
    assert find_gate_sites(net, x, exclude=[nn.Linear]) == []
    with pytest.raises(ValueError, match="nope"):
        find_gate_sites(net, x, include=["nope"])
    with pytest.raises(ValueError, match="nothing to prune"):
        GatedNet(nn.Sequential(nn.Linear(8, 3)), x)
    with pytest.raises(TypeError, match="nn.Module"):
        GatedNet("not a net", x)


def test_elbo_scaling_of_minibatch_and_bmrs_weighting():
    net = BMRSMLP(in_features=8, hidden=4, depth=2)
    x, y = torch.randn(5, 8), torch.randint(0, 10, (5,))
    gated = GatedNet(net, x, num_data=100)
    tr = poutine.trace(gated).get_trace(x, y)
    tr.compute_log_prob()
    assert tr.nodes["obs"]["scale"] == pytest.approx(100 / 5)
    scales = site_scales(gated, "bmrs", num_data=100)
    tr = poutine.trace(SiteScale(scales)(gated)).get_trace(x, y)
    assert tr.nodes["obs"]["scale"] == pytest.approx(1 / 5)  # the batch mean of the CE
    for s in gated.sites:
        assert tr.nodes[s.name]["scale"] == pytest.approx(1 / (2 * s.size))
    with pytest.raises(ValueError, match="kl_weighting"):
        site_scales(gated, "nonsense", 100)


def test_vectorised_gate_draws_equal_a_loop():
    net = LeNet5Caffe(input_size=8).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    gated = GatedNet(net, x)
    gated.eval()
    draws = {s.name: torch.rand(4, s.size, dtype=torch.float64) for s in gated.sites}
    batched = gated.forward_with_gates(x, draws)
    assert batched.shape == (4, 3, 10)
    for i in range(4):
        single = gated.forward_with_gates(x, {k: v[i] for k, v in draws.items()})
        torch.testing.assert_close(batched[i], single, rtol=1e-12, atol=1e-12)
    # [S, 1, C] (a particle plate at dim -2) gives the same [S, B, K]
    plate_shaped = gated.forward_with_gates(x, {k: v.unsqueeze(1) for k, v in draws.items()})
    torch.testing.assert_close(plate_shaped, batched)


def test_user_network_is_not_modified_and_gates_multiply():
    net = BMRSMLP(in_features=8, hidden=4, depth=2)
    x = torch.randn(3, 8)
    before = net(x).detach()
    gated = GatedNet(net, x)
    torch.testing.assert_close(net(x), before)  # no hooks on the user's module
    ones = {s.name: torch.ones(s.size) for s in gated.sites}
    torch.testing.assert_close(gated.forward_with_gates(x, ones), before)
    zeros = {s.name: torch.zeros(s.size) for s in gated.sites}
    out = gated.forward_with_gates(x, zeros)
    # all hidden units off: the output is the classifier bias
    torch.testing.assert_close(out, gated.net.classifier.bias.expand(3, -1))


def test_prior_moves_to_network_dtype_and_masks():
    net = BMRSMLP(in_features=8, hidden=4, depth=2).double()
    x = torch.randn(3, 8, dtype=torch.float64)
    gated = GatedNet(net, x, prior=LogUniform(-10.0, 0.0))
    d = gated.prior(gated.sites[0])
    assert d.batch_shape == (4,)
    assert d.sample().dtype == torch.float64
    pyro.set_rng_seed(1)
    tr = poutine.trace(gated).get_trace(x, torch.zeros(3, dtype=torch.long))
    z = tr.nodes[gated.sites[0].name]["value"]
    assert ((z > torch.exp(torch.tensor(-10.0))) & (z <= 1)).all()
    mask = torch.tensor([True, False, True, False])
    gated.set_masks({gated.sites[0].name: mask})
    with pytest.raises(ValueError, match="shape"):
        gated.set_masks({gated.sites[0].name: torch.ones(3, dtype=torch.bool)})
    ones = {s.name: torch.ones(s.size, dtype=torch.float64) for s in gated.sites}
    masked = gated.forward_with_gates(x, ones)
    manual = {**ones, gated.sites[0].name: mask.double()}
    gated.set_masks(None)
    torch.testing.assert_close(masked, gated.forward_with_gates(x, manual))
