"""CIFAR ResNets (ResNet-20/56) with projection shortcuts, and a small variant for MNIST-sized data."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet56", "small_resnet"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two-convolution residual block of the CIFAR ResNets.

    Source: K. He, X. Zhang, S. Ren, J. Sun (2016), "Deep Residual Learning for Image
    Recognition", CVPR 2016, §4.2.

    Layers: ``conv1`` 3×3 (stride ``stride``) - ``bn1`` - ReLU - ``conv2`` 3×3 - ``bn2``, plus
    ``shortcut(x)``, then ReLU. ``shortcut`` is ``nn.Identity()`` when input and output shapes
    agree and otherwise ``nn.Sequential(Conv2d(in, out, 1, stride), BatchNorm2d(out))``
    (projection, "option B"). :attr:`is_identity` tells which.

    :param in_channels: input channels.
    :param out_channels: output channels.
    :param stride: stride of ``conv1`` (and of the projection).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    @property
    def is_identity(self) -> bool:
        """Whether the shortcut is the identity (the block could be removed as a whole)."""
        return isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32×32 images with ``6n + 2`` layers.

    Source: K. He, X. Zhang, S. Ren, J. Sun (2016), "Deep Residual Learning for Image
    Recognition", CVPR 2016, §4.2.

    Layers: ``conv1`` 3×3 (``in_channels`` → 16) - ``bn1`` - ReLU; ``layer1``/``layer2``/
    ``layer3``, each ``n = (depth - 2) / 6`` :class:`BasicBlock` s with 16/32/64 channels (the
    first block of ``layer2`` and ``layer3`` has stride 2); global average pooling;
    ``fc = Linear(64, num_classes)``. Any input size works thanks to the global pooling.

    Shortcuts: identity where shapes agree, and a 1×1 conv + BatchNorm projection ("option B")
    where the stride or the channel count changes. The paper's CIFAR models use the
    parameter-free zero-padding shortcut ("option A"), which is not supported: a slicing/padding
    shortcut hides the coupling between the residual channels from Torch-Pruning's dependency
    graph, whereas with projections every channel of a stage's residual stream is tied to
    explicit layers, so those channels are pruned together consistently. Option B adds
    16·32 + 2·32 + 32·64 + 2·64 = 2,752 parameters.

    Convolutions use Kaiming-normal initialisation (fan-out, ReLU gain); BatchNorm weights start
    at 1 and biases at 0.

    :param depth: total depth ``6n + 2`` (20, 32, 44, 56, 110, ...).
    :param num_classes: number of output logits.
    :param in_channels: input image channels.
    :param width: channels of the first stage (the paper's 16); the stages have ``width``, ``2 width``,
        ``4 width``.
    :param stem_stride: stride of the first convolution (1 in the paper; 2 halves the resolution of every stage,
        a quarter of the multiply-accumulates, for 28×28 inputs).
    """

    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16, stem_stride: int = 1
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CifarResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if width < 1 or stem_stride < 1:
            raise ValueError(f"CifarResNet 'width' and 'stem_stride' must be >= 1, got {width}, {stem_stride}")
        self.depth = depth
        self.num_classes = num_classes
        self.stage_channels = (width, 2 * width, 4 * width)
        blocks_per_stage = (depth - 2) // 6
        c1, c2, c3 = self.stage_channels
        self.conv1 = _conv3x3(in_channels, c1, stem_stride)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(c1, c1, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(c1, c2, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(c2, c3, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)
        self._init_weights()

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.avgpool(out).flatten(1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (n = 3) of He et al. (2016), §4.2, with projection shortcuts."""
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 (n = 9) of He et al. (2016), §4.2, with projection shortcuts."""
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels)


def small_resnet(
    depth: int = 20, num_classes: int = 10, in_channels: int = 1, width: int = 8, stem_stride: int = 2
) -> CifarResNet:
    """A small residual network for MNIST-sized data: :class:`CifarResNet` (He et al. 2016, §4.2) with half the
    channels (8/16/32) and a stride-2 first convolution (28×28 inputs run the stages at 14/7/4 pixels), about
    1/16 of ResNet-20's multiply-accumulates; 7 of its 9 blocks have identity shortcuts (SR-init candidates)."""
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, width=width, stem_stride=stem_stride)
