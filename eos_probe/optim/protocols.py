"""The interfaces an optimizer is built from (docs/design.md, "Optimizers"), as `typing.Protocol`s.

They document what `eos_probe.optim.Optimizer` and the trainer call; the built-in objective, sources
and rules satisfy them structurally (no inheritance needed).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


class Objective(Protocol):
    """A loss over flat parameters θ of shape (d,) or stacked (K, d) (`eos_probe.objective.Objective`,
    `eos_probe.data.quadratic.QuadraticObjective`)."""

    dim: int

    def loss(self, theta: Tensor) -> Tensor:
        """L(θ) of shape θ.shape[:-1]."""

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, accuracy, gradient) at one θ of shape (d,)."""

    def evaluate(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, accuracy) of shape θ.shape[:-1]."""


@runtime_checkable
class StackedGradients(Protocol):
    """Capability: gradients of K stacked copies θ (K, d) in one call. An objective without it is looped
    over the copies (`eos_probe.optim.sources.ExactSource`)."""

    def value_and_grad_batched(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, accuracy, gradient) with lead shape θ.shape[:-1]."""


class GradientSource(Protocol):
    """Turns the objective at θ into a direction g (`ExactSource`, `TwoPointSource`, `CoCDSource`).

    Attributes: `name`, `zeroth_order` (g from loss values only), `evaluates_loss` (the step returns
    the loss at θ in its info, so logging needs no extra forward).
    """

    name: str
    zeroth_order: bool
    evaluates_loss: bool

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        """The source's state (checkpointed as is)."""

    def __call__(self, objective: Objective, theta: Tensor, state: dict, step: int) -> tuple[Tensor, dict]:
        """(g, info) at θ for this step; θ comes back unchanged."""

    def forwards_per_step(self, dim: int) -> float:
        """One step's cost in full-batch forward-pass equivalents (a backward counts as two forwards)."""

    def config(self) -> dict:
        """The settings recorded in the run file."""


class UpdateRule(Protocol):
    """Turns a direction g into a step on θ in place (`GD`, `HeavyBall`, `Adam`)."""

    name: str

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        """The rule's state (moments; checkpointed as is)."""

    def apply(self, theta: Tensor, g: Tensor, state: dict, step: int) -> None:
        """θ ← the update of θ with direction g."""

    def preconditioner(self, state: dict) -> Tensor | None:
        """The diagonal P the last update divided by (docs/theory.md §3), None for unpreconditioned rules."""

    def config(self) -> dict:
        """The settings recorded in the run file."""
