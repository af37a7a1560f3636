"""Optimizers = gradient source × update rule. `make_optimizer` builds the presets."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import InvalidValueError
from .. import presets as _presets
from ..presets import DEFAULT_DIRECTIONS, DIFFERENCES, DIRECTIONS, MOMENTUM_STYLES, NAMES, check_lr
from .cocd import CoCDSource
from .protocols import GradientSource, Objective, StackedGradients, UpdateRule
from .rules import GD, Adam, HeavyBall
from .hybrid import GroupPlan, GroupRule, GroupSource, GroupSpec, group_specs
from .sources import ExactSource, RiseSource, TwoPointSource, stream_seed

PRESETS = NAMES
#: coherent coordinate descent presets (docs/theory.md §5d): the CoCD source with plain GD steps
COCD_PRESETS = tuple(n for n, p in _presets.PRESETS.items() if p.source == "cocd")

__all__ = ["Optimizer", "make_optimizer", "PRESETS", "DIRECTIONS", "DIFFERENCES", "MOMENTUM_STYLES",
           "ExactSource", "TwoPointSource", "CoCDSource", "RiseSource",
           "HybridOptimizer", "GroupSpec", "group_specs", "COCD_PRESETS", "GD", "HeavyBall", "Adam", "stream_seed",
           "Objective", "GradientSource", "UpdateRule", "StackedGradients"]


@dataclass
class Optimizer:
    """A gradient source and an update rule. State is a dict of dicts of tensors that checkpoints as is.

    The state's parts: ``"source"`` and ``"rule"`` (their own state) and ``"update"``, whose
    ``"direction"`` is the direction g of the last step (zeros before the first step, and after resuming
    from a checkpoint written before it was part of the state). `last_direction` is the same tensor,
    kept as an attribute for callers that have the optimizer but not the state.
    """

    preset: str
    source: GradientSource
    rule: UpdateRule
    last_direction: Tensor | None = field(default=None, repr=False)

    @property
    def zeroth_order(self) -> bool:
        return self.source.zeroth_order

    def init(self, theta: Tensor) -> dict[str, dict[str, Tensor]]:
        """The state for θ (shape (d,) or stacked (K, d)): source, rule and the last update's direction."""
        return {"source": self.source.init(theta), "rule": self.rule.init(theta),
                "update": {"direction": torch.zeros_like(theta)}}

    def step(self, objective, theta: Tensor, state: dict, step: int) -> dict:
        """One update of θ (in place). Returns what the source measured on the way (loss at θ for FO)."""
        g, info = self.source(objective, theta, state["source"], step)
        _keep_direction(state, g)
        self.last_direction = g
        self.rule.apply(theta, g, state["rule"], step)
        return info

    @staticmethod
    def direction(state: dict) -> Tensor | None:
        """The direction g of the last step from the state (None for a state without one)."""
        return state.get("update", {}).get("direction")

    def preconditioner(self, state: dict) -> Tensor | None:
        """The rule's current diagonal P (Adam, docs/theory.md §3), None for non-adaptive rules."""
        return self.rule.preconditioner(state["rule"])

    def config(self) -> dict:
        return {"preset": self.preset, **self.source.config(), **self.rule.config()}


@dataclass
class HybridOptimizer(Optimizer):
    """An `Optimizer` whose source and rule act per parameter group (`eos_probe.optim.hybrid`).

    `groups` maps each group's name to its `GroupSpec` (index, zeroth_order, lr, momentum, queries,
    directions); `progress` (step ↦ fraction of the current task done) decides when a group's `until`
    freezes it, and may be replaced by the trainer (task schedules).
    """

    plan: GroupPlan | None = field(default=None, repr=False)

    @property
    def groups(self) -> dict[str, GroupSpec]:
        return self.plan.groups

    @property
    def progress(self):
        return self.plan.progress

    @progress.setter
    def progress(self, fn) -> None:
        self.plan.progress = fn


def _keep_direction(state: dict, g: Tensor) -> None:
    """Copy g into the state's "update" part: a copy, because a source may return its own buffer
    (CoCD's G, the ZO scratch vector), which generic code over the state must not see twice."""
    update = state.setdefault("update", {})
    kept = update.get("direction")
    if kept is None or kept.shape != g.shape or kept.dtype != g.dtype:
        update["direction"] = g.detach().clone()
    else:
        kept.copy_(g)


