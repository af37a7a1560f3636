"""The settling experiment: predicted critical step size η* at a checkpoint against the measured edge.

At θ_N (the checkpoint of a run at step N):

1. **Spectrum.** Small models (d ≤ `dense_max`): the dense Hessian's eigenvalues (`torch.func.hessian`),
   exact. Larger ones: the top-k eigenvalues by Lanczos (Ritz values with residual bounds) plus the trace by
   the probe's estimator (with its standard error); the rest of the spectrum is known only through its mass
   R = Tr − Σ top-k and the bound 0 ≤ λ ≤ λ_k.
2. **Prediction.** η* = sup{η : S(η) < 1} of docs/theory.md §2 (`theory.critical_lr`) on that spectrum. Its interval
   (top-k + trace path): S is a sum of convex increasing terms, so for a tail of mass R spread under λ_k,
   S is largest with the mass piled at λ_k and smallest with it spread thin; with R ± 2 s.e. this brackets η*.
   The point value spreads R evenly over the d − k remaining modes.
3. **Quadratic model.** The project's optimizer on L = ½ θᵀ diag(spectrum) θ (`theory.simulate_growth`,
   many seeds per η, all η of a round stacked in one tensor): the measured growth rate of E[θᵀHθ] (the
   loss; E‖θ‖² would carry slow transients of the near-zero eigenvalues, ρ ≈ 1 at every η) changes sign
   at the measured edge. Each round brackets the sign change on a grid and refines inside it; a rate within
   3 s.e. of 0 is undecided, so the interval is [largest η significantly stable, smallest significantly
   unstable]. This must contain the η* of the simulated spectrum (the theory's own check).
4. **Real network.** Continuation runs from θ_N at a given η (the run's optimizer, `seeds` independent
   direction streams stacked in one process), one task per η on the sweep engine: an η is unstable if more
   than half of the seeds blow up (loss > `blowup` × L(θ_N), or non-finite) within `horizon` steps. Each
   round tests `workers` step sizes inside the bracket (geometric k-section).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UserError

EDGE_OPTIMIZERS = ("zo-gd", "zo-gdm", "gd", "gdm")


def kept_checkpoint_path(run_path: str | Path, step: int) -> Path:
    """Where a run trained with keep_checkpoints stores its checkpoint of `step`."""
    return Path(f"{run_path}.step{int(step)}.ckpt")


def find_checkpoint(run_path: str | Path, step: int) -> dict:
    """The checkpoint of `run_path` at `step` (a kept one, or the latest if it is at that step)."""
    from ..checkpoint import checkpoint_path, load_checkpoint

    run_path = Path(run_path)
    have = []
    for p in (kept_checkpoint_path(run_path, step), checkpoint_path(run_path)):
        if p.exists():
            ck = load_checkpoint(p)
            if int(ck["step"]) == int(step):
                ck["path"] = str(p)
                return ck
            have.append(int(ck["step"]))
    kept = sorted(int(p.name.rsplit(".step", 1)[1].split(".")[0]) for p in run_path.parent.glob(run_path.name + ".step*.ckpt"))
    have = sorted(set(have + kept))
    raise UserError(f"{run_path} has no checkpoint at step {step} (checkpoints at: "
                    f"{', '.join(map(str, have)) or 'none'}); train with --keep-checkpoints-every to keep more")


@dataclass
class Spectrum:
    """What is known of the Hessian's spectrum at θ_N."""

    method: str  # "dense" | "top-k + trace"
    dim: int
    top: list[float]  # dense: every eigenvalue (descending); else the top k Ritz values
    top_err: list[float]
    trace: float
    trace_err: float
    negative_mass: float = 0.0  # dense: Σ of the negative eigenvalues (left out of S: the theory is about λ ≥ 0)
    n_hvp: int = 0
    seconds: float = 0.0

    def model(self, max_tail: int = 200) -> np.ndarray:
        """The spectrum of the local quadratic model: dense → positive eigenvalues; else top-k plus the tail
        mass R spread evenly over min(d − k, max_tail) modes (what the prediction's point value assumes)."""
        top = np.asarray(self.top, dtype=float)
        if self.method == "dense":
            return top[top > 0]
        rest = max(self.trace - float(np.sum(top)), 0.0)
        m = max(1, min(self.dim - top.size, max_tail))
        return np.concatenate([top[top > 0], np.full(m, rest / m)]) if rest > 0 else top[top > 0]


