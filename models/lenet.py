"""Convolutional LeNet-5 variants: Caffe's LeNet-5 (as used by SBP) and the BMRS LeNet-5."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BMRSLeNet5", "LeNet5Caffe"]


def _conv_out(size: int, kernel: int, padding: int) -> int:
    """Spatial output size of a stride-1 convolution."""
    return size + 2 * padding - kernel + 1


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet-5 with ReLU activations, as used by SBP.

    Source: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner (1998), "Gradient-Based Learning Applied
    to Document Recognition", Proc. IEEE, in the Caffe "lenet" configuration used by
    K. Neklyudov, D. Molchanov, A. Ashukha, D. Vetrov (2017), "Structured Bayesian Pruning via
    Log-Normal Multiplicative Noise", NeurIPS 2017. Caffe's prototxt has no nonlinearity after
    the convolutions; like SBP's code we put a ReLU after every conv and hidden fc layer.

    Layers (28×28 input): ``Conv2d(in_channels, 20, 5)`` - ReLU - MaxPool 2 -
    ``Conv2d(20, 50, 5)`` - ReLU - MaxPool 2 - flatten (50·4·4 = 800) - ``Linear(800, 500)`` -
    ReLU - ``Linear(500, num_classes)``; 431,080 parameters for one input channel and 10 classes.

    Small inputs: the unpadded convolutions need ``input_size >= 16``. With ``padding=None``
    (the default) the convolutions are unpadded when that holds and otherwise use "same"
    padding 2, so e.g. a 1×8×8 digits image gives 8 → 8 → 4 → 4 → 2 and a flatten size of
    50·2·2 = 200. The flatten size is always computed from ``input_size`` and the padding.

    :param in_channels: input image channels.
    :param input_size: height (= width) of the square input image.
    :param num_classes: number of output logits.
    :param padding: padding of both convolutions; ``None`` chooses 0 or 2 as described above.
    """

    def __init__(
        self, in_channels: int = 1, input_size: int = 28, num_classes: int = 10, padding: int | None = None
    ) -> None:
        super().__init__()
        if padding is None:
            padding = 0 if input_size >= 16 else 2
        size = _conv_out(input_size, 5, padding) // 2
        size = _conv_out(size, 5, padding) // 2
        if size < 1:
            raise ValueError(f"input_size={input_size} with padding={padding} is too small for LeNet5Caffe")
        self.input_size = input_size
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flat_features = 50 * size * size
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_features, 500),
            nn.ReLU(),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class BMRSLeNet5(nn.Module):
    """The LeNet-5 (6c-16c-120c-84) used in the BMRS experiments.

    Source: D. Wright, C. Igel, R. Selvan (2024), "BMRS: Bayesian Model Reduction for Structured
    Pruning", NeurIPS 2024; the architecture follows Y. LeCun et al. (1998), "Gradient-Based
    Learning Applied to Document Recognition".

    Layers (28×28 input): ``Conv2d(in_channels, 6, 5, padding=2)`` - ReLU - MaxPool 2 -
    ``Conv2d(6, 16, 5)`` - ReLU - MaxPool 2 - ``Conv2d(16, 120, 5)`` - ReLU - flatten (120) -
    ``Linear(120, 84)`` - ReLU - ``Linear(84, num_classes)``.

    Other input sizes: the kernel of the last convolution is set to the spatial size left after
    the second pooling, so its output is always 1×1 (5 for 28×28, 6 for 32×32). When the
    unpadded second convolution would leave less than 2×2 pixels (``input_size < 12``) it gets
    padding 2 instead; a 1×8×8 digits image thus gives 8 → 8 → 4 → 4 → 2 and a 2×2 last kernel.

    :param in_channels: input image channels.
    :param input_size: height (= width) of the square input image.
    :param num_classes: number of output logits.
    """

    def __init__(self, in_channels: int = 1, input_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        size = _conv_out(input_size, 5, 2) // 2
        pad2 = 0 if _conv_out(size, 5, 0) >= 2 else 2
        size = _conv_out(size, 5, pad2) // 2
        if size < 1:
            raise ValueError(f"input_size={input_size} is too small for BMRSLeNet5")
        self.input_size = input_size
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 120, kernel_size=size),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
