"""Hybrid optimizers: per-parameter-group gradient sources and update rules (docs/theory.md §5b, ZO-FC).

Each group (a flat-θ index set from `eos_probe.groups.resolve_groups`) has its own source (``exact``: its
slice of the one exact gradient of the step, shared by every exact group; ``two_point``: a ZO estimate that
perturbs only the group's coordinates), an optional clip of its estimate to a norm, its own rule (gd,
heavy_ball, adam) and lr, and ``until``: the fraction of each task after which the group is frozen
(``progress(step) >= until``; progress is the trainer's task progress, step/steps without tasks).
Parameters in no group never move. The update is still source × rule: `GroupSource` assembles one
direction g over all of θ (zeros outside the active groups) and `GroupRule` applies each active group's
rule to its slice. One copy only (θ of shape (d,)): sweeps of stacked copies are refused.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidValueError
from ..groups import resolve_groups
from ..presets import default
from .rules import GD, Adam, HeavyBall
from .sources import GRADIENT_FORWARDS, PURPOSE_PART, ExactSource, TwoPointSource, stream_seed

Progress = Callable[[int], float]


@dataclass
class GroupSpec:
    """One group of a hybrid optimizer, as the hybrid-band probe metric reads it.

    Attributes: `name`, `index` (sorted flat-θ LongTensor), `source` ("exact" | "two_point"), `rule`
    ("gd" | "heavy_ball" | "adam"), `lr`, `momentum` (β; β1 for adam; 0 for gd), `queries`, `directions`,
    `mu` (ZO only; exact groups keep the defaults), `clip` (norm, None = no clip), `until` (fraction of a
    task after which the group is frozen; 1 = never).
    """

    name: str
    index: Tensor
    source: str = "exact"
    rule: str = "gd"
    lr: float = 0.01
    momentum: float = 0.0
    queries: int = default("queries")
    directions: str = default("directions")
    mu: float = default("mu")
    clip: float | None = None
    until: float = 1.0

    @property
    def zeroth_order(self) -> bool:
        """Whether the group's estimate comes from loss values only."""
        return self.source == "two_point"

    def settings(self) -> dict:
        """The group's settings without its index (the run file's optimizer config)."""
        out = {"source": self.source, "rule": self.rule, "lr": self.lr, "momentum": self.momentum,
               "clip": self.clip, "until": self.until, "size": int(self.index.numel())}
        if self.zeroth_order:
            out.update(queries=self.queries, directions=self.directions, mu=self.mu)
        return out


class _GroupObjective:
    """The objective as a function of one group's coordinates, the others held at θ (out of place)."""

    def __init__(self, objective, theta: Tensor, index: Tensor) -> None:
        self._objective, self._theta, self._index = objective, theta, index

    def __getattr__(self, name: str):  # model, x, vectorizes_stacks: what the batching rule reads
        return getattr(self._objective, name)

    def loss(self, sub: Tensor) -> Tensor:
        full = self._theta.expand(*sub.shape[:-1], self._theta.shape[-1]).clone()
        full.index_copy_(full.dim() - 1, self._index, sub)
        return self._objective.loss(full)


@dataclass
class GroupPlan:
    """The groups and the task-progress callable, shared by the source and the rule of one optimizer."""

    groups: dict[str, GroupSpec]
    progress: Progress
    seed: int = 0

    @classmethod
    def from_settings(cls, s: Any) -> "GroupPlan":
        """The plan of a grouped preset, built once per optimizer and shared by its source and rule.

        Raises:
            InvalidValueError: no groups, or no progress callable for their `until`.
        """
        if "plan" not in s.shared:
            preset = s.preset
            if not s.groups:
                raise InvalidValueError(f"optimizer {preset} needs parameter groups ([groups.<name>] tables in "
                                        "the config)")
            if s.progress is None:
                raise InvalidValueError(f"optimizer {preset} needs progress (step -> fraction of the task done) "
                                        "for `until`")
            s.shared["plan"] = cls(dict(s.groups), s.progress, s.seed)
        return s.shared["plan"]

    def active(self, step: int) -> list[GroupSpec]:
        """The groups that train at `step` (progress below their `until`)."""
        p = float(self.progress(step))
        return [g for g in self.groups.values() if p < g.until]


