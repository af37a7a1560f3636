"""CIFAR-style ResNet of the reference setup (docs/theory.md §6).

Stem conv3×3(→width) + activation, then stages of basic blocks; stage i has width·2^i channels and
(for i > 0) starts with a stride-2 block whose shortcut is a stride-2 conv3×3 + norm. Each residual branch
conv–norm–act–conv–norm is scaled by 1/sqrt(total blocks) (1/3 for (3,3,3)), there is no activation after the
sum, global average pooling feeds a zero-initialised linear head. 292,532 parameters on 3×32×32, 4 classes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError
from . import common

DEFAULTS = {"width": 16, "stages": (3, 3, 3), "norm": "group", "groups": 16, "activation": "gelu",
            "residual_scale": None}


def _norm(kind: str, groups: int, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    return common.GroupNorm(min(groups, channels), channels)


class Block(nn.Module):
    """Basic residual block: shortcut(x) + scale · norm(conv(act(norm(conv(x)))))."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, groups: int, activation: str,
                 scale: float):
        super().__init__()
        self.scale = scale
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, groups, cout)
        self.act = common.Activation(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, groups, cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), _norm(norm, groups, cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        return self.shortcut(x) + self.scale * branch

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"


class ResNet(nn.Module):
    """Stem → stages of ``Block`` → global average pool → linear head (zero at init)."""

    def __init__(self, in_channels: int, num_classes: int, width: int, stages: Sequence[int], norm: str,
                 groups: int, activation: str, residual_scale: float):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  common.Activation(activation))
        blocks: list[nn.Module] = []
        cin = width
        for i, depth in enumerate(stages):
            cout = width * 2 ** i
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Block(cin, cout, stride, norm, groups, activation, residual_scale))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def build(input_shape: tuple, num_classes: int, *, width: int, stages: Sequence[int], norm: str,
          groups: int, activation: str, residual_scale: float | None) -> ResNet:
    """Build the ResNet; ``residual_scale=None`` means 1/sqrt(total number of blocks)."""
    c, _, _ = common.image_shape("resnet", input_shape)
    width = common.pos_int("resnet", "width", width)
    stages = common.int_tuple("resnet", "stages", stages)
    norm = common.choice("resnet", "norm", norm, ["group", "none"])
    groups = common.pos_int("resnet", "groups", groups)
    if residual_scale is None:
        residual_scale = 1.0 / math.sqrt(sum(stages))
    residual_scale = common.pos_float("resnet", "residual_scale", residual_scale)
    if norm == "group":
        for i in range(len(stages)):
            ch = width * 2 ** i
            if ch % min(groups, ch):
                raise UserError(f"model 'resnet': groups={groups} does not divide the {ch} channels of "
                                f"stage {i + 1}; choose groups dividing width={width}")
    return ResNet(c, num_classes, width, stages, norm, groups, common.activation("resnet", activation),
                  residual_scale)
