"""Small layers that physical removal produces.

:class:`FeatureSelectLinear` is what a ``Linear`` becomes when some of its *input features* are removed (an
input-feature gate site, see :mod:`pyroprune.gates`) but the layer that produces those features cannot shrink --
e.g. the pixels of the input image, or single positions of a convolution's flattened output. It keeps the kept
features' positions in a buffer and multiplies only them:

.. math::

    y = W_{:, K}\\, x_K + b, \\qquad K = \\texttt{in\\_index} \\subseteq \\{0, \\dots, d - 1\\},

so its weight has ``len(K)`` columns instead of ``d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeatureSelectLinear"]


class FeatureSelectLinear(nn.Linear):
    """A ``Linear`` that reads only the input features ``in_index`` of its ``original_in_features`` inputs.

    ``in_features`` is the reduced width (the weight is ``[out_features, len(in_index)]``); the layer still takes
    inputs whose last dimension has ``original_in_features`` entries. ``in_index`` is a registered ``long``
    buffer, so it is part of the state dict (and of :func:`~pyroprune.serialization.save_pruned`'s file).

    :param in_index: positions of the kept input features, strictly increasing, in ``[0, original_in_features)``.
    :param out_features: output width.
    :param bias: whether the layer has a bias.
    :param original_in_features: width of the input the layer receives.
    :raises ValueError: for an empty, unsorted or out-of-range ``in_index``.
    """

    def __init__(
        self,
        in_index: torch.Tensor | Sequence[int],
        out_features: int,
        bias: bool = True,
        original_in_features: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        index = torch.as_tensor(in_index, dtype=torch.long).reshape(-1).cpu()
        if index.numel() == 0:
            raise ValueError("FeatureSelectLinear needs at least one input feature")
        original = int(original_in_features) if original_in_features is not None else int(index.max()) + 1
        if bool((index[1:] <= index[:-1]).any()) or int(index[0]) < 0 or int(index[-1]) >= original:
            raise ValueError(
                f"FeatureSelectLinear: in_index must be strictly increasing within [0, {original}), got "
                f"{index.tolist()[:10]}{'...' if index.numel() > 10 else ''}"
            )
        super().__init__(index.numel(), out_features, bias=bias, device=device, dtype=dtype)
        self.original_in_features = original
        self.register_buffer("in_index", index.to(device=device) if device is not None else index)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, keep: torch.Tensor | Sequence[int], original_in_features: int | None = None
    ) -> FeatureSelectLinear:
        """The layer that computes ``linear(x)`` when the inputs outside ``keep`` are zero.

        :param linear: the layer; its weight's columns ``keep`` (and its bias) are copied.
        :param keep: positions (in ``linear``'s input) of the input features to keep.
        :param original_in_features: the input width, default ``linear.in_features``.
        """
        w = linear.weight
        keep = torch.as_tensor(keep, dtype=torch.long, device=w.device).reshape(-1)
        new = cls(
            keep.cpu(),
            linear.out_features,
            bias=linear.bias is not None,
            original_in_features=original_in_features if original_in_features is not None else linear.in_features,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(w.index_select(1, keep))
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new.weight.requires_grad_(w.requires_grad)
        if new.bias is not None:
            new.bias.requires_grad_(linear.bias.requires_grad)
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.index_select(-1, self.in_index), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, original_in_features={self.original_in_features}"
