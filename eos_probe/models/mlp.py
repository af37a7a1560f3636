"""Fully connected network on flattened images."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import common

DEFAULTS = {"hidden": (128, 128), "activation": "gelu"}


class MLP(nn.Module):
    """flatten → [Linear → activation] per hidden width → Linear(→ classes)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, activation: str):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), common.Activation(activation)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(input_shape: tuple, num_classes: int, *, hidden: Sequence[int], activation: str) -> MLP:
    """Build an MLP for images of shape (C, H, W)."""
    shape = common.image_shape("mlp", input_shape)
    hidden = common.int_tuple("mlp", "hidden", hidden)
    return MLP(math.prod(shape), hidden, num_classes, common.activation("mlp", activation))
