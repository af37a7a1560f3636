"""Building blocks shared by the model families, and validation of their options.

LayerNorm and RMSNorm are written in plain tensor ops on purpose: ``torch.func.hessian`` (vmap over
forward-over-reverse) of ``F.layer_norm`` returns a wrong Hessian (torch 2.13, CPU), and fused kernels
(SDPA, cuDNN RNNs) lack double backward. GroupNorm uses ``F.group_norm``, whose higher derivatives are
correct (checked in the tests) and which is several times faster than plain ops.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

#: smooth activations only: finite differences and HVPs are meaningless across ReLU kinks
ACTIVATIONS: dict[str, Any] = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
    "softplus": F.softplus,
}


class Activation(nn.Module):
    """A smooth elementwise activation chosen by name (see ``ACTIVATIONS``)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self._fn = ACTIVATIONS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self.name


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension (biased variance, as torch), with affine parameters."""

    def __init__(self, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, -1, keepdim=True, correction=0)
        return torch.addcmul(self.bias, (x - mean) * torch.rsqrt(var + self.eps), self.weight)


class GroupNorm(nn.Module):
    """GroupNorm for (n, C, H, W) tensors: statistics per example over each group of channels."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5):
        super().__init__()
        if channels % groups:
            raise UserError(f"GroupNorm: {groups} groups do not divide {channels} channels; "
                            "choose a group count that divides every channel count")
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's fused kernel (3-5x faster than plain ops on CPU); its forward-over-reverse, double
        # backward and vmapped Hessians are checked against dense Hessians in tests/test_models.py
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, channels={self.weight.shape[0]}"


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learned gain."""

    def __init__(self, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * self.weight


# ---------------------------------------------------------------------------------------------
# option validation: every message names the model, the option, the value and what is allowed


def _bad(model: str, option: str, value: Any, want: str) -> UserError:
    return UserError(f"model {model!r}: option {option}={value!r} is invalid; {want}")


def pos_int(model: str, option: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools and non-integral floats rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or int(value) < minimum:
        raise _bad(model, option, value, f"expected an integer >= {minimum}")
    return int(value)


def int_tuple(model: str, option: str, value: Any, minimum: int = 1) -> tuple[int, ...]:
    """``value`` as a non-empty tuple of ints >= ``minimum`` (a bare int means a 1-tuple)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        raise _bad(model, option, value, f"expected a non-empty list of integers >= {minimum}")
    try:
        return tuple(pos_int(model, option, v, minimum) for v in value)
    except UserError:
        raise _bad(model, option, value, f"expected a non-empty list of integers >= {minimum}") from None


def pos_float(model: str, option: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0 with ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise _bad(model, option, value, "expected a finite number " + (">= 0" if allow_zero else "> 0"))
    return float(value)


def choice(model: str, option: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise _bad(model, option, value, "choose one of: " + ", ".join(choices))
    return value


def activation(model: str, value: Any) -> str:
    """Validate an activation name (smooth activations only)."""
    if value == "relu":
        raise _bad(model, "activation", value, "ReLU has kinks that make finite differences and "
                   "Hessians meaningless; choose one of: " + ", ".join(ACTIVATIONS))
    return choice(model, "activation", value, list(ACTIVATIONS))


def image_shape(model: str, input_shape: tuple) -> tuple[int, int, int]:
    """Validate an image input shape (C, H, W)."""
    if len(input_shape) != 3:
        raise UserError(f"model {model!r} takes images: input_shape must be (C, H, W), got {input_shape!r}")
    c, h, w = (pos_int(model, "input_shape", v) for v in input_shape)
    return c, h, w


def sequence_shape(model: str, input_shape: tuple) -> int:
    """Validate a token-sequence input shape (L,) and return L."""
    if len(input_shape) != 1:
        raise UserError(f"model {model!r} takes token sequences: input_shape must be (L,), got {input_shape!r}")
    return pos_int(model, "input_shape", input_shape[0])
