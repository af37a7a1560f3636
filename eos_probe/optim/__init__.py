"""Optimizers = gradient source × update rule. `make_optimizer` builds the presets."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import UserError
from .rules import GD, MOMENTUM_STYLES, Adam, HeavyBall
from .cocd import CoCDSource
from .sources import DIFFERENCES, DIRECTIONS, ExactSource, TwoPointSource, stream_seed

PRESETS = ("gd", "gdm", "adam", "zo-gd", "zo-gdm", "zo-adam", "cocd", "bccd")
#: coherent coordinate descent presets (docs/theory.md §5d): the CoCD source with plain GD steps
COCD_PRESETS = ("cocd", "bccd")

__all__ = ["Optimizer", "make_optimizer", "PRESETS", "DIRECTIONS", "DIFFERENCES", "MOMENTUM_STYLES",
           "ExactSource", "TwoPointSource", "CoCDSource", "COCD_PRESETS", "GD", "HeavyBall", "Adam", "stream_seed"]


@dataclass
class Optimizer:
    """A gradient source and an update rule. State is a dict of tensors that checkpoints as is."""

    preset: str
    source: object
    rule: object
    last_direction: Tensor | None = field(default=None, repr=False)

    @property
    def zeroth_order(self) -> bool:
        return isinstance(self.source, TwoPointSource) or getattr(self.source, "zeroth_order", False)

    def init(self, theta: Tensor) -> dict[str, dict[str, Tensor]]:
        return {"source": self.source.init(theta), "rule": self.rule.init(theta)}

    def step(self, objective, theta: Tensor, state: dict, step: int) -> dict:
        """One update of θ (in place). Returns what the source measured on the way (loss at θ for FO)."""
        g, info = self.source(objective, theta, state["source"], step)
        self.last_direction = g
        self.rule.apply(theta, g, state["rule"], step)
        return info

    def preconditioner(self, state: dict) -> Tensor | None:
        """Adam's current diagonal P (docs/theory.md §3), None for non-adaptive rules."""
        return self.rule.preconditioner(state["rule"]) if isinstance(self.rule, Adam) else None

    def config(self) -> dict:
        return {"preset": self.preset, **self.source.config(), **self.rule.config()}


def make_optimizer(preset: str, *, lr, momentum: float | None = None, momentum_style: str = "heavy_ball",
                   beta2: float = 0.999, eps: float = 1e-8, queries: int = 1, mu: float = 1e-3,
                   directions: str = "gaussian", difference: str = "central", seed: int = 0,
                   frozen_preconditioner: Tensor | None = None, cocd_block: int | None = None,
                   cocd_gamma: float | None = None, cocd_eps: float = 0.1, cocd_memory: int | None = None,
                   weight_decay: float = 0.0) -> Optimizer:
    """Build a preset: gd, gdm, adam (exact gradients), zo-gd, zo-gdm, zo-adam (two-point ZO), or cocd, bccd
    (coherent / block cyclic coordinate descent: B = `cocd_block` coordinates refreshed per step, default
    ⌈1 % of d⌉; decay γ = `cocd_gamma`, default 0.99 for cocd and 0 for bccd; radius `cocd_eps`).

    `momentum` is β for gdm (default 0.9) and β1 for adam (default 0.9); it is ignored by gd presets
    unless given, which is an error. `lr` may be a float or a per-copy tensor of shape (K, 1).
    """
    if preset not in PRESETS:
        raise UserError(f"unknown optimizer {preset!r}; choose one of {', '.join(PRESETS)}")
    if not isinstance(lr, Tensor) and not (lr > 0 and math.isfinite(lr)):
        raise UserError(f"lr must be a positive finite number, got {lr}")
    if preset in COCD_PRESETS:
        if momentum not in (None, 0, 0.0):
            raise UserError(f"optimizer {preset} takes no momentum (got {momentum})")
        if preset == "bccd" and cocd_gamma not in (None, 0, 0.0):
            raise UserError(f"bccd is CoCD with gamma = 0 (got gamma {cocd_gamma}); use cocd for gamma > 0")
        gamma = (0.99 if preset == "cocd" else 0.0) if cocd_gamma is None else cocd_gamma
        source = CoCDSource(block=cocd_block, gamma=gamma, eps=cocd_eps, memory=cocd_memory,
                            weight_decay=weight_decay)
        return Optimizer(preset, source, GD(lr))
    if weight_decay:
        raise UserError(f"weight decay is implemented for the cocd and bccd presets only, not {preset}")
    base = preset.removeprefix("zo-")
    source = (TwoPointSource(queries=queries, mu=mu, directions=directions, difference=difference, seed=seed)
              if preset.startswith("zo-") else ExactSource())
    if base == "gd":
        if momentum not in (None, 0, 0.0):
            raise UserError(f"optimizer {preset} takes no momentum (got {momentum}); use {preset}m")
        rule = GD(lr)
    elif base == "gdm":
        rule = HeavyBall(lr, 0.9 if momentum is None else momentum, momentum_style)
    else:
        rule = Adam(lr, 0.9 if momentum is None else momentum, beta2, eps, frozen_preconditioner)
    return Optimizer(preset, source, rule)
