"""Model zoo: the architectures used in the Bayesian structured-pruning literature.

Every constructor is registered in :data:`MODEL_REGISTRY` and can be built by name with
:func:`build_model`, e.g. ``build_model("lenet5-caffe", input_size=8)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .lenet import BMRSLeNet5, LeNet5Caffe
from .mlp import BMRSMLP, LeNet300100, LeNet500300
from .resnet_cifar import BasicBlock, CifarResNet, resnet20, resnet56, small_resnet
from .vgg import VGG_LIKE_CFG, VGGLike

__all__ = [
    "BMRSMLP",
    "MODEL_REGISTRY",
    "VGG_LIKE_CFG",
    "BMRSLeNet5",
    "BasicBlock",
    "CifarResNet",
    "LeNet300100",
    "LeNet500300",
    "LeNet5Caffe",
    "VGGLike",
    "build_model",
    "resnet20",
    "resnet56",
    "small_resnet",
]

#: Model name -> constructor; keyword arguments of :func:`build_model` are passed through.
MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "bmrs-mlp": BMRSMLP,
    "lenet-300-100": LeNet300100,
    "lenet-500-300": LeNet500300,
    "lenet5-caffe": LeNet5Caffe,
    "bmrs-lenet5": BMRSLeNet5,
    "vgg-like": VGGLike,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "small-resnet": small_resnet,
}


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Instantiate the registered model ``name`` with constructor keyword arguments ``kwargs``.

    :raises ValueError: if ``name`` is not in :data:`MODEL_REGISTRY`.
    """
    try:
        factory = MODEL_REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(MODEL_REGISTRY))
        raise ValueError(f"unknown model {name!r}; valid names: {valid}") from None
    return factory(**kwargs)
