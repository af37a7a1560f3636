"""The one place the probe reads the optimizer's last update direction (for ``dir_curvature``).

The direction is optimizer state (``state["update"]["direction"]``, `Optimizer.direction`), checkpointed with
it. Checkpoints written before that kept it in the probe's own state ("last_direction"); the probe still reads
those once after a resume.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..optim import Optimizer

if TYPE_CHECKING:
    from .context import ProbeContext


def last_direction(ctx: "ProbeContext") -> Tensor | None:
    """The direction that produced θ at this probe step.

    Args:
        ctx: the probe step's context.

    Returns:
        The direction from the optimizer state; None before the first step (the state holds zeros then),
        or, right after resuming from an old checkpoint without it, the copy the probe's checkpoint kept.
    """
    g = Optimizer.direction(ctx.state) if isinstance(ctx.state, dict) else None
    if g is not None and bool(g.any()):
        return g
    return ctx.probe.restored_direction()
