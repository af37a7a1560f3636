"""K ≥ 1 copies trained together: θ stacked as (K, d) (or (d,) for one copy), their optimizer state, and which
copies are still alive.

Copies of a sweep differ only in lr/momentum: one stacked optimizer draws one direction per query for all of
them (as K separate runs of one seed would) and applies each copy's rule to its own row.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from ..optim import Optimizer
from ..optim.rules import stack_rules


def stack_optimizers(opts: list[Optimizer], source: Any = None) -> Optimizer:
    """One optimizer for stacked copies.

    Args:
        opts: the copies' optimizers, in row order.
        source: the gradient source to use; default the first copy's. It draws the directions shared by all
            copies, as K separate runs of one seed draw them.

    Returns:
        an `Optimizer` whose rule is the copies' rules stacked row by row.
    """
    source = source if source is not None else opts[0].source
    if not getattr(source, "stackable", True):
        raise UserError(f"optimizer {opts[0].preset} trains one copy at a time; run the values of the sweep "
                        "as separate runs")
    if hasattr(source, "shared_directions"):
        source.shared_directions = True
    return Optimizer(opts[0].preset, source, stack_rules([o.rule for o in opts]))


class CopyStack:
    """θ, optimizer state and optimizer of the live copies; row i of θ is copy `alive[i]`.

    Args:
        theta: the initial parameters, shape (d,); stacked copies start from clones of it.
        optimizers: one optimizer per copy (scalar hyper-parameters: what the probe and the file describe).
            With one copy it is used as is and θ keeps shape (d,).
    """

    def __init__(self, theta: torch.Tensor, optimizers: list[Optimizer]) -> None:
        self.optimizers = optimizers
        self.stacked = len(optimizers) > 1
        if self.stacked:
            self.theta = theta.expand(len(optimizers), -1).clone()
            self.opt = stack_optimizers(optimizers)
        else:
            self.theta, self.opt = theta, optimizers[0]
        self.state = self.opt.init(self.theta)
        self.alive = list(range(len(optimizers)))

    def restore(self, ckpt: dict) -> int:
        """Load θ and the optimizer state from a checkpoint (a one-copy run's); returns its step."""
        self.theta.copy_(ckpt["theta"].to(self.theta.device))
        for part, tensors in ckpt["state"].items():
            for name, t in tensors.items():
                self.state[part][name].copy_(t.to(self.theta.device))
        return int(ckpt["step"])

    def view(self, i: int) -> tuple[torch.Tensor, dict]:
        """θ and optimizer state of the copy in row i (views: they follow the updates)."""
        if not self.stacked:
            return self.theta, self.state
        return self.theta[i], {part: {n: t[i] for n, t in v.items()} for part, v in self.state.items()}

    def probe_view(self, i: int) -> tuple[torch.Tensor, dict, Optimizer]:
        """`view(i)` and the copy's own optimizer (the last update direction is in the state's row)."""
        theta, state = self.view(i)
        return theta, state, self.optimizers[self.alive[i]]

    def step(self, objective: Any, step: int) -> dict:
        """One update of every live copy (θ in place); returns what the source measured on the way."""
        return self.opt.step(objective, self.theta, self.state, step)

    def drop(self, rows: list[int]) -> None:
        """Remove the copies in `rows` (diverged) from the stack; the others continue unchanged."""
        keep = [i for i in range(len(self.alive)) if i not in rows]
        for i in sorted(rows, reverse=True):
            del self.alive[i]
        if not self.alive:
            return
        idx = torch.tensor(keep, device=self.theta.device)
        self.theta = self.theta.index_select(0, idx)
        self.state = {part: {n: t.index_select(0, idx) for n, t in v.items()} for part, v in self.state.items()}
        self.opt = stack_optimizers([self.optimizers[j] for j in self.alive], source=self.opt.source)
