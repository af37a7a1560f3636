"""The settling experiment (`eos-probe edge`): predicted critical step size η* at a checkpoint against measured edges.

At θ_N (the checkpoint of a run at step N), docs/edge.md:

1. **Prediction** (`edge_predict`): η* = sup{η : S(η) < 1} of docs/theory.md §2 on the *positive part* of the
   Hessian spectrum. Dense eigenvalues when d ≤ ``dense_max`` (exact); otherwise the top-k Ritz values exactly plus
   stochastic Lanczos quadrature of the deflated rest with f = 0 for λ ≤ 0, its interval from S ± 2 err = 1. The
   JSON and the printed line say which path was used.
2. **Model edges** (`edge_models`): the run's optimizer on ½ΔᵀH₊Δ (positive-part model) and on ½ΔᵀHΔ (Taylor model,
   negative modes kept); the edge is the sign change of the growth rate of E[ΔᵀH₊Δ], not a blow-up count.
3. **Network** (`edge_network`, `edge_laws`): continuation runs from θ_N on a geometric η grid (``seeds`` direction
   streams each, one task per η on the sweep engine) record every seed's blow-up time for several blow-up factors.
   From them: the blow-up protocol's edge at every horizon, the law of the blow-up time against η, and whether a
   horizon-independent edge exists.
4. **Surrogates** (`edge_taylor`): the network beside its Taylor surrogates (H and H₊ at θ_N) with the same
   directions and criterion; when it leaves them, and λ_max, Tr H and the local η* along its continuation.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UserError
from .edge_laws import blowup_law, edge_vs_horizon, has_horizon_independent_edge
from .edge_models import EdgeMeasurement, model_edge, model_rates, model_summary, quadratic_edge  # noqa: F401
from .edge_network import FACTORS, HORIZONS, continuation_task, half_time, run_grid, tau_matrix  # noqa: F401
from .edge_taylor import PROBE_STEPS
from .edge_predict import DENSE_MAX, Prediction, Spectrum, measure_spectrum, predict  # noqa: F401 - public

EDGE_OPTIMIZERS = ("zo-gd", "zo-gdm", "gd", "gdm")
#: step sizes (fractions of the predicted η*) at which the indefinite Taylor model's rates are measured
TAYLOR_AT = (0.1, 0.3, 1.0)


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


def read_config(run_path: str | Path) -> dict[str, Any]:
    """The run's stored config, checked for what the experiment supports."""
    from ..reading import open_run

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
    return cfg


def grid(eta: float, spec: tuple[float, float, int]) -> list[float]:
    """A geometric η grid: `spec` = (lowest, highest as fractions of η, number of points)."""
    lo, hi, n = spec
    return [float(x) for x in eta * np.geomspace(lo, hi, int(n))]


def prediction_block(run_path: Path, step: int, cfg: dict[str, Any], *, k: int, n_probes: int, n_steps: int,
                     dense_max: int, echo: Callable[[str], None]) -> tuple[Spectrum, Prediction, dict[str, Any]]:
    """Spectrum at θ_N and the prediction, with the checkpoint it came from."""
    from ..config import TrainConfig
    from ..build import build

    ck = find_checkpoint(run_path, step)
    setup = build(TrainConfig(**{**cfg, "out": None}))
    theta = ck["theta"].to(setup.theta.device, setup.theta.dtype)
    d = setup.objective.dim
    echo(f"step {step}: spectrum of {d} parameters ({'dense' if d <= dense_max else f'top-{k} Ritz + SLQ'}) ...")
    spec = measure_spectrum(setup.objective, theta, k=k, n_probes=n_probes, n_steps=n_steps, dense_max=dense_max,
                            seed=int(cfg.get("seed", 0)))
    pred = predict(spec, cfg)
    echo(f"predicted eta* = {pred.eta:.4g} [{pred.lo:.4g}, {pred.hi:.4g}] from {pred.path}")
    return spec, pred, {"checkpoint": ck["path"]}


def s_bounds(trace_pos: float, lambda_max: float, cfg: dict[str, Any], dim: int) -> tuple[float, float]:
    """Bounds on S(η) from Tr H₊ and λ_max alone: f(λ)/λ increases from 1/T (λ → 0) to f(λ_max)/λ_max, so
    Tr H₊/T ≤ S ≤ Tr H₊·f(λ_max)/λ_max. Tr H in place of Tr H₊ (the band of docs/theory.md §2 on an indefinite
    Hessian) bounds nothing: it is smaller by the negative mass."""
    from ..theory import ms_terms

    kw = _theory_kw(cfg, dim)
    opt = kw.pop("optimizer")
    lr = float(cfg["lr"])
    eps = 1e-9 * max(lambda_max, 1e-300)
    slope0 = float(ms_terms(eps, lr, opt, **kw)) / eps
    top = float(ms_terms(lambda_max, lr, opt, **kw)) / lambda_max if lambda_max > 0 else slope0
    return trace_pos * slope0, trace_pos * top