def _band_kw(cfg: dict[str, Any], dim: int) -> dict[str, Any]:
    from ..theory import Setting

    s = Setting.from_config(cfg, dim)
    return {"optimizer": s.optimizer, **s.kwargs()}


def measure_spectrum(objective, theta, *, k: int = 20, n_matvec: int = 40, dense_max: int = 1500,
                     seed: int = 0) -> Spectrum:
    """Dense eigenvalues for d ≤ dense_max, else top-k Lanczos + the probe's trace estimator."""
    import torch

    from ..curvature import HessianOperator, dense_hessian, top_k, trace

    t0 = time.perf_counter()
    d = objective.dim
    if d <= dense_max:
        H = dense_hessian(objective, theta).to(torch.float64)
        lam = np.sort(np.linalg.eigvalsh(H.numpy()))[::-1]
        neg = float(lam[lam < 0].sum())
        return Spectrum("dense", d, lam.tolist(), [0.0] * d, float(lam.sum()), 0.0, neg, 0,
                        time.perf_counter() - t0)
    gen = torch.Generator(device=theta.device).manual_seed(seed)
    op = HessianOperator(objective, theta)
    tk = top_k(op, min(k, d - 1), tol=1e-3, generator=gen, max_iter=300)
    tr = trace(op, method="ggn+residual", n_matvec=n_matvec, generator=gen)
    return Spectrum("top-k + trace", d, [float(v) for v in np.atleast_1d(tk.value)],
                    [float(v) for v in np.atleast_1d(tk.error)], float(tr.value), float(tr.error), 0.0,
                    op.n_hvp, time.perf_counter() - t0)


