"""Optimizers = gradient source × update rule. `make_optimizer` builds a preset from the registry.

A preset (`eos_probe.presets.PRESETS`) names a source and a rule of `eos_probe.presets.SOURCES` and `RULES`;
each of those names its implementing class here (a module of this package), which builds itself from the
preset's resolved options with ``from_settings(settings)``. Adding an optimizer is a source or rule module, a
preset line (and its component line) in `eos_probe.presets`, and a test: nothing here changes.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .. import presets as _presets
from ..presets import Component, check_lr
from .protocols import GradientSource, UpdateRule

__all__ = ["HybridOptimizer", "Optimizer", "Settings", "component_class", "make_optimizer"]


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

    plan: Any = field(default=None, repr=False)

    @property
    def groups(self) -> dict:
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


@dataclass
class Settings:
    """What a source's or rule's ``from_settings`` is built from.

    Attributes:
        preset: the preset's name.
        options: the preset's options, resolved (`eos_probe.presets.Preset.resolve`); also ``settings[name]``.
        lr: a float, a per-copy tensor of shape (K, 1), or a list of per-copy floats.
        seed: the run seed (random sources derive their streams from it).
        param_sizes: the parameter tensors' sizes in flat order (RISE's blocks), if known.
        groups, progress: the grouped presets' `GroupSpec`s and step ↦ task progress.
        frozen_preconditioner: Adam with a fixed diagonal P (validation of the preconditioned theory).
        shared: what the source and the rule of one optimizer build once and share (the grouped plan).
    """

    preset: str
    options: dict[str, Any]
    lr: Any
    seed: int = 0
    param_sizes: list[int] | None = None
    groups: dict | None = None
    progress: Callable[[int], float] | None = None
    frozen_preconditioner: Tensor | None = None
    shared: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.options[name]


def component_class(component: Component) -> type:
    """The class implementing a registered source or rule (imported from this package on first use)."""
    module, _, name = component.impl.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def make_optimizer(preset: str, *, lr: Any, seed: int = 0, param_sizes: list[int] | None = None,
                   groups: dict | None = None, progress: Callable[[int], float] | None = None,
                   frozen_preconditioner: Tensor | None = None, **options: Any) -> Optimizer:
    """Build a preset (`eos_probe.presets.PRESETS`) with the given options.

    Args:
        preset: the optimizer's name.
        lr: a float, or a per-copy tensor of shape (K, 1).
        seed: the run seed.
        param_sizes: rise: the parameter tensors' sizes in flat order (its blocks are those tensors).
        groups, progress: zo-fc, hybrid: the groups (`eos_probe.optim.hybrid.group_specs`) and step ↦ task
            progress for their `until` (required for these presets).
        frozen_preconditioner: adam presets: a fixed diagonal P (v is never updated).
        **options: `eos_probe.presets.OPTIONS` by name (e.g. ``momentum=0.9, queries=4, cocd_block=8``);
            the preset's defaults fill the others, and options of other sources and rules are ignored unless
            they are exclusive to them.

    Returns:
        The :class:`Optimizer` (a :class:`HybridOptimizer` for grouped presets).

    Raises:
        InvalidValueError: an unknown preset or option, a bad lr or value, or an option the preset does not take.
    """
    p = _presets.preset(preset)
    if not isinstance(lr, Tensor):
        check_lr(lr)
    s = Settings(p.name, p.resolve(options), lr, seed, param_sizes, groups, progress, frozen_preconditioner)
    source = component_class(_presets.SOURCES[p.source]).from_settings(s)
    rule = component_class(_presets.RULES[p.rule]).from_settings(s)
    if "plan" in s.shared:
        return HybridOptimizer(p.name, source, rule, plan=s.shared["plan"])
    return Optimizer(p.name, source, rule)
