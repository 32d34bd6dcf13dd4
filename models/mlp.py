"""Fully connected classifiers: the BMRS MLP, LeNet-300-100 and LeNet-500-300."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BMRSMLP", "LeNet300100", "LeNet500300"]


def _dense_stack(in_features: int, widths: list[int], activation: type[nn.Module]) -> nn.Sequential:
    """``Linear -> activation`` for every width in ``widths``, chained from ``in_features``."""
    layers: list[nn.Module] = []
    prev = in_features
    for width in widths:
        layers += [nn.Linear(prev, width), activation()]
        prev = width
    return nn.Sequential(*layers)


class _FlatMLP(nn.Module):
    """Shared body: flatten the input, run ``features`` (hidden layers), then ``classifier``."""

    features: nn.Sequential
    classifier: nn.Linear

    def __init__(self, in_features: int, widths: list[int], num_classes: int, activation: type[nn.Module]) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1 or any(w < 1 for w in widths):
            raise ValueError(
                f"layer sizes must be positive, got in={in_features}, hidden={widths}, classes={num_classes}"
            )
        self.in_features = in_features
        self.num_classes = num_classes
        self.features = _dense_stack(in_features, widths, activation)
        self.classifier = nn.Linear(widths[-1] if widths else in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(1)))


class BMRSMLP(_FlatMLP):
    """Deep tanh MLP used in the BMRS experiments.

    Source: D. Wright, C. Igel, R. Selvan (2024), "BMRS: Bayesian Model Reduction for Structured
    Pruning", NeurIPS 2024.

    Layers: ``depth`` hidden ``Linear(·, hidden)`` layers, each followed by ``tanh``, then a
    ``Linear(hidden, num_classes)`` classifier. With the defaults this is
    784-50-50-50-50-50-50-10. Inputs of shape ``[B, 1, 28, 28]`` or ``[B, 784]`` (any shape whose
    trailing dimensions hold ``in_features`` values) are flattened in :meth:`forward`.

    :param in_features: number of input features after flattening (64 for scikit-learn digits).
    :param hidden: units per hidden layer.
    :param depth: number of hidden layers (at least 1).
    :param num_classes: number of output logits.
    """

    def __init__(self, in_features: int = 784, hidden: int = 50, depth: int = 6, num_classes: int = 10) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        super().__init__(in_features, [hidden] * depth, num_classes, nn.Tanh)


class LeNet300100(_FlatMLP):
    """LeNet-300-100, a two-hidden-layer ReLU MLP.

    Source: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner (1998), "Gradient-Based Learning Applied
    to Document Recognition", Proc. IEEE; the pruning benchmark of SBP (Neklyudov et al. 2017)
    and VIBNet (Dai et al. 2018).

    Layers: ``Linear(in_features, 300)`` - ReLU - ``Linear(300, 100)`` - ReLU -
    ``Linear(100, num_classes)``; 266,610 parameters for 784 inputs and 10 classes.

    :param in_features: number of input features after flattening.
    :param num_classes: number of output logits.
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__(in_features, [300, 100], num_classes, nn.ReLU)


class LeNet500300(_FlatMLP):
    """LeNet-500-300, a wider two-hidden-layer ReLU MLP.

    Source: K. Neklyudov, D. Molchanov, A. Ashukha, D. Vetrov (2017), "Structured Bayesian
    Pruning via Log-Normal Multiplicative Noise", NeurIPS 2017 (SBP).

    Layers: ``Linear(in_features, 500)`` - ReLU - ``Linear(500, 300)`` - ReLU -
    ``Linear(300, num_classes)``; 545,810 parameters for 784 inputs and 10 classes.

    :param in_features: number of input features after flattening.
    :param num_classes: number of output logits.
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__(in_features, [500, 300], num_classes, nn.ReLU)
