"""The one place the probe reads the optimizer's last update direction (for ``dir_curvature``).

Today the direction travels as a mutable attribute, ``optimizer.last_direction``, and across a resume through
the probe's own checkpoint (``Probe.state_dict``'s "last_direction", handed back once by
``Probe.restored_direction``). TODO(lead): once the last direction is optimizer state (checkpointed with it),
read it from there here and drop the probe's copy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from .context import ProbeContext


def last_direction(ctx: "ProbeContext") -> Tensor | None:
    """The direction that produced θ at this probe step.

    Args:
        ctx: the probe step's context.

    Returns:
        The optimizer's last direction; at the first probe after a resume (the optimizer has none yet) the
        one restored from the probe's checkpoint; None before the first step.
    """
    g = ctx.optimizer.last_direction
    if g is None:
        g = ctx.probe.restored_direction()
    return g


def direction_to_save(optimizer) -> Tensor | None:
    """A CPU copy of the optimizer's last direction for the probe's checkpoint (None if it has none).

    Args:
        optimizer: the run's optimizer, or None (a probe built without one).
    """
    if optimizer is None or optimizer.last_direction is None:
        return None
    return optimizer.last_direction.detach().to("cpu", copy=True)
