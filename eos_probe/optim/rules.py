"""Update rules: turn a direction g into a step on θ, in place (docs/design.md, "Optimizers").

All rules are elementwise, so they work for θ of shape (d,) or (K, d). Per stacked copy, `lr` may be
  - a tensor of shape (K, 1): one vectorised update (Monte Carlo over many rows), or
  - a list/tuple of K floats — and so may the momentum β and Adam's β1: each row is updated by a scalar
    rule of its own, so a copy rounds exactly as a separate run with those values does (η/β sweeps in
    one process reproduce separate runs bitwise, given the same directions).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidValueError
from ..presets import DEFAULT_MOMENTUM, OPTIONS, default


def _check(option: str, value) -> None:
    """Check a rule's setting (or each per-copy value of it) against its `eos_probe.presets.OPTIONS` domain."""
    for v in value if isinstance(value, (list, tuple)) else (value,):
        OPTIONS[option].check(v)


def _row_rules(make, **params) -> list | None:
    """Scalar rules, one per copy, if any hyper-parameter is a list/tuple of per-copy values; else None."""
    lengths = {len(v) for v in params.values() if isinstance(v, (list, tuple))}
    if not lengths:
        return None
    if len(lengths) > 1:
        raise InvalidValueError(f"per-copy hyper-parameters have different lengths {sorted(lengths)}; give one value per copy")
    (k,) = lengths
    rows = [{n: (v[i] if isinstance(v, (list, tuple)) else v) for n, v in params.items()} for i in range(k)]
    return [make(**r) for r in rows]


def _apply_rows(rows: list, theta: Tensor, g: Tensor, state: dict, step: int) -> None:
    if theta.dim() != 2 or theta.shape[0] != len(rows):
        raise ValueError(f"{len(rows)} per-copy rules need θ of shape ({len(rows)}, d), got {tuple(theta.shape)}")
    for k, rule in enumerate(rows):
        rule.apply(theta[k], g[k], {n: t[k] for n, t in state.items()}, step)


def _listed(v):
    return list(v) if isinstance(v, (list, tuple)) else v


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
        self._params = {"lr": lr}
        self._rows = _row_rules(GD, **self._params)

    @classmethod
    def from_settings(cls, s: Any) -> "GD":
        """The rule of a preset (`eos_probe.optim.make_optimizer`)."""
        return cls(s.lr)

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {}

    def apply(self, theta: Tensor, g: Tensor, state: dict, step: int) -> None:
        if self._rows is not None:
            return _apply_rows(self._rows, theta, g, state, step)
        _axpy(theta, self.lr, g)

    def preconditioner(self, state: dict) -> None:
        """None: plain gradient steps are not preconditioned."""
        return None

    def config(self) -> dict:
        return {"rule": self.name}


class HeavyBall:
    """Momentum. heavy_ball (torch.optim.SGD): m ← βm + g, θ ← θ − ηm.  ema: m ← βm + (1−β)g, θ ← θ − ηm."""

    def __init__(self, lr, momentum=DEFAULT_MOMENTUM, style: str = default("momentum_style")) -> None:
        _check("momentum", momentum)
        OPTIONS["momentum_style"].check(style)
        self.lr, self.momentum, self.style = lr, momentum, style
        self.name = style
        self._params = {"lr": lr, "momentum": momentum, "style": style}
        self._rows = _row_rules(HeavyBall, **self._params)

    @classmethod
    def from_settings(cls, s: Any) -> "HeavyBall":
        """The rule of a momentum preset (`eos_probe.optim.make_optimizer`)."""
        return cls(s.lr, s["momentum"], s["momentum_style"])

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {"m": torch.zeros_like(theta)}

    def apply(self, theta: Tensor, g: Tensor, state: dict, step: int) -> None:
        if self._rows is not None:
            return _apply_rows(self._rows, theta, g, state, step)
        m = state["m"]
        if self.style == "heavy_ball":
            m.mul_(self.momentum).add_(g)
        else:
            m.mul_(self.momentum).add_(g, alpha=1 - self.momentum)
        _axpy(theta, self.lr, m)

    def preconditioner(self, state: dict) -> None:
        """None: momentum steps are not preconditioned."""
        return None

    def config(self) -> dict:
        return {"rule": self.name, "momentum": _listed(self.momentum), "momentum_style": self.style}


class Adam:
    """Adam as preconditioned EMA momentum (docs/theory.md §3), identical to bias-corrected Adam:

        m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g⊙g,
        P_{t+1} = (1 − β1^{t+1}) · (√(v/(1 − β2^{t+1})) + ε),  θ ← θ − η P_{t+1}⁻¹ m.

    With `frozen_preconditioner` the diagonal P is fixed and v is never updated (used to validate the
    preconditioned stability theory on quadratics).

    Theory: [docs/theory.md#zo-adam][zo-adam].
    """

    name = "adam"

    def __init__(self, lr, beta1=DEFAULT_MOMENTUM, beta2: float = default("beta2"), eps: float = default("eps"),
                 frozen_preconditioner: Tensor | None = None) -> None:
        _check("momentum", beta1)
        _check("beta2", beta2)
        _check("eps", eps)
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.frozen = frozen_preconditioner
        self._params = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                        "frozen_preconditioner": frozen_preconditioner}
        self._rows = _row_rules(Adam, **self._params)

    @classmethod
    def from_settings(cls, s: Any) -> "Adam":
        """The rule of an Adam preset (`eos_probe.optim.make_optimizer`)."""
        return cls(s.lr, s["momentum"], s["beta2"], s["eps"], s.frozen_preconditioner)

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        state = {"m": torch.zeros_like(theta)}
        if self.frozen is None:
            state["v"] = torch.zeros_like(theta)
            state["P"] = torch.ones_like(theta)
        return state

    def apply(self, theta: Tensor, g: Tensor, state: dict, step: int) -> None:
        if self._rows is not None:
            return _apply_rows(self._rows, theta, g, state, step)
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
        return {"rule": self.name, "beta1": _listed(self.beta1), "beta2": self.beta2, "eps": self.eps,
                "frozen_preconditioner": self.frozen is not None}


def stack_rules(rules: list):
    """One rule for K stacked copies from K scalar rules of one kind (e.g. one per η of a sweep).

    Hyper-parameters that differ between the copies become per-copy lists, so each row is updated by
    its own scalar rule and rounds exactly as that copy would in a separate run.
    """
    kinds = {type(r) for r in rules}
    if len(kinds) != 1:
        raise ValueError(f"cannot stack rules of different kinds: {sorted(k.__name__ for k in kinds)}")
    params = {}
    for name, first in rules[0]._params.items():
        values = [r._params[name] for r in rules]
        same = all(v is first or (not isinstance(v, Tensor) and v == first) for v in values)
        params[name] = first if same else list(values)
    rule = type(rules[0])(**params)
    if rule._rows is None and len(rules) > 1:  # identical copies: still one scalar rule per row
        rule._rows = list(rules)
    return rule
