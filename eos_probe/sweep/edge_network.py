"""The network's side of the edge experiment: continuation runs from θ_N and their first-passage (blow-up) times.

A continuation runs the run's own optimizer from the checkpoint at step size η with ``seeds`` independent
direction streams (stacked rows of one θ). Each seed's loss is read at every step for free (the mean of the
central pair, L(θ) + O(μ²)); its blow-up time τ_f is the first step at which the loss exceeds f × L(θ_N) (or is
not finite), for every factor f at once, censored at the horizon. From a grid of η:

* **edge against the horizon**: at horizon h and factor f, the protocol "more than half of the seeds blow up
  within h" switches from stable to unstable where the median τ_f(η) crosses h; the point is the log-log
  interpolation of the median, the interval the grid bracket.
* **law of the first-passage time**: the median τ against η, fitted three ways on log τ (a power law with a
  threshold τ = A(η − η_c)^−ν, a pure power law τ = Aη^−p, an Arrhenius law τ = A·exp(B/η)), with bootstrap
  intervals over seeds. A horizon-independent edge is a threshold η_c > 0 that the data resolve.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

FACTORS = (3.0, 10.0, 100.0)
HORIZONS = (20, 40, 80, 160, 320, 640)


def load_start(run_path: str | Path, ckpt_path: str | Path, lr: float, seeds: int, seed: int,
               with_args: bool = False) -> tuple:
    """(setup, optimizer, θ₀ (d,), θ (seeds, d), optimizer state, checkpoint step[, make_optimizer kwargs]) of a
    continuation at `lr` from a checkpoint."""
    from ..config import TrainConfig
    from ..optim import make_optimizer
    from ..reading import open_run
    from ..build import build
    from ..checkpoint import load_checkpoint

    with open_run(run_path) as f:
        cfg = json.loads(f.attrs["config"])
    cfg.update(lr=float(lr), out=None)
    setup = build(TrainConfig(**cfg))
    ck = load_checkpoint(Path(ckpt_path))
    theta0 = ck["theta"].to(setup.theta.device, setup.theta.dtype)
    c = setup.config
    args = dict(preset=c.optimizer, lr=float(lr), momentum=c.momentum, momentum_style=c.momentum_style,
                beta2=c.beta2, eps=c.eps, queries=c.queries, mu=c.mu, directions=c.directions,
                difference=c.difference, seed=seed)
    opt = make_optimizer(**args)
    theta = theta0.expand(seeds, -1).clone()
    state = opt.init(theta)
    for part, tensors in ck["state"].items():  # momentum buffers carry over, one copy per seed
        for name, t in tensors.items():
            state[part][name].copy_(t.to(theta.device).expand_as(state[part][name]))
    out = (setup, opt, theta0, theta, state, int(ck["step"]))
    return out + (args,) if with_args else out


def step_losses(info: dict, objective, theta) -> Any:
    """Per-row loss at θ before the step: the free reading of a ZO step, else an evaluation."""
    import torch

    v = info.get("loss_pm", info.get("loss"))
    if v is None or not isinstance(v, torch.Tensor) or v.shape != theta.shape[:-1]:
        v = objective.evaluate(theta)[0]
    return v.detach().to("cpu", torch.float64)


def continuation_task(run_path: str, ckpt_path: str, lr: float, seeds: int, horizon: int,
                      factors: tuple[float, ...] = FACTORS, seed: int = 12345, record_every: int = 1,
                      threads: int | None = None, blowup: float | None = None) -> dict[str, Any]:
    """`seeds` continuations at step size `lr`: per seed and factor the blow-up time (None: censored at the
    horizon) and the loss trajectory (every `record_every` steps). Stops once every seed is past max(factors)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    factors = tuple(sorted(set(float(f) for f in factors) | ({float(blowup)} if blowup else set())))
    setup, opt, theta0, theta, state, step0 = load_start(run_path, ckpt_path, lr, seeds, seed)
    obj = setup.objective
    loss0 = float(obj.evaluate(theta0)[0])
    tau = np.full((len(factors), seeds), -1, dtype=int)
    traj: list[list[float]] = []
    thresholds = np.asarray(factors)[:, None] * loss0
    t = 0
    for t in range(horizon + 1):
        if t < horizon:
            info = opt.step(obj, theta, state, step0 + t)
            losses = step_losses(info, obj, theta).numpy()  # the loss at step t (before the update)
        else:
            losses = obj.evaluate(theta)[0].to("cpu", torch.float64).numpy()
        bad = ~np.isfinite(losses)[None, :] | (losses[None, :] > thresholds)
        tau = np.where((tau < 0) & bad, t, tau)
        if t % record_every == 0:
            traj.append([float(x) if math.isfinite(x) else math.inf for x in losses])
        if (tau[-1] >= 0).all():
            break
    out = {"lr": float(lr), "seeds": seeds, "horizon": horizon, "factors": list(factors), "loss0": loss0,
           "tau": {f"{f:g}": [int(x) if x >= 0 else None for x in tau[i]] for i, f in enumerate(factors)},
           "steps_run": t, "record_every": record_every, "losses": traj, "seconds": time.perf_counter() - t0}
    if blowup:  # the old protocol's verdict, for callers that still count blow-ups
        out["blown"] = int(sum(x is not None for x in out["tau"][f"{float(blowup):g}"]))
    return out


