"""Monte-Carlo check of the CoCD threshold with the project's own `cocd` source on quadratics (docs/theory.md §5d).

The source (:class:`eos_probe.optim.cocd.CoCDSource`, central differences of radius ε, exact on a
quadratic up to round-off) and the GD rule are stepped on :class:`eos_probe.data.quadratic.QuadraticObjective`
exactly as the trainer steps them, with every step size × start stacked as one θ of shape (R, d) and a
per-row step size. The map is deterministic and linear, so the per-cycle growth of ‖(θ, G)‖ from a
random start converges to ρ(Φ); its sign decides stability. Rows are rescaled when their norm leaves
[1e-4, 1e4] (valid: the map is linear in (θ, G)), so the finite differences never lose precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .cocd import schedule, spectral_radius


@dataclass(frozen=True)
class CoCDGrowth:
    """Measured and predicted growth per cycle at one step size (``rate`` = slope of log‖(θ, G)‖ per cycle,
    worst start; ``predicted = log ρ(Φ)``)."""

    lr: float
    rate: float
    predicted: float


def simulate_cocd(H, lrs: Sequence[float], block: int, gamma: float, *, memory: int | None = None,
                  weight_decay: float = 0.0, eps: float = 0.1, starts: int = 2, cycles: int = 300,
                  fit_from: float = 0.5, seed: int = 0, predict: bool = True) -> list[CoCDGrowth]:
    """Run the project's cocd optimizer on ``½θᵀHθ`` at each step size (``starts`` random starts each).

    Theory: [docs/theory.md#cocd][cocd].
    """
    import torch

    from ..data.quadratic import QuadraticObjective
    from ..optim import make_optimizer

    H = np.asarray(H, dtype=float)
    H = 0.5 * (H + H.T)
    d = H.shape[0]
    s = schedule(d, block, gamma, memory, weight_decay)
    lam, Q = np.linalg.eigh(H)
    lrs = [float(a) for a in lrs]
    R = len(lrs) * starts
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend
    try:
        obj = QuadraticObjective(lam, Q, dtype=torch.float64)
        lr_rows = torch.as_tensor(np.repeat(lrs, starts), dtype=torch.float64)[:, None]
        opt = make_optimizer("cocd" if gamma > 0 else "bccd", lr=lr_rows, cocd_block=block,
                             cocd_gamma=gamma if gamma > 0 else None, cocd_eps=eps, cocd_memory=memory,
                             weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        theta = torch.randn(R, d, generator=gen, dtype=torch.float64)
        logs = _log_norms(opt, obj, theta, cycles, s.period)
    finally:
        torch.set_num_threads(old)
    start = int(fit_from * cycles)
    tt = np.arange(start, cycles + 1)
    slopes = np.polyfit(tt, logs[start:], 1)[0].reshape(len(lrs), starts)
    out = []
    for i, lr in enumerate(lrs):
        pred = math.log(spectral_radius(H, lr, block, gamma, memory=memory, weight_decay=weight_decay)) \
            if predict else math.nan
        out.append(CoCDGrowth(lr, float(slopes[i].max()), pred))
    return out


def _log_norms(opt, obj, theta, cycles: int, period: int) -> np.ndarray:
    """log ‖(θ, G)‖ of each row after every cycle of `period` steps (rows rescaled when they grow or shrink
    far, the scale kept in an offset), shape (cycles + 1, rows)."""
    import torch

    state = opt.init(theta)
    G = state["source"]["buffer"]
    logs = np.zeros((cycles + 1, theta.shape[0]))
    offset = np.zeros(theta.shape[0])

    def record(c: int) -> None:
        nrm = torch.sqrt((theta * theta).sum(-1) + (G * G).sum(-1)).numpy()
        logs[c] = np.log(np.maximum(nrm, 1e-300)) + offset
        for r in np.flatnonzero((nrm > 1e4) | (nrm < 1e-4)):
            if not math.isfinite(nrm[r]) or nrm[r] == 0:
                continue
            f = 1.0 / nrm[r]
            theta[r] *= f
            G[r] *= f
            offset[r] -= math.log(f)

    record(0)
    step = 0
    for c in range(cycles):
        for _ in range(period):
            opt.step(obj, theta, state, step)
            step += 1
        record(c + 1)
    return logs


def mc_critical_lr(H, block: int, gamma: float, guess: float, *, span: float = 0.1, points: int = 21,
                   refine: int = 2, **kw) -> float:
    """The step size where the simulated growth changes sign, by nested grids around ``guess``
    (``points`` step sizes over ±``span``·guess, then ``refine`` finer grids around the first crossing).
    Resolution: ``2·span/(points−1)/(points−1)^refine`` of ``guess``.

    Theory: [docs/theory.md#cocd][cocd].
    """
    lo, hi = guess * (1 - span), guess * (1 + span)
    grid = np.linspace(lo, hi, points)
    for level in range(refine + 1):
        rates = [g.rate for g in simulate_cocd(H, grid, block, gamma, predict=False, **kw)]
        unstable = [i for i, r in enumerate(rates) if r > 0]
        if level == 0 and not unstable:
            return math.inf
        if level == 0 and unstable[0] == 0:
            return float(grid[0])  # already unstable at the left end: outside the window
        if unstable:
            i = unstable[0]
            lo, hi = (float(grid[i - 1]) if i > 0 else lo), float(grid[i])
        else:  # refined grids are interior points: the crossing lies between the last one and hi
            lo = float(grid[-1])
        grid = np.linspace(lo, hi, points + 2)[1:-1]
    return 0.5 * (lo + hi)
