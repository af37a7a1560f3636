"""The price of a probe, said before the first one is paid and after it: timings in full-batch forward passes.

One timed Hessian-vector product × the products the probe plans gives the price line; the first probe's
measured seconds give the cost line. Both state the share of the run (fixed schedule) or the cadence (budget)
they imply, from the cost of one training step (`step_forwards`).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np
import torch

from .._util import sync
from ..config import DEFAULT_PROBE_BUDGET, TrainConfig
from ..curvature import HessianOperator


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls after one warm-up (device work waited for)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward_seconds(objective: Any, theta: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of one full-batch loss evaluation at θ (after one warm-up)."""
    th = theta if theta.dim() == 1 else theta.reshape(-1, theta.shape[-1])[0]
    return _median_seconds(lambda: objective.loss(th), th.device, repeats)


def hvp_seconds(objective: Any, theta: torch.Tensor, backend: str = "auto", repeats: int = 2) -> float:
    """Median wall time of one Hessian-vector product at θ (after one warm-up), with the probe's back end."""
    op = HessianOperator(objective, theta, backend=backend)
    v = torch.randn(theta.shape[-1], generator=torch.Generator().manual_seed(0), dtype=theta.dtype).to(theta.device)
    return _median_seconds(lambda: op.matvec(v), theta.device, repeats)


def step_forwards(optimizer: Any, log_every: int, dim: int) -> float:
    """Cost of one training step in forward passes: the source's own (`forwards_per_step`: 2q central or
    q+1 forward ZO, 3 for an exact gradient, 2B for CoCD), plus the loss log's forward every `log_every`
    steps for sources that do not measure the loss themselves."""
    src = optimizer.source
    log = 0.0 if src.evaluates_loss else 1.0 / log_every
    return src.forwards_per_step(dim) + log


def _cadence(fe: float, step: float, cfg: TrainConfig, share_every: int | None) -> str:
    """'every N steps -> expected probe share S%' (fixed) or the budget's implied cadence (auto)."""
    if not math.isfinite(fe):
        return ""
    if share_every is not None:
        share = fe / (fe + share_every * step)
        return f"every {share_every} steps -> expected probe share {100 * share:.0f}%"
    budget = cfg.probe_budget if cfg.probe_budget is not None else DEFAULT_PROBE_BUDGET
    every = fe * (1 - budget) / (budget * step)
    return (f"budget {100 * budget:.0f}% of wall time -> about one probe every {every:,.0f} steps when quiet, "
            "more where the curvature moves")


def _every(cfg: TrainConfig) -> int | None:
    return None if cfg.probe_every == "auto" else int(cfg.probe_every)


def probe_price_line(probe: Any, obj: Any, theta: Any, cfg: TrainConfig, opt: Any, log_every: int) -> str:
    """The price of one probe before the first is paid: one timed Hessian-vector product × the products the
    probe plans (`Probe.planned_hvps`), in forward passes and seconds, the share or cadence it implies, and a
    warning naming the flag that caps it when a fixed schedule would spend most of the run probing."""
    th = theta if theta.dim() == 1 else theta[0]
    fwd = forward_seconds(obj, th)
    hvp = hvp_seconds(obj, th, probe.hvp_backend_name())
    n = probe.planned_hvps()
    fe = n * hvp / fwd if fwd > 0 else math.nan
    step = step_forwards(opt, log_every, int(th.shape[-1]))
    line = (f"probe price: about {n} HVPs = {fe:,.0f} forward passes (~{n * hvp:.1f} s; one HVP timed at "
            f"{1e3 * hvp:.0f} ms) per probe; one step = {step:.2g} forwards; " + _cadence(fe, step, cfg, _every(cfg)))
    every = _every(cfg)
    if every is not None and math.isfinite(fe) and fe / (fe + every * step) > 0.5:
        line += ("\nwarning: the probe would take most of this run's time; cap it with --probe-every auto "
                 f"(--probe-budget, default {DEFAULT_PROBE_BUDGET:g}) or a larger --probe-every")
    return line


def probe_cost_line(row: dict, seconds: float, obj: Any, theta: Any, cfg: TrainConfig, opt: Any,
                    log_every: int, copies: int) -> str:
    """One line after the first probe: its measured cost in full-batch forward passes and the share of the run
    (fixed schedule) or the cadence (budget) it implies (step cost: `step_forwards`)."""
    fwd = forward_seconds(obj, theta)
    fe = seconds / fwd if fwd > 0 else math.nan
    step = step_forwards(opt, log_every, int(theta.shape[-1]))
    nhvp = int(sum(v for k, v in row.items() if k.endswith("_nhvp") and np.ndim(v) == 0 and np.isfinite(v)))
    per = " per copy" if copies > 1 else ""
    return (f"probe cost: one probe = {fe:,.0f} forward passes{per} ({seconds:.1f} s, {nhvp} HVPs); one step = "
            f"{step:.2g} forwards; " + _cadence(fe, step, cfg, _every(cfg)))