def predict(spec: Spectrum, cfg: dict[str, Any]) -> tuple[float, float, float]:
    """η*, and an interval (lo, hi) that contains it given what the spectrum estimate leaves open."""
    import warnings

    from ..theory import critical_lr

    kw = _band_kw(cfg, spec.dim)
    opt = kw.pop("optimizer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        def crit(lam, w=None) -> float:
            return critical_lr(lam, opt, weights=w, negative="ignore", **kw)

        if spec.method == "dense":
            eta = crit(spec.top)
            return eta, eta, eta
        top = np.asarray(spec.top, dtype=float)
        top_hi = top + np.asarray(spec.top_err, dtype=float)
        top_lo = np.clip(top - np.asarray(spec.top_err, dtype=float), 0, None)
        eta = crit(spec.model(max_tail=max(1, spec.dim - top.size)))
        lam_k = float(top[-1])
        r_hi = max(spec.trace + 2 * spec.trace_err - float(top_lo.sum()), 0.0)
        r_lo = max(spec.trace - 2 * spec.trace_err - float(top_hi.sum()), 0.0)
        # smallest η*: the tail piled at λ_k (n full modes + the remainder), the top at its upper bounds
        n_full = int(r_hi // lam_k) if lam_k > 0 else 0
        lo_nodes = np.concatenate([top_hi, [lam_k, r_hi - n_full * lam_k]])
        lo_w = np.concatenate([np.ones_like(top_hi), [n_full, 1.0]])
        lo = crit(lo_nodes, lo_w)
        # largest η*: the tail spread thin (a mode of λ_k·1e-9 with the weight that carries mass r_lo)
        eps = max(lam_k, 1e-12) * 1e-9
        hi_nodes = np.concatenate([top_lo, [eps]])
        hi_w = np.concatenate([np.ones_like(top_lo), [r_lo / eps]])
        hi = crit(hi_nodes, hi_w)
    return eta, min(lo, eta), max(hi, eta)


@dataclass
class EdgeMeasurement:
    edge: float  # point estimate
    lo: float  # largest η found stable
    hi: float  # smallest η found unstable
    tested: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _bracket_edge(evaluate: Callable[[list[float]], list[int]], start_lo: float, start_hi: float, *, points: int,
                  rounds: int, expand: int = 6) -> tuple[float, float, list[float]]:
    """Geometric k-section search for the sign change of a stability verdict.

    `evaluate(etas)` → per η: -1 stable, +1 unstable, 0 undecided. Returns (lo, hi, tested) with lo the
    largest η judged stable below the smallest η judged unstable (undecided ones stay inside [lo, hi]).
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

    run([start_lo, start_hi])
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


def quadratic_edge(spectrum: np.ndarray, cfg: dict[str, Any], start: float, *, seeds: int = 512, steps: int = 200,
                   points: int = 5, rounds: int = 4, seed: int = 0) -> tuple[float, EdgeMeasurement]:
    """Measured edge of the run's optimizer on L = ½ θᵀ diag(spectrum) θ; returns (η* of that spectrum, result)."""
    import warnings

    from ..theory import critical_lr
    from ..theory.simulate import simulate_growth

    t0 = time.perf_counter()
    kw = _band_kw(cfg, spectrum.size)
    opt = kw.pop("optimizer")
    kw.pop("dim", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eta_model = critical_lr(spectrum, opt, dim=spectrum.size, **kw)
    tested: list[dict[str, Any]] = []
    sim_kw = {k: v for k, v in kw.items() if v is not None}

    def evaluate(etas: list[float]) -> list[int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = simulate_growth(spectrum, etas, opt, seeds=seeds, steps=steps, seed=seed + len(tested),
                                   moment="loss", **sim_kw)
        out = []
        for r in runs:
            # 3 s.e.: the rate estimator is heavy-tailed (biased low near ρ = 1), 2 s.e. misjudges η ≈ η*
            v = 1 if r.rate > 3 * r.stderr else (-1 if r.rate < -3 * r.stderr else 0)
            tested.append({"lr": r.lr, "rate": r.rate, "stderr": r.stderr, "verdict": v,
                           "predicted_rate": r.predicted_rate})
            out.append(v)
        return out

    lo, hi, _ = _bracket_edge(evaluate, start * 0.8, start * 1.25, points=points, rounds=rounds)
    # point estimate: the zero of the rate, interpolated between the tested η around the crossing
    # (inside [lo, hi] only: a noisy rate below lo must not put the point outside its own interval)
    pts = sorted((t["lr"], t["rate"]) for t in tested if lo <= t["lr"] <= hi)
    edge = math.sqrt(lo * hi)
    for (e0, r0), (e1, r1) in zip(pts, pts[1:]):
        if r0 <= 0 < r1:
            edge = e0 + (e1 - e0) * (-r0) / (r1 - r0)
            break
    return eta_model, EdgeMeasurement(edge, lo, hi, tested, time.perf_counter() - t0)


def continuation_task(run_path: str, ckpt_path: str, lr: float, seeds: int, horizon: int, blowup: float,
                      seed: int, threads: int | None = None) -> dict[str, Any]:
    """`seeds` continuations of the run from its checkpoint at step size `lr` (stacked in one process);
    returns how many blew up within `horizon` steps."""
    import torch

    from ..config import TrainConfig
    from ..optim import make_optimizer
    from ..reading import open_run
    from ..build import build
    from ..checkpoint import load_checkpoint

    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    with open_run(run_path) as f:
        cfg = json.loads(f.attrs["config"])
    cfg.update(lr=float(lr), out=None)
    setup = build(TrainConfig(**cfg))
    ck = load_checkpoint(Path(ckpt_path))
    theta0 = ck["theta"].to(setup.theta.device, setup.theta.dtype)
    c = setup.config
    opt = make_optimizer(c.optimizer, lr=float(lr), momentum=c.momentum, momentum_style=c.momentum_style,
                         beta2=c.beta2, eps=c.eps, queries=c.queries, mu=c.mu, directions=c.directions,
                         difference=c.difference, seed=seed)
    theta = theta0.expand(seeds, -1).clone()
    state = opt.init(theta)
    for part, tensors in ck["state"].items():  # momentum buffers carry over, one copy per seed
        for name, t in tensors.items():
            state[part][name].copy_(t.to(theta.device).expand_as(state[part][name]))
    obj = setup.objective
    loss0 = float(obj.evaluate(theta0)[0])
    blown = torch.zeros(seeds, dtype=torch.bool)
    step0 = int(ck["step"])
    check_every = 5
    for t in range(horizon):
        opt.step(obj, theta, state, step0 + t)
        if (t + 1) % check_every == 0 or t + 1 == horizon:
            losses = obj.evaluate(theta)[0].cpu()
            blown |= ~torch.isfinite(losses) | (losses > blowup * loss0)
            if bool(blown.all()):
                break
    final = obj.evaluate(theta)[0].cpu().tolist()
    return {"lr": float(lr), "seeds": seeds, "blown": int(blown.sum()), "loss0": loss0,
            "final_losses": [float(x) for x in final], "seconds": time.perf_counter() - t0}


def _continuation_pack(args: list[dict[str, Any]], threads: int | None = None) -> list[dict[str, Any]]:
    """Engine adaptor: a task is a list of continuation settings (one per η)."""
    return [continuation_task(**a, threads=threads) for a in args]


def network_edge(run_path: str | Path, ckpt_path: str, start: float, *, engine: str = "local",
                 workers: int | None = None, address: str | None = None, seeds: int = 4, horizon: int = 100,
                 blowup: float = 10.0, rounds: int = 3, seed: int = 12345) -> EdgeMeasurement:
    """Measured edge of the real network: bisection (k-section) over continuation runs from θ_N."""
    from .engines import make_engine

    t0 = time.perf_counter()
    import os

    n = workers or max(1, min(os.cpu_count() or 1, 4))
    eng = make_engine(engine, workers=n, n_tasks=n, address=address)
    tested: list[dict[str, Any]] = []

    def evaluate(etas: list[float]) -> list[int]:
        tasks = [[{"run_path": str(run_path), "ckpt_path": ckpt_path, "lr": e, "seeds": seeds, "horizon": horizon,
                   "blowup": blowup, "seed": seed}] for e in etas]
        out = [0] * len(etas)
        for i, res in eng.run(tasks, fn=_continuation_pack):
            r = res[0]
            if "blown" not in r:
                raise UserError(f"a continuation run at lr {etas[i]:g} failed: {r.get('error', r)}")
            tested.append(r)
            out[i] = 1 if 2 * r["blown"] > r["seeds"] else -1
        return out

    try:
        lo, hi, _ = _bracket_edge(evaluate, start * 0.7, start * 1.4, points=n, rounds=rounds)
    finally:
        if hasattr(eng, "close"):
            eng.close()
    return EdgeMeasurement(math.sqrt(lo * hi), lo, hi, sorted(tested, key=lambda r: r["lr"]), time.perf_counter() - t0)


def edge_experiment(run_path: str | Path, step: int, *, network: bool = True, engine: str = "local",
                    workers: int | None = None, address: str | None = None, k: int = 20, n_matvec: int = 40,
                    dense_max: int = 1500, quad_seeds: int = 512, quad_steps: int = 200, quad_rounds: int = 4,
                    seeds: int = 4, horizon: int = 100, blowup: float = 10.0, rounds: int = 3,
                    echo: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the whole experiment; returns the JSON-able result."""
    import torch

    from ..config import TrainConfig
    from ..reading import open_run
    from ..build import build

    run_path = Path(run_path)
    if not run_path.exists():
        raise UserError(f"run file {run_path} does not exist")
    with open_run(run_path) as f:
        if "config" not in f.attrs:
            raise UserError(f"{run_path} has no recorded config; it is not an eos-probe run file")
        cfg = json.loads(f.attrs["config"])
    if cfg.get("optimizer") not in EDGE_OPTIMIZERS:
        raise UserError(f"edge supports {', '.join(EDGE_OPTIMIZERS)} runs (the theory of §2); "
                        f"{run_path} is a {cfg.get('optimizer')} run")
    if step < 0:
        raise UserError(f"--step must be a non-negative integer, got {step}")
    ck = find_checkpoint(run_path, step)
    t0 = time.perf_counter()
    setup = build(TrainConfig(**{**cfg, "out": None}))
    theta = ck["theta"].to(setup.theta.device, setup.theta.dtype)
    echo(f"step {step}: measuring the spectrum of {setup.objective.dim} parameters ...")
    spec = measure_spectrum(setup.objective, theta, k=k, n_matvec=n_matvec, dense_max=dense_max,
                            seed=int(cfg.get("seed", 0)))
    eta, lo, hi = predict(spec, cfg)
    echo(f"predicted eta* = {eta:.4g} [{lo:.4g}, {hi:.4g}] from {spec.method}; simulating the quadratic model ...")
    model = spec.model()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    eta_model, quad = quadratic_edge(model, cfg, eta, seeds=quad_seeds, steps=quad_steps, rounds=quad_rounds,
                                     seed=int(cfg.get("seed", 0)))
    result: dict[str, Any] = {
        "run": str(run_path), "step": step, "checkpoint": ck["path"], "optimizer": cfg["optimizer"],
        "run_lr": cfg.get("lr"), "dim": spec.dim,
        "spectrum": {k2: v for k2, v in asdict(spec).items() if k2 not in ("top", "top_err")} |
                    {"top": spec.top[:20], "top_err": spec.top_err[:20]},
        "predicted": {"eta": eta, "lo": lo, "hi": hi, "method": spec.method},
        "quadratic": {"predicted_eta": eta_model, "measured_edge": quad.edge, "lo": quad.lo, "hi": quad.hi,
                      "agrees": bool(quad.lo <= eta_model <= quad.hi), "dim": int(model.size),
                      "seeds": quad_seeds, "steps": quad_steps, "tested": quad.tested, "seconds": quad.seconds},
    }
    if network:
        echo(f"quadratic model: edge {quad.edge:.4g} [{quad.lo:.4g}, {quad.hi:.4g}] vs eta* {eta_model:.4g}; "
             f"continuation runs on the network ({engine}) ...")
        net = network_edge(run_path, ck["path"], eta, engine=engine, workers=workers, address=address, seeds=seeds,
                           horizon=horizon, blowup=blowup, rounds=rounds)
        result["network"] = {"measured_edge": net.edge, "lo": net.lo, "hi": net.hi, "ratio": net.edge / eta,
                             "ratio_lo": net.lo / hi if hi > 0 else math.nan, "ratio_hi": net.hi / lo if lo > 0 else math.nan,
                             "agrees": bool(net.lo <= hi and lo <= net.hi), "seeds": seeds, "horizon": horizon,
                             "blowup": blowup, "tested": net.tested, "seconds": net.seconds}
    result["seconds"] = time.perf_counter() - t0
    return result


def one_line(res: dict[str, Any]) -> str:
    p, q = res["predicted"], res["quadratic"]
    line = (f"{res['run']} step {res['step']} ({res['optimizer']}): predicted eta* {p['eta']:.4g} "
            f"[{p['lo']:.4g}, {p['hi']:.4g}] ({p['method']}); quadratic model: measured edge {q['measured_edge']:.4g} "
            f"[{q['lo']:.4g}, {q['hi']:.4g}] vs eta* {q['predicted_eta']:.4g} ({'agrees' if q['agrees'] else 'DISAGREES'})")
    if "network" in res:
        n = res["network"]
        line += (f"; network: measured edge {n['measured_edge']:.4g} [{n['lo']:.4g}, {n['hi']:.4g}], "
                 f"measured/predicted {n['ratio']:.3g}")
    return line
