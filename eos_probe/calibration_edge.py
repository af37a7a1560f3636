"""Error-bar calibration at points of a real training run at the edge (behind `benchmarks/calibration.py
--trajectory`).

`calibration.calibrate` checks every metric at one θ with the step size tuned to chosen S(η) values;
this checks the default probe where it is used: at checkpoints of a ZO run that sits at S(η) ≈ 1, with the
run's own step size, so S(η) is whatever the trajectory gives (early points far below 1, edge points within
a few % of it). Each point: the checkpoint's θ in float64, its dense Hessian (`torch.func`, cached as .npy
when asked), and the default probe (`lambda_max,trace,ms_margin`) run through `build_probe` → `Probe.run`
once per seed, cold and warm-started from the top Ritz vectors at the previous kept checkpoint, as in a run.
z = (estimate − dense truth) / logged error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration import _Rows, _summary, _z
from .curvature.dense import dense_hessian_chunked

#: the trajectory the benchmark trains when given none (`eos-probe train` arguments): a 1,694-parameter
#: CNN on 200 fashion4 images whose ZO-GD run sits at S(η) ≈ 0.9–1.3 from step ≈ 1300 on
TRAJECTORY_ARGS = ["--model", "cnn", "--model-arg", "widths=[2,4]", "--model-arg", "hidden=8", "--n-per-class",
                   "50", "--optimizer", "zo-gd", "--lr", "0.016", "--steps", "3000", "--probe-every", "50",
                   "--keep-checkpoints-every", "50", "--threads", "1"]
#: its checkpoints used: two early (S ≪ 1), one rising, the rest at the edge (two within 1 % of S = 1)
TRAJECTORY_STEPS = (500, 1000, 1250, 1300, 1600, 2050, 2250, 2500, 3000)
PROBE = ["lambda_max", "trace", "ms_margin"]


@dataclass
class EdgePoint:
    """One checkpoint of a run: its float64 setup, θ, dense Hessian spectrum and the exact S(η), Tr H, N."""

    step: int
    setup: Any
    theta: torch.Tensor
    H: np.ndarray
    eig: np.ndarray
    config: dict
    s_exact: float
    negative_mass: float
    warm: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        """"edge" within 5 % of S = 1, "near" within 50 %, else "early"."""
        return "edge" if abs(self.s_exact - 1) < 0.05 else "near" if abs(self.s_exact - 1) < 0.5 else "early"


def run_config(run_path: str | Path) -> dict:
    """The recorded config of a run file, for float64 probes at its checkpoints."""
    from .store import open_run

    with open_run(Path(run_path)) as f:
        cfg = json.loads(f.attrs["config"])
    return {**cfg, "out": None, "dtype": "float64", "device": "cpu", "probe": [], "keep_checkpoints_every": None}


def load_point(run_path: str | Path, step: int, cache: str | Path | None = None, warm_from: int | None = None,
               chunk: int = 64) -> EdgePoint:
    """The checkpoint at `step` with its dense Hessian (read from / written to `cache` when given) and a
    warm-start vector: the sum of the top-3 Ritz vectors at checkpoint `warm_from` (the run's previous probe)."""
    from .config import TrainConfig
    from .curvature import HessianOperator, top_k
    from .sweep.edge import find_checkpoint
    from .theory import ms_term_function
    from .build import build

    cfg = run_config(run_path)
    setup = build(TrainConfig(**cfg))
    theta = find_checkpoint(run_path, step)["theta"].to(torch.float64)
    fn = Path(cache) / f"{Path(run_path).name}.H{step}.npy" if cache else None
    if fn is not None and fn.exists():
        H = np.load(fn)
    else:
        H = dense_hessian_chunked(setup.objective, theta, chunk)
        if fn is not None:
            fn.parent.mkdir(parents=True, exist_ok=True)
            np.save(fn, H)
    eig = np.linalg.eigvalsh(H)
    f = ms_term_function(cfg, eig.size)
    warm = None
    if warm_from is not None:
        prev = find_checkpoint(run_path, warm_from)["theta"].to(torch.float64)
        est = top_k(HessianOperator(setup.objective, prev), 3, tol=1e-3, max_iter=100,
                    generator=torch.Generator().manual_seed(step))
        warm = torch.as_tensor(est.extra["vectors"]).sum(0).detach().reshape(-1).clone()
    return EdgePoint(step, setup, theta, H, eig, cfg, float(np.sum(f(eig))), float(-eig[eig < 0].sum()), warm)


def probe_at(point: EdgePoint, seed: int, warm: bool, dense: bool) -> dict[str, Any]:
    """One default probe at the point (seed: its random streams); `dense`: the dense Hessian as the operator
    (the same estimator code, products by matrix multiplication instead of double backward)."""
    from .config import TrainConfig
    from .curvature import DenseOperator
    from .probe import build_probe
    from .probe.context import ProbeContext

    cfg = TrainConfig(**{**point.config, "seed": seed, "probe": PROBE})
    probe = build_probe(cfg, objective=point.setup.objective, optimizer=None, theta=point.theta)
    if warm and point.warm is not None:
        probe.warm = {"lanczos/H": point.warm.clone()}
    rows = _Rows()
    original = ProbeContext.operator
    if dense:
        def operator(ctx, which):  # the same probe, with products by the dense matrix
            if which == "H":
                ctx._ops.setdefault("H", DenseOperator(point.H))
                return ctx._ops["H"]
            return original(ctx, which)

        ProbeContext.operator = operator
    try:
        probe.run(step=point.step, theta=point.theta, state={}, optimizer=None, objective=point.setup.objective,
                  writer=rows, config=cfg)
    finally:
        ProbeContext.operator = original
    return rows.rows["probe"][0]


def calibrate_point(point: EdgePoint, seeds: int, dense: bool = True, first_seed: int = 0) -> dict[str, Any]:
    """z of trace, ms_margin, ms_margin_neg and the λ_max bound at one point, cold and warm (`seeds` each)."""
    T = 2.0 / float(point.config["lr"])
    truth = {"trace": float(point.eig.sum()), "ms_margin": point.s_exact, "ms_margin_neg": point.negative_mass / T,
             "lambda_max": float(point.eig[-1])}
    z: dict[str, list[float]] = {k: [] for k in truth}
    err: dict[str, list[float]] = {k: [] for k in truth}
    nhvp, wrong_lmax, verdicts = [], 0, []
    for start in ("cold", "warm"):
        if start == "warm" and point.warm is None:
            continue
        for s in range(first_seed, first_seed + seeds):
            r = probe_at(point, s, start == "warm", dense)
            for k, t in truth.items():
                z[k].append(_z(r[k], r[f"{k}_err"], t))
                err[k].append(float(r[f"{k}_err"]))
            wrong_lmax += int(r["lambda_max_converged"] == 1 and abs(z["lambda_max"][-1]) > 1)
            nhvp.append(r["nhvp"])
            verdicts.append(bool(r["ms_margin"] < 1) == bool(point.s_exact < 1))
    out = {k: _summary(v, mean_err=float(np.mean(err[k]))) for k, v in z.items()}
    out["lambda_max"].update(wrong_converged=wrong_lmax, error_kind="bound")
    out["ms_margin"].update(verdict_correct=float(np.mean(verdicts)))
    return {"step": point.step, "kind": point.kind, "s_exact": point.s_exact, "trace": truth["trace"],
            "negative_mass": point.negative_mass, "n_negative": int(np.sum(point.eig < 0)),
            "lambda_1": float(point.eig[-1]), "lambda_2": float(point.eig[-2]), "mean_nhvp": float(np.mean(nhvp)),
            "metrics": out, "z": {k: [float(x) for x in v] for k, v in z.items()}}


def pooled(results: list[dict[str, Any]], kinds: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """The per-metric summary over several points' z (all, or those of the given kinds)."""
    keep = [r for r in results if kinds is None or r["kind"] in kinds]
    if not keep:
        return {}
    return {k: _summary(np.concatenate([r["z"][k] for r in keep]), n_points=len(keep))
            for k in keep[0]["z"]}


def tails(z: np.ndarray) -> tuple[int, int]:
    """(misses below −2, misses above +2) of a z array."""
    z = np.asarray(z, dtype=float)
    return int(np.sum(z < -2)), int(np.sum(z > 2))

