"""The small CNN of the reference setup (docs/theory.md §6).

conv3×3(→32, no bias)–GELU–AvgPool2–conv3×3(→64, no bias)–GELU–AvgPool2–Flatten–Linear(→128, no bias)–GELU–
Linear(→classes): 544,100 parameters on 3×32×32 with 4 classes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError
from . import common

DEFAULTS = {"widths": (32, 64), "hidden": 128, "activation": "gelu"}


class CNN(nn.Module):
    """[conv3×3 (padding 1, no bias) → activation → AvgPool2] per width → Flatten → MLP head."""

    def __init__(self, input_shape: tuple[int, int, int], widths: Sequence[int], hidden: int,
                 num_classes: int, activation: str):
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), common.Activation(activation),
                       nn.AvgPool2d(2)]
            c, h, w = width, h // 2, w // 2
        layers += [nn.Flatten(), nn.Linear(c * h * w, hidden, bias=False), common.Activation(activation),
                   nn.Linear(hidden, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(input_shape: tuple, num_classes: int, *, widths: Sequence[int], hidden: int,
          activation: str) -> CNN:
    """Build the CNN; each conv stage halves the image, so H and W must be >= 2**len(widths)."""
    shape = common.image_shape("cnn", input_shape)
    widths = common.int_tuple("cnn", "widths", widths)
    hidden = common.pos_int("cnn", "hidden", hidden)
    if min(shape[1:]) < 2 ** len(widths):
        raise UserError(f"model 'cnn': {len(widths)} conv stages halve the image {len(widths)} times, "
                        f"too many for a {shape[1]}×{shape[2]} image; use fewer widths")
    return CNN(shape, widths, hidden, num_classes, common.activation("cnn", activation))