def run_lr_block(spec: Spectrum, cfg: dict[str, Any]) -> dict[str, Any]:
    """At the run's own η: the exact S (dense) or its SLQ estimate, its bounds from Tr H₊ and λ_max, and the band's
    necessary Tr/T and sufficient (Tr + cλ_max)/T with the full Tr H (docs/theory.md §2)."""
    from ..theory import band_for, ms_sum
    from .edge_predict import slq_sum

    b = band_for(cfg, spec.dim)
    if spec.method == "dense":
        S, err = ms_sum(spec.top, cfg["lr"], **_theory_kw(cfg, spec.dim), negative="ignore"), 0.0
    else:
        S, err = slq_sum(spec, float(cfg["lr"]), cfg)
    lam = spec.top[0]
    c = b.c if b.c is not None else 0.0
    lo, hi = s_bounds(spec.trace_pos, lam, cfg, spec.dim)
    return {"lr": cfg["lr"], "S": S, "S_err": err, "T": b.threshold, "S_lower": lo, "S_upper": hi,
            "tr_over_T": spec.trace / b.threshold, "tr_pos_over_T": spec.trace_pos / b.threshold,
            "upper_over_T": (spec.trace + c * lam) / b.threshold}


def _theory_kw(cfg: dict[str, Any], dim: int) -> dict[str, Any]:
    from ..theory import Setting

    s = Setting.from_config(cfg, dim)
    return {"optimizer": s.optimizer, **s.kwargs()}


