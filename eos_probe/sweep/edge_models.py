"""Measured edges of the local models: the sign change of the growth rate of E[ΔᵀH₊Δ].

The run's own optimizer runs on L = ½ΔᵀHΔ in H's eigenbasis (`theory.simulate_growth`, many seeds per η, every η
of a round stacked in one tensor) and the growth rate of the positive-curvature second moment E[ΔᵀH₊Δ] is fitted
per η. Two models, both from the network's spectrum at θ_N:

* **positive part** (H₊): the negative eigenvalues set to 0. Its rate changes sign at the η* of that spectrum;
  measuring it is the theory's own check (Monte Carlo against the formula).
* **Taylor** (H, indefinite): the negative modes kept. They escape at every η > 0 (a mean growth of
  1 + η|λ| per step) and feed noise into the positive block, so E[ΔᵀH₊Δ] grows at every η: the model has no edge.

The linear term gᵀΔ of the Taylor model L(θ_N) + gᵀΔ + ½ΔᵀHΔ does not move either edge: the central difference
is exact on a quadratic, so the iterates are an affine random recursion whose second moment grows iff the
homogeneous one (simulated here) grows. Trajectories with g are the surrogate runs (`sweep.edge_taylor`).

Verdict per η: unstable if the rate is > 3 s.e. above 0, stable if < −3 s.e., else undecided (s.e. over seed
groups). A k-section search narrows [largest stable, smallest unstable]; the point estimate interpolates the
rate's zero inside that bracket.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import UserError


@dataclass
class EdgeMeasurement:
    """A measured edge: point, [largest η found stable, smallest found unstable] and what was tested."""

    edge: float
    lo: float
    hi: float
    tested: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    has_edge: bool = True  # False: no stable η found (the model is unstable at every η tried)


def bracket_edge(evaluate: Callable[[list[float]], list[int]], start_lo: float, start_hi: float, *, points: int,
                 rounds: int, expand: int = 6, initial: list[float] | None = None) -> tuple[float, float, list[float]]:
    """Geometric k-section search for the sign change of a stability verdict.

    `evaluate(etas)` → per η: -1 stable, +1 unstable, 0 undecided. Returns (lo, hi, tested) with lo the
    largest η judged stable below the smallest η judged unstable (undecided ones stay inside [lo, hi]).
    `initial`: step sizes evaluated together first (their extremes replace start_lo, start_hi).
    """
    verdicts: dict[float, int] = {}

    def run(etas: list[float]) -> None:
        etas = [e for e in etas if e not in verdicts]
        if etas:
            verdicts.update(zip(etas, evaluate(etas)))

    def bounds() -> tuple[float | None, float | None]:
        unstable = [e for e, v in verdicts.items() if v > 0]
        hi = min(unstable) if unstable else None
        stable = [e for e, v in verdicts.items() if v < 0 and (hi is None or e < hi)]
        return (max(stable) if stable else None), hi

    if initial:
        start_lo, start_hi = min(initial), max(initial)
    run(sorted(set(initial or []) | {start_lo, start_hi}))
    for _ in range(expand):  # widen until the bracket holds a stable and an unstable η
        lo, hi = bounds()
        if lo is not None and hi is not None:
            break
        new = []
        if lo is None:
            start_lo *= 0.5
            new.append(start_lo)
        if hi is None:
            start_hi *= 2.0
            new.append(start_hi)
        run(new)
    lo, hi = bounds()
    if lo is None or hi is None:
        raise UserError("could not bracket the edge: no " + ("stable" if lo is None else "unstable") +
                        " step size found; widen the search or lengthen the horizon")
    for _ in range(rounds):
        lo, hi = bounds()
        ratio = (hi / lo) ** (1.0 / (points + 1))
        if ratio < 1.003:  # below Monte-Carlo resolution
            break
        run([lo * ratio ** (i + 1) for i in range(points)])
    lo, hi = bounds()
    return lo, hi, sorted(verdicts)


def _sim_kwargs(cfg: dict[str, Any], dim: int) -> tuple[str, dict[str, Any]]:
    from ..theory import Setting

    s = Setting.from_config(cfg, dim)
    kw = {k: v for k, v in s.kwargs().items() if v is not None and k != "dim"}
    return s.optimizer, kw


def _simulated(spectrum: np.ndarray, dim: int, directions: str) -> np.ndarray:
    """The modes to simulate: zero modes do not couple under Gaussian directions (the noise a mode receives is
    u_i·uᵀHΔ, which they do not enter), so they are dropped; other laws depend on d and keep them."""
    lam = np.asarray(spectrum, dtype=float).ravel()
    if directions == "gaussian":
        return lam[lam != 0]
    return np.concatenate([lam, np.zeros(max(0, dim - lam.size))])


def model_edge(spectrum: np.ndarray, cfg: dict[str, Any], start: float, *, dim: int | None = None,
               seeds: int = 512, steps: int = 200, points: int = 3, rounds: int = 1, seed: int = 0,
               init: str = "edge-profile", estimator: str = "resampled", groups: int = 4,
               around: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)) -> tuple[float, EdgeMeasurement]:
    """Measured edge of the run's optimizer on ½ΔᵀHΔ, H = diag(spectrum) (negative entries allowed), from the
    growth rate of E[ΔᵀH₊Δ]: the step sizes `around` × start together, then k-section rounds inside the bracket.
    Each η starts from its edge profile (the Perron vector at S = 1: no slow transient in the fit) and the rate
    is the resampled (sequential Monte Carlo) estimate of the mean, which a plain mean over seeds misses when a
    few outliers make the multiplicative noise heavy-tailed (`theory.simulate_growth`). Returns (η* of the
    spectrum's positive part, measurement); a model with no stable η down to start/100 comes back with
    ``has_edge=False``, lo = 0 and hi the smallest η found unstable."""
    from ..theory import critical_lr
    from ..theory.simulate import simulate_growth

    t0 = time.perf_counter()
    lam = np.asarray(spectrum, dtype=float).ravel()
    dim = int(dim or lam.size)
    opt, kw = _sim_kwargs(cfg, dim)
    sim = _simulated(lam, dim, kw.get("directions", "gaussian"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eta_model = critical_lr(lam, opt, negative="ignore", dim=dim, **kw)
    tested: list[dict[str, Any]] = []

    def evaluate(etas: list[float]) -> list[int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = simulate_growth(sim, etas, opt, seeds=seeds, steps=steps, seed=seed + len(tested),
                                   moment="positive", start=init, estimator=estimator, groups=groups, **kw)
        out = []
        for r in runs:
            v = 1 if r.rate > 3 * r.stderr else (-1 if r.rate < -3 * r.stderr else 0)
            tested.append({"lr": r.lr, "rate": r.rate, "stderr": r.stderr, "verdict": v,
                           "predicted_rate": r.predicted_rate})
            out.append(v)
        return out

    try:
        lo, hi, _ = bracket_edge(evaluate, start * 0.8, start * 1.25, points=points, rounds=rounds,
                                 initial=[start * f for f in around])
    except UserError:
        unstable = [t["lr"] for t in tested if t["verdict"] > 0]
        tested.sort(key=lambda t: t["lr"])
        return eta_model, EdgeMeasurement(0.0, 0.0, min(unstable) if unstable else math.nan, tested,
                                          time.perf_counter() - t0, has_edge=False)
    pts = sorted((t["lr"], t["rate"]) for t in tested if lo <= t["lr"] <= hi)
    edge = math.sqrt(lo * hi)
    for (e0, r0), (e1, r1) in zip(pts, pts[1:]):
        if r0 <= 0 < r1:
            edge = e0 + (e1 - e0) * (-r0) / (r1 - r0)
            break
    tested.sort(key=lambda t: t["lr"])
    return eta_model, EdgeMeasurement(edge, lo, hi, tested, time.perf_counter() - t0)


def model_rates(spectrum: np.ndarray, cfg: dict[str, Any], etas: list[float], *, dim: int | None = None,
                seeds: int = 256, steps: int = 200, seed: int = 0, groups: int = 4) -> list[dict[str, Any]]:
    """Measured growth rate of E[ΔᵀH₊Δ] (± s.e.) beside the exact asymptotic rate log ρ at fixed η (one stacked
    simulation): for a model with no edge, where a bracket search has nothing to find."""
    from ..theory.simulate import simulate_growth

    lam = np.asarray(spectrum, dtype=float).ravel()
    dim = int(dim or lam.size)
    opt, kw = _sim_kwargs(cfg, dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = simulate_growth(_simulated(lam, dim, kw.get("directions", "gaussian")), etas, opt, seeds=seeds,
                               steps=steps, seed=seed, moment="positive", estimator="resampled", groups=groups, **kw)
    return [{"lr": r.lr, "rate": r.rate, "stderr": r.stderr, "predicted_rate": r.predicted_rate,
             "verdict": 1 if r.rate > 3 * r.stderr else (-1 if r.rate < -3 * r.stderr else 0)} for r in runs]


def quadratic_edge(spectrum: np.ndarray, cfg: dict[str, Any], start: float, **kw: Any) -> tuple[float, EdgeMeasurement]:
    """The positive-part model (negative eigenvalues dropped): :func:`model_edge` on max(λ, 0)."""
    lam = np.asarray(spectrum, dtype=float)
    return model_edge(np.where(lam > 0, lam, 0.0), cfg, start, **kw)


def model_summary(eta_model: float, m: EdgeMeasurement, eta_pred: float, **extra: Any) -> dict[str, Any]:
    """JSON block of one model edge: measured edge and bracket against the model's own η* and the prediction."""
    out = {"eta_model": eta_model, "has_edge": m.has_edge, "measured_edge": m.edge if m.has_edge else None,
           "lo": m.lo, "hi": m.hi, "edge_over_eta_model": m.edge / eta_model if m.has_edge else None,
           "edge_over_predicted": m.edge / eta_pred if m.has_edge else None,
           "agrees": bool(m.has_edge and m.lo <= eta_model <= m.hi), "tested": m.tested, "seconds": m.seconds}
    pr = [t["predicted_rate"] for t in m.tested if t.get("predicted_rate") is not None]
    # the exact asymptotic rate (closed form): with negative modes it is > 0 at every η, whatever a finite
    # simulation sees while the positive block's transient decay still dominates
    out["exact_rate_positive_everywhere"] = bool(pr) and all(r > 1e-9 for r in pr)
    out.update(extra)
    return out