def _pack(args: list[dict[str, Any]], threads: int | None = None) -> list[dict[str, Any]]:
    """Engine adaptor: a task is a list of continuation settings (one per η)."""
    return [continuation_task(**a, threads=threads) for a in args]


def run_grid(run_path: str | Path, ckpt_path: str, etas: list[float], *, seeds: int = 8, horizon: int = 640,
             factors: tuple[float, ...] = FACTORS, engine: str = "local", workers: int | None = 1,
             address: str | None = None, seed: int = 12345, record_every: int = 4) -> list[dict[str, Any]]:
    """Continuations at every η of the grid, one task per η on the sweep engine (sorted by η). A local engine with
    one worker runs the tasks in this process (a process pool of one only adds its start-up)."""
    from .engines import make_engine

    n = max(1, workers or 1)
    tasks = [[{"run_path": str(run_path), "ckpt_path": str(ckpt_path), "lr": float(e), "seeds": seeds,
               "horizon": horizon, "factors": tuple(factors), "seed": seed, "record_every": record_every}]
             for e in etas]
    if engine == "local" and n == 1:
        return sorted((_pack(t)[0] for t in tasks), key=lambda r: r["lr"])
    eng = make_engine(engine, workers=n, n_tasks=len(etas), address=address)
    out = []
    try:
        for i, res in eng.run(tasks, fn=_pack):
            r = res[0]
            if "tau" not in r:
                raise UserError(f"a continuation run at lr {etas[i]:g} failed: {r.get('error', r)}")
            out.append(r)
    finally:
        if hasattr(eng, "close"):
            eng.close()
    return sorted(out, key=lambda r: r["lr"])


def tau_matrix(grid: list[dict[str, Any]], factor: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(η (K,), τ (K, seeds) with censored seeds = inf, horizon) of one blow-up factor."""
    key = f"{float(factor):g}"
    etas = np.array([r["lr"] for r in grid], dtype=float)
    taus = np.array([[math.inf if x is None else float(x) for x in r["tau"][key]] for r in grid], dtype=float)
    return etas, taus, int(min(r["horizon"] for r in grid))


def half_time(taus: np.ndarray) -> np.ndarray:
    """Per row: the step by which more than half of the seeds have blown up (the ⌊n/2⌋+1-th smallest τ;
    inf when that many never do): the protocol's verdict at horizon h is "unstable" iff half_time ≤ h."""
    taus = np.asarray(taus, dtype=float)
    return np.sort(taus, axis=1)[:, taus.shape[1] // 2]


def classify(losses: list[float], loss0: float, blown: bool, spike: float = 2.0, back: float = 1.2) -> str:
    """One continuation's outcome: "diverges" (blew up at the largest factor), "catapult" (loss above spike × L0,
    then back below back × L0), "self-stabilises" (never above spike × L0), else "unresolved" (still up)."""
    x = np.asarray(losses, dtype=float)
    if blown or not np.all(np.isfinite(x)):
        return "diverges"
    if x.max() < spike * loss0:
        return "self-stabilises"
    return "catapult" if x[-1] <= back * loss0 else "unresolved"


def outcomes(res: dict[str, Any], model: str = "network") -> dict[str, int]:
    """Counts of :func:`classify` over the seeds of a continuation or surrogate result."""
    losses = res["losses"][model] if isinstance(res["losses"], dict) else res["losses"]
    taus = res["tau"][model] if model in res["tau"] else res["tau"]
    top = taus[max(taus, key=float)]
    counts: dict[str, int] = {}
    for s in range(res["seeds"]):
        c = classify([row[s] for row in losses], res["loss0"], top[s] is not None)
        counts[c] = counts.get(c, 0) + 1
    return counts