def make_optimizer(preset: str, *, lr, momentum: float | None = None, momentum_style: str = "heavy_ball",
                   beta2: float = 0.999, eps: float = 1e-8, queries: int = 1, mu: float = 1e-3,
                   directions: str = DEFAULT_DIRECTIONS, difference: str = "central", seed: int = 0,
                   frozen_preconditioner: Tensor | None = None, cocd_block: int | None = None,
                   cocd_gamma: float | None = None, cocd_eps: float = 0.1, cocd_memory: int | None = None,
                   weight_decay: float = 0.0, norm_match: bool = False, rise_blocks: str | int = "tensor",
                   param_sizes: list[int] | None = None, groups: dict[str, GroupSpec] | None = None,
                   progress=None) -> Optimizer:
    """Build a preset (`eos_probe.presets.PRESETS`): gd, gdm, adam (exact gradients), zo-gd, zo-gdm, zo-adam
    (two-point ZO), or cocd, bccd (coherent / block cyclic coordinate descent: B = `cocd_block` coordinates
    refreshed per step, default ⌈1 % of d⌉; decay γ = `cocd_gamma`, default 0.99 for cocd and 0 for bccd;
    radius `cocd_eps`).

    Args:
        preset: the optimizer's name.
        lr: a float, or a per-copy tensor of shape (K, 1).
        momentum: β for gdm and β1 for adam (default: the preset's, 0.9); an error for presets without momentum.
        norm_match: two-point presets: divide the estimate by √κ (zo-gd-nm always does).
        rise_blocks, param_sizes: rise: ``"tensor"`` (blocks = the parameter tensors of sizes
            `param_sizes`, flat order) or a chunk length N; `queries` is q per block.
        groups, progress: zo-fc, hybrid: the groups (`eos_probe.optim.hybrid.group_specs`) and
            step ↦ task progress for their `until` (required for these presets).

    Returns:
        The :class:`Optimizer`.

    Raises:
        InvalidValueError: an unknown preset, a bad lr or an option the preset does not take.
    """
    p = _presets.preset(preset)
    if not isinstance(lr, Tensor):
        check_lr(lr)
    if p.grouped or p.source == "rise":
        return _make_shaped(p, lr=lr, momentum=momentum, queries=queries, seed=seed, rise_blocks=rise_blocks,
                            param_sizes=param_sizes, groups=groups, progress=progress)
    if p.source == "cocd":
        p.check_momentum(momentum)
        if p.name == "bccd" and cocd_gamma not in (None, 0, 0.0):
            raise InvalidValueError(f"bccd is CoCD with gamma = 0 (got gamma {cocd_gamma}); use cocd for gamma > 0")
        gamma = (0.99 if p.name == "cocd" else 0.0) if cocd_gamma is None else cocd_gamma
        source = CoCDSource(block=cocd_block, gamma=gamma, eps=cocd_eps, memory=cocd_memory,
                            weight_decay=weight_decay)
        return Optimizer(p.name, source, GD(lr))
    if weight_decay:
        raise InvalidValueError(f"weight decay is implemented for the cocd and bccd presets only, not {p.name}")
    if norm_match and p.source != "two_point":
        raise InvalidValueError(f"norm matching applies to two-point ZO optimizers, not {p.name}")
    source = (TwoPointSource(queries=queries, mu=mu, directions=directions, difference=difference, seed=seed,
                             norm_match=norm_match or p.norm_match)
              if p.source == "two_point" else ExactSource())
    p.check_momentum(momentum)
    beta = p.momentum if momentum is None else momentum
    if p.rule == "gd":
        rule = GD(lr)
    elif p.rule == "momentum":
        rule = HeavyBall(lr, beta, momentum_style)
    else:
        rule = Adam(lr, beta, beta2, eps, frozen_preconditioner)
    return Optimizer(p.name, source, rule)


def _make_shaped(p, *, lr, momentum, queries: int, seed: int, rise_blocks, param_sizes, groups,
                 progress) -> Optimizer:
    """The rise preset (RISE source × GD) and the grouped presets (`HybridOptimizer`)."""
    p.check_momentum(momentum)
    if p.source == "rise":
        return Optimizer(p.name, RiseSource(queries=queries, blocks=rise_blocks, sizes=param_sizes, seed=seed),
                         GD(lr))
    if not groups:
        raise InvalidValueError(f"optimizer {p.name} needs parameter groups ([groups.<name>] tables in the config)")
    if progress is None:
        raise InvalidValueError(f"optimizer {p.name} needs progress (step -> fraction of the task done) for `until`")
    plan = GroupPlan(dict(groups), progress, seed)
    return HybridOptimizer(p.name, GroupSource(plan), GroupRule(plan), plan=plan)