class GroupSource:
    """The direction g over all of θ: each active group's estimate in its slice, zeros elsewhere."""

    name = "groups"
    evaluates_loss = False  # the exact gradient is skipped once every exact group is frozen
    stackable = False

    def __init__(self, plan: GroupPlan) -> None:
        self.plan = plan
        self._exact = ExactSource()
        self._zo: dict[str, TwoPointSource] = {}
        for i, g in enumerate(plan.groups.values()):
            if g.zeroth_order:
                self._zo[g.name] = TwoPointSource(queries=g.queries, mu=g.mu, directions=g.directions,
                                                  seed=stream_seed(plan.seed, i, PURPOSE_PART))

    @classmethod
    def from_settings(cls, s: Any) -> "GroupSource":
        """The source of a grouped preset (`eos_probe.optim.make_optimizer`)."""
        return cls(GroupPlan.from_settings(s))

    @property
    def zeroth_order(self) -> bool:
        """True when any group is zeroth order (logging costs a forward, as for ZO runs)."""
        return any(g.zeroth_order for g in self.plan.groups.values())

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {}

    def __call__(self, objective, theta: Tensor, state: dict, step: int) -> tuple[Tensor, dict]:
        if theta.dim() != 1:
            raise InvalidValueError("hybrid optimizers train one copy (θ of shape (d,)), not stacked copies")
        active = self.plan.active(step)
        out = torch.zeros_like(theta)
        info: dict = {}
        full = None
        if any(not g.zeroth_order for g in active):  # one exact gradient, shared by every exact group
            full, info = self._exact(objective, theta, state, step)
        for g in active:
            if g.zeroth_order:
                est, zinfo = self._zo[g.name](_GroupObjective(objective, theta, g.index), theta[g.index], {}, step)
                info.setdefault("loss_pm", zinfo["loss_pm"])
            else:
                est = full[g.index]
            out.index_copy_(0, g.index, _clipped(est, g.clip))
        return out, info

    def forwards_per_step(self, dim: int) -> float:
        """One exact gradient when any group is exact, plus each ZO group's queries (all groups active)."""
        groups = self.plan.groups.values()
        exact = GRADIENT_FORWARDS if any(not g.zeroth_order for g in groups) else 0.0
        return exact + sum(self._zo[g.name].forwards_per_step(dim) for g in groups if g.zeroth_order)

    def config(self) -> dict:
        return {"source": self.name, "groups": {n: g.settings() for n, g in self.plan.groups.items()}}


def _clipped(g: Tensor, clip: float | None) -> Tensor:
    """g scaled to norm `clip` if longer (a tensor factor: no host synchronisation)."""
    if clip is None:
        return g
    return g * torch.clamp(clip / (g.norm() + torch.finfo(g.dtype).tiny), max=1.0)


def _rule(g: GroupSpec):
    if g.rule == "gd":
        return GD(g.lr)
    if g.rule == "heavy_ball":
        return HeavyBall(g.lr, g.momentum)
    return Adam(g.lr, g.momentum)


class GroupRule:
    """Each active group's own rule on its slice of θ; frozen groups and ungrouped parameters stay put.

    State: the rules' tensors named ``<group>.<name>`` (one flat dict, checkpointed as is).
    """

    name = "groups"

    def __init__(self, plan: GroupPlan) -> None:
        self.plan = plan
        self.rules = {n: _rule(g) for n, g in plan.groups.items()}

    @classmethod
    def from_settings(cls, s: Any) -> "GroupRule":
        """The rule of a grouped preset: the plan its source built."""
        return cls(GroupPlan.from_settings(s))

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        out = {}
        for n, g in self.plan.groups.items():
            for k, t in self.rules[n].init(theta[..., g.index]).items():
                out[f"{n}.{k}"] = t
        return out

    def _state(self, state: dict, name: str) -> dict[str, Tensor]:
        prefix = name + "."
        return {k[len(prefix):]: t for k, t in state.items() if k.startswith(prefix)}

    def apply(self, theta: Tensor, g: Tensor, state: dict, step: int) -> None:
        for spec in self.plan.active(step):
            sub = theta[spec.index]
            self.rules[spec.name].apply(sub, g[spec.index], self._state(state, spec.name), step)
            theta.index_copy_(0, spec.index, sub)

    def preconditioner(self, state: dict) -> None:
        """None: the groups' rules are not one preconditioner over θ."""
        return None

    def config(self) -> dict:
        return {"rule": self.name}


def group_specs(model: torch.nn.Module, tables: dict[str, dict], device: torch.device | str = "cpu"
                ) -> dict[str, GroupSpec]:
    """GroupSpecs from validated, filled ``[groups.<name>]`` tables (`eos_probe.config.group_tables`).

    Raises:
        UserError: a group name matching no parameter, or two groups sharing one (`resolve_groups`).
    """
    index = resolve_groups(model, list(tables), device)
    return {n: GroupSpec(n, index[n], **{k: v for k, v in t.items()}) for n, t in tables.items()}


def default_progress(steps: int) -> Progress:
    """step ↦ step/steps: the progress of a run without tasks."""
    return lambda step: step / steps
