"""The VGG-like CIFAR network with batch normalisation used by SBP."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG_LIKE_CFG", "VGGLike"]

#: Convolution plan: an int is a 3×3 conv with that many output channels, ``"M"`` a 2×2 max-pool.
VGG_LIKE_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class VGGLike(nn.Module):
    """VGG-like network for 32×32 images (CIFAR-10/100) with BatchNorm.

    Source: S. Zagoruyko (2015), "92.45% on CIFAR-10 in Torch" (the ``cifar.torch`` VGG with
    BatchNorm), as used by K. Neklyudov, D. Molchanov, A. Ashukha, D. Vetrov (2017),
    "Structured Bayesian Pruning via Log-Normal Multiplicative Noise", NeurIPS 2017. The
    architecture goes back to K. Simonyan, A. Zisserman (2015), "Very Deep Convolutional
    Networks for Large-Scale Image Recognition". The dropout layers of ``cifar.torch`` are left
    out: the Bayesian pruning methods supply their own (multiplicative) noise.

    Layers: the convolution plan :data:`VGG_LIKE_CFG` =
    [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M], each number a
    ``Conv2d(·, c, 3, padding=1)`` - ``BatchNorm2d(c)`` - ReLU and each M a 2×2 max-pool; then
    flatten - ``Linear(512, 512)`` - ``BatchNorm1d(512)`` - ReLU - ``Linear(512, num_classes)``.

    ``width`` multiplies every channel count (rounded, at least 1), e.g. ``width=0.125`` for
    quick tests. For inputs smaller than 32×32 the pools that would act on a 1×1 map are
    skipped, and the flatten size is ``channels · s · s`` for the remaining spatial size ``s``.

    :param in_channels: input image channels.
    :param num_classes: number of output logits.
    :param width: channel multiplier.
    :param input_size: height (= width) of the square input image.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0, input_size: int = 32) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if input_size < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.num_classes = num_classes
        self.input_size = input_size
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for item in VGG_LIKE_CFG:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out = _scaled(int(item), width)
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        hidden = _scaled(512, width)
        self.flat_features = channels * size * size
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
