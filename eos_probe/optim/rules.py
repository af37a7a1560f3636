"""Update rules: turn a direction g into a step on θ, in place (DESIGN.md, "source × rule").

All rules are elementwise, so they work for θ of shape (d,) or (K, d); `lr` may be a float or a tensor
of shape (K, 1) (one step size per stacked copy, for η sweeps in one process).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UserError

MOMENTUM_STYLES = ("heavy_ball", "ema")


def _check_beta(name: str, beta: float) -> None:
    if not (0.0 <= beta < 1.0):
        raise UserError(f"{name} must lie in [0, 1), got {beta}")


def _axpy(theta: Tensor, lr, direction: Tensor) -> None:
    """θ ← θ − lr·direction for a scalar or per-copy tensor lr."""
    if isinstance(lr, Tensor):
        theta.sub_(direction * lr)
    else:
        theta.add_(direction, alpha=-lr)


class GD:
    """θ ← θ − η g."""

    name = "gd"

    def __init__(self, lr) -> None:
        self.lr = lr

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {}

    def apply(self, theta: Tensor, g: Tensor, state: dict, step: int) -> None:
        _axpy(theta, self.lr, g)

    def config(self) -> dict:
        return {"rule": self.name}


class HeavyBall:
    """Momentum. heavy_ball (torch.optim.SGD): m ← βm + g, θ ← θ − ηm.  ema: m ← βm + (1−β)g, θ ← θ − ηm."""

    def __init__(self, lr, momentum: float = 0.9, style: str = "heavy_ball") -> None:
        _check_beta("momentum", momentum)
        if style not in MOMENTUM_STYLES:
            raise UserError(f"unknown momentum style {style!r}; choose one of {', '.join(MOMENTUM_STYLES)}")
        self.lr, self.momentum, self.style = lr, momentum, style
        self.name = style

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {"m": torch.zeros_like(theta)}

    def apply(self, theta: Tensor, g: Tensor, state: dict, step: int) -> None:
        m = state["m"]
        if self.style == "heavy_ball":
            m.mul_(self.momentum).add_(g)
        else:
            m.mul_(self.momentum).add_(g, alpha=1 - self.momentum)
        _axpy(theta, self.lr, m)

    def config(self) -> dict:
        return {"rule": self.name, "momentum": self.momentum, "momentum_style": self.style}


class Adam:
    """Adam as preconditioned EMA momentum (THEORY.md §3), identical to bias-corrected Adam:

        m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g⊙g,
        P_{t+1} = (1 − β1^{t+1}) · (√(v/(1 − β2^{t+1})) + ε),  θ ← θ − η P_{t+1}⁻¹ m.

    With `frozen_preconditioner` the diagonal P is fixed and v is never updated (used to validate the
    preconditioned stability theory on quadratics).
    """

    name = "adam"

    def __init__(self, lr, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 frozen_preconditioner: Tensor | None = None) -> None:
        _check_beta("beta1 (momentum)", beta1)
        _check_beta("beta2", beta2)
        if not (eps > 0 and math.isfinite(eps)):
            raise UserError(f"eps must be a positive finite number, got {eps}")
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.frozen = frozen_preconditioner

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        state = {"m": torch.zeros_like(theta)}
        if self.frozen is None:
            state["v"] = torch.zeros_like(theta)
            state["P"] = torch.ones_like(theta)
        return state

    def apply(self, theta: Tensor, g: Tensor, state: dict, step: int) -> None:
        m = state["m"]
        m.mul_(self.beta1).add_(g, alpha=1 - self.beta1)
        if self.frozen is not None:
            _axpy(theta, self.lr, m / self.frozen)
            return
        v, P = state["v"], state["P"]
        v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        t = step + 1
        torch.sqrt(v, out=P)
        P.mul_(1.0 / math.sqrt(1 - self.beta2 ** t)).add_(self.eps).mul_(1 - self.beta1 ** t)
        _axpy(theta, self.lr, m / P)

    def preconditioner(self, state: dict) -> Tensor:
        """The diagonal P used by the last update (ones before the first step)."""
        return self.frozen if self.frozen is not None else state["P"]

    def config(self) -> dict:
        return {"rule": self.name, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "frozen_preconditioner": self.frozen is not None}