def model_block(spec: Spectrum, pred: Prediction, cfg: dict[str, Any], *, seeds: int, steps: int, rounds: int,
                taylor: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """Growth-rate edges of the positive-part model and (optionally) the indefinite Taylor model."""
    seed = int(cfg.get("seed", 0))
    pos = spec.positive_model()
    echo(f"positive-part model ({pos.size} modes): growth rate of E[D'H+D] ...")
    eta_m, m = model_edge(pos, cfg, pred.eta, dim=spec.dim, seeds=seeds, steps=steps, rounds=rounds, seed=seed)
    out = {"positive": model_summary(eta_m, m, pred.eta, modes=int(pos.size), seeds=seeds, steps=steps,
                                     estimator="resampled")}
    if taylor and spec.method == "dense":
        echo("Taylor model (negative modes kept): rates at fixed eta ...")
        etas = [f * pred.eta for f in TAYLOR_AT]
        # the Taylor model only has to show the sign of its rate (the exact rate is beside it): half the seeds
        rates = model_rates(np.asarray(spec.top), cfg, etas, dim=spec.dim, seeds=max(16, seeds // 2), steps=steps,
                            seed=seed + 1)
        out["taylor"] = {"tested": rates, "has_edge": False, "fractions_of_predicted": list(TAYLOR_AT),
                         "exact_rate_positive_everywhere": all(r["predicted_rate"] is not None and
                                                               r["predicted_rate"] > 1e-9 for r in rates),
                         "measured_rate_positive_everywhere": all(r["verdict"] > 0 for r in rates),
                         "seeds": max(16, seeds // 2), "steps": steps, "estimator": "resampled"}
    return out


def analyse_network(runs: list[dict[str, Any]], eta_pred: float, horizons: tuple[int, ...],
                    factors: tuple[float, ...]) -> dict[str, Any]:
    """Per blow-up factor: the edge against the horizon, the blow-up law and the stated answer."""
    runs = sorted(runs, key=lambda r: r["lr"])
    horizon = min(r["horizon"] for r in runs)
    hs = [h for h in horizons if h <= horizon]
    per_factor = {}
    for f in factors:
        e, taus, hz = tau_matrix(runs, f)
        law = blowup_law(e, taus, hz)
        curve = edge_vs_horizon(e, taus, hs)
        for c in curve:
            c["over_predicted"] = c["edge"] / eta_pred if c["edge"] else None
        blown = np.isfinite(taus).sum(axis=1)
        first = next((i for i, n in enumerate(blown) if n > 0), len(e))  # the smallest η where any seed blew up
        per_factor[f"{f:g}"] = {"edge_vs_horizon": curve, "law": law, "blown_at_horizon": blown.tolist(),
                                "largest_quiet_eta": float(e[first - 1]) if first > 0 else None,
                                "horizon_independent_edge": has_horizon_independent_edge(law, curve),
                                "half_time": [None if not math.isfinite(x) else float(x) for x in half_time(taus)]}
    return {"etas": [r["lr"] for r in runs], "seeds": runs[0]["seeds"], "horizon": horizon,
            "factors": list(factors), "by_factor": per_factor, "runs": runs}


def refine_etas(net: dict[str, Any], points: int, factor: str = "10") -> list[float]:
    """More step sizes for the longest horizon: inside its bracket (geometric) when that is wider than 10 %, or
    below the grid, at its own spacing, when every η blew up."""
    c = net["by_factor"][factor]["edge_vs_horizon"][-1]
    etas = sorted(net["etas"])
    if c.get("hi") and not c.get("lo") and len(etas) > 1:
        r = etas[1] / etas[0]
        return [float(etas[0] / r ** (k + 1)) for k in range(points)]
    if not (c.get("lo") and c.get("hi")) or c["hi"] / c["lo"] < 1.1:
        return []
    return [float(x) for x in np.geomspace(c["lo"], c["hi"], points + 2)[1:-1]]


def network_block(run_path: Path, ckpt: str, pred: Prediction, *, etas: list[float], seeds: int, horizon: int,
                  horizons: tuple[int, ...], factors: tuple[float, ...], engine: str, workers: int | None,
                  address: str | None, echo: Callable[[str], None], refine: int = 3) -> dict[str, Any]:
    """Continuations on the η grid, then `refine` more inside the bracket of the longest horizon (factor 10, or
    the first factor) → edge against the horizon per factor, blow-up law, the stated answer."""
    t0 = time.perf_counter()
    echo(f"network: {len(etas)} step sizes x {seeds} seeds, up to {horizon} steps ({engine}) ...")
    kw = dict(seeds=seeds, horizon=horizon, factors=factors, engine=engine, workers=workers, address=address)
    runs = run_grid(run_path, ckpt, etas, **kw)
    net = analyse_network(runs, pred.eta, horizons, factors)
    extra = refine_etas(net, refine, "10" if "10" in net["by_factor"] else next(iter(net["by_factor"])))
    if extra:
        echo(f"network: {len(extra)} more step sizes inside the bracket ...")
        net = analyse_network(runs + run_grid(run_path, ckpt, extra, **kw), pred.eta, horizons, factors)
    return {**net, "seconds": time.perf_counter() - t0}


def edge_experiment(run_path: str | Path, step: int, *, network: bool = True, surrogate: bool = True,
                    engine: str = "local", workers: int | None = 1, address: str | None = None, k: int = 20,
                    n_probes: int = 10, n_steps: int = 60, dense_max: int = DENSE_MAX, quad_seeds: int = 512,
                    quad_steps: int = 200, quad_rounds: int = 1, taylor: bool = True, seeds: int = 8,
                    horizon: int = 640, horizons: tuple[int, ...] = HORIZONS, factors: tuple[float, ...] = FACTORS,
                    eta_grid: tuple[float, float, int] = (0.1, 1.6, 11), surrogate_at: tuple[float, ...] = (0.5,),
                    probe_steps: tuple[int, ...] = PROBE_STEPS, echo: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the whole experiment; returns the JSON-able result (see the module docstring)."""
    import torch

    from .edge_taylor import surrogate_task

    run_path = Path(run_path)
    cfg = read_config(run_path)
    if step < 0:
        raise UserError(f"--step must be a non-negative integer, got {step}")
    t0 = time.perf_counter()
    spec, pred, where = prediction_block(run_path, step, cfg, k=k, n_probes=n_probes, n_steps=n_steps,
                                         dense_max=dense_max, echo=echo)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result: dict[str, Any] = {
        "run": str(run_path), "step": step, **where, "optimizer": cfg["optimizer"], "run_lr": cfg.get("lr"),
        "dim": spec.dim, "spectrum": spec.as_dict(), "predicted": pred.as_dict(), "at_run_lr": run_lr_block(spec, cfg),
        "models": model_block(spec, pred, cfg, seeds=quad_seeds, steps=quad_steps, rounds=quad_rounds,
                              taylor=taylor, echo=echo)}
    if network:
        result["network"] = network_block(run_path, where["checkpoint"], pred, etas=grid(pred.eta, eta_grid),
                                          seeds=seeds, horizon=horizon, horizons=horizons, factors=factors,
                                          engine=engine, workers=workers, address=address, echo=echo)
    if surrogate and spec.dim <= dense_max:
        result["surrogates"] = []
        for frac in surrogate_at:
            echo(f"network beside its Taylor surrogates at eta = {frac:g} eta* ...")
            result["surrogates"].append(surrogate_task(str(run_path), where["checkpoint"], frac * pred.eta,
                                                       seeds=seeds, horizon=horizon, factors=factors,
                                                       dense_max=dense_max, probe_steps=probe_steps))
    result["seconds"] = time.perf_counter() - t0
    return result
