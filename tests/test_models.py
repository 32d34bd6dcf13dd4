"""Tests for the model zoo in ``pyroprune.models``."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from pyroprune.models import (
    BMRSMLP,
    MODEL_REGISTRY,
    VGG_LIKE_CFG,
    BasicBlock,
    BMRSLeNet5,
    CifarResNet,
    LeNet5Caffe,
    LeNet300100,
    LeNet500300,
    VGGLike,
    build_model,
    resnet20,
    resnet56,
)

BATCH = 3

# name -> (constructor kwargs, input shape without batch); small widths where a model is expensive.
CASES: dict[str, tuple[dict[str, object], tuple[int, ...]]] = {
    "bmrs-mlp": ({}, (1, 28, 28)),
    "lenet-300-100": ({}, (784,)),
    "lenet-500-300": ({}, (1, 28, 28)),
    "lenet5-caffe": ({}, (1, 28, 28)),
    "bmrs-lenet5": ({}, (1, 28, 28)),
    "vgg-like": ({"width": 0.125}, (3, 32, 32)),
    "resnet20": ({}, (3, 32, 32)),
    "resnet56": ({}, (3, 32, 32)),
    "small-resnet": ({}, (1, 28, 28)),
}

# Same, for scikit-learn-digits-sized inputs (64 features or 1×8×8 images).
SMALL_CASES: dict[str, tuple[dict[str, object], tuple[int, ...]]] = {
    "bmrs-mlp": ({"in_features": 64}, (64,)),
    "lenet-300-100": ({"in_features": 64}, (1, 8, 8)),
    "lenet-500-300": ({"in_features": 64}, (64,)),
    "lenet5-caffe": ({"input_size": 8}, (1, 8, 8)),
    "bmrs-lenet5": ({"input_size": 8}, (1, 8, 8)),
    "vgg-like": ({"in_channels": 1, "input_size": 8, "width": 0.125}, (1, 8, 8)),
    "resnet20": ({"in_channels": 1}, (1, 8, 8)),
    "resnet56": ({"in_channels": 1}, (1, 8, 8)),
    "small-resnet": ({"stem_stride": 1}, (1, 8, 8)),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias; running statistics are buffers


def cifar_resnet_params(depth: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """Parameter count of a 6n+2 CIFAR ResNet with 1×1-conv+BN projection shortcuts."""
    n = (depth - 2) // 6
    total = conv(in_channels, 16, 3, bias=False) + bn(16)
    c_prev = 16
    for c in (16, 32, 64):
        for i in range(n):
            c_in = c_prev if i == 0 else c
            total += conv(c_in, c, 3, bias=False) + bn(c) + conv(c, c, 3, bias=False) + bn(c)
            if c_in != c:
                total += conv(c_in, c, 1, bias=False) + bn(c)
        c_prev = c
    return total + linear(64, num_classes)


def make(name: str, cases: dict[str, tuple[dict[str, object], tuple[int, ...]]]):
    kwargs, shape = cases[name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    x = torch.randn(BATCH, *shape)
    return model, x


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_shape_and_finite(name: str) -> None:
    model, x = make(name, CASES)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (BATCH, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SMALL_CASES))
def test_small_inputs(name: str) -> None:
    model, x = make(name, SMALL_CASES)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (BATCH, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64(name: str) -> None:
    model, x = make(name, SMALL_CASES)
    model = model.double()
    with torch.no_grad():
        out = model(x.double())
    assert out.dtype == torch.float64
    assert out.shape == (BATCH, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_step_backward(name: str) -> None:
    model, x = make(name, SMALL_CASES)
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dependency_graph(name: str) -> None:
    model, x = make(name, SMALL_CASES if name == "resnet56" else CASES)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d))
    prune_fn = tp.prune_conv_out_channels if isinstance(first, nn.Conv2d) else tp.prune_linear_out_channels
    group = dg.get_pruning_group(first, prune_fn, idxs=[0])
    assert len(group) >= 2  # the layer's outputs are coupled to at least the next layer's inputs
    before = n_params(model)
    group.prune()
    assert n_params(model) < before
    with torch.no_grad():
        out = model(x)
    assert out.shape == (BATCH, 10)


def test_resnet_residual_channels_coupled() -> None:
    """Pruning a stem channel must also prune it in every layer1 block writing to the residual stream."""
    torch.manual_seed(0)
    model = resnet20().eval()
    x = torch.randn(2, 3, 32, 32)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[3])
    targets = {item.dep.target.module for item in group}
    for block in model.layer1:
        assert block.conv2 in targets and block.bn2 in targets
    assert model.layer2[0].shortcut[0] in targets  # projection input channels
    group.prune()
    assert model.layer1[2].conv2.out_channels == 15
    assert model.layer2[0].shortcut[0].in_channels == 15
    assert model(x).shape == (2, 10)


def test_param_counts_published_shapes() -> None:
    assert n_params(LeNet300100()) == 266_610
    assert n_params(LeNet500300()) == 545_810
    assert n_params(LeNet5Caffe()) == 431_080
    assert n_params(BMRSMLP()) == 784 * 50 + 50 + 5 * (50 * 50 + 50) + 50 * 10 + 10
    bmrs_lenet5 = conv(1, 6, 5) + conv(6, 16, 5) + conv(16, 120, 5) + linear(120, 84) + linear(84, 10)
    assert n_params(BMRSLeNet5()) == bmrs_lenet5


def test_param_counts_resnets() -> None:
    assert n_params(resnet20()) == cifar_resnet_params(20)
    assert n_params(resnet56()) == cifar_resnet_params(56)
    assert n_params(CifarResNet(32, num_classes=100)) == cifar_resnet_params(32, num_classes=100)
    # Sanity against the paper's "0.27M" / "0.85M" for option A: projections add 2,752 parameters.
    assert n_params(resnet20()) - 2_752 == 269_722
    assert n_params(resnet56()) - 2_752 == 853_018


def test_param_count_vgg_like() -> None:
    total, c_prev = 0, 3
    for item in VGG_LIKE_CFG:
        if item != "M":
            total += conv(c_prev, int(item), 3) + bn(int(item))
            c_prev = int(item)
    total += linear(512, 512) + bn(512) + linear(512, 10)
    assert n_params(VGGLike()) == total


def test_small_input_flatten_sizes() -> None:
    assert LeNet5Caffe(input_size=8).flat_features == 50 * 2 * 2
    assert LeNet5Caffe(input_size=28).flat_features == 800
    assert LeNet5Caffe(input_size=32).flat_features == 50 * 5 * 5
    assert BMRSLeNet5(input_size=28).features[6].kernel_size == (5, 5)
    assert BMRSLeNet5(in_channels=3, input_size=32).features[6].kernel_size == (6, 6)
    assert BMRSLeNet5(input_size=8).features[6].kernel_size == (2, 2)
    with pytest.raises(ValueError):
        LeNet5Caffe(input_size=3)
    with pytest.raises(ValueError):
        LeNet5Caffe(input_size=8, padding=0)


def test_mlp_structure() -> None:
    model = BMRSMLP(in_features=64, hidden=7, depth=3, num_classes=4)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 7), (7, 7), (7, 7), (7, 4)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 3
    x = torch.randn(2, 64)
    assert torch.equal(model(x), model(x.view(2, 1, 8, 8)))
    with pytest.raises(ValueError):
        BMRSMLP(depth=0)


def test_resnet_block_structure() -> None:
    model = resnet20()
    for stage in (model.layer1, model.layer2, model.layer3):
        assert len(stage) == 3
        assert all(isinstance(b, BasicBlock) for b in stage)
    assert model.layer1[0].is_identity and isinstance(model.layer1[0].shortcut, nn.Identity)
    for stage, c_in, c_out in ((model.layer2, 16, 32), (model.layer3, 32, 64)):
        proj = stage[0].shortcut
        assert not stage[0].is_identity and isinstance(proj, nn.Sequential)
        assert isinstance(proj[0], nn.Conv2d) and isinstance(proj[1], nn.BatchNorm2d)
        assert (proj[0].in_channels, proj[0].out_channels, proj[0].stride) == (c_in, c_out, (2, 2))
        assert all(b.is_identity for b in stage[1:])
    assert len(resnet56().layer2) == 9
    with pytest.raises(ValueError):
        CifarResNet(21)


def test_resnet_kaiming_init() -> None:
    torch.manual_seed(0)
    w = resnet56().layer3[1].conv1.weight  # fan_out = 64 * 3 * 3
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(w.std().item() - expected_std) / expected_std < 0.05
    assert abs(w.mean().item()) < 0.1 * expected_std


def test_vgg_width_scales_channels() -> None:
    model = VGGLike(width=0.25)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [round(int(c) * 0.25) for c in VGG_LIKE_CFG if c != "M"]
    assert model.classifier[0].in_features == 128
    with pytest.raises(ValueError):
        VGGLike(width=0.0)


def test_registry_round_trip() -> None:
    assert set(MODEL_REGISTRY) == {
        "bmrs-mlp",
        "lenet-300-100",
        "lenet-500-300",
        "lenet5-caffe",
        "bmrs-lenet5",
        "vgg-like",
        "resnet20",
        "resnet56",
        "small-resnet",
    }
    expected = {
        "bmrs-mlp": BMRSMLP,
        "lenet-300-100": LeNet300100,
        "lenet-500-300": LeNet500300,
        "lenet5-caffe": LeNet5Caffe,
        "bmrs-lenet5": BMRSLeNet5,
        "vgg-like": VGGLike,
        "resnet20": CifarResNet,
        "resnet56": CifarResNet,
        "small-resnet": CifarResNet,
    }
    for name, cls in expected.items():
        kwargs, _ = SMALL_CASES[name]
        model = build_model(name, num_classes=3, **kwargs)
        assert type(model) is cls
        assert model.num_classes == 3
    assert build_model("resnet56").depth == 56
    small = build_model("small-resnet")
    assert small.stage_channels == (8, 16, 32) and small.conv1.stride == (2, 2)


def test_build_model_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown model 'lenet-7'") as info:
        build_model("lenet-7")
    for name in MODEL_REGISTRY:
        assert name in str(info.value)


def test_no_shared_state_between_instances() -> None:
    a, b = build_model("lenet-300-100"), build_model("lenet-300-100")
    assert all(pa.data_ptr() != pb.data_ptr() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))
