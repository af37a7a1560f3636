"""Error-bar calibration of every probe metric against a dense float64 Hessian.

    python benchmarks/calibration.py                 # table, 30 seeds per metric (a few minutes on 2 cores)
    python benchmarks/calibration.py --json          # {"setup": ..., "metrics": {name: {rms_z, within_2sigma, ...}}}
    python benchmarks/calibration.py --seeds 50 --only ms_margin,trace
    python benchmarks/calibration.py --trajectory auto --cache DIR      # points of a real run at the edge
    python benchmarks/calibration.py --trajectory RUN.h5 --steps 1300,2250 --seeds 100 --hvp

One θ (default): an 874-parameter CNN (40 fashion4 images, float64, 100 GD steps from init); the probe runs
through its real code path once per seed; z = (estimate − dense truth) / logged error. Goals: rms z in
[0.7, 1.4], ≥ 90 % of seeds within ±2σ, and for ms_margin ≥ 90 % correct S < 1 verdicts where |S − 1| ≥ 0.1.
Lanczos rows (error_kind "bound") carry rigorous residual bounds: there |z| ≤ 1 is the claim, a small rms z
is conservative, and `wrong_converged` counts seeds flagged converged outside their bound (goal: 0).

--trajectory: checkpoints of a ZO-GD run of a 1,694-parameter CNN that sits at S(η) ≈ 1 (`auto` trains it,
about 5 minutes, into --cache), each with its dense Hessian (a few minutes each on 2 cores, cached as .npy in
--cache), the default probe (lambda_max, trace, ms_margin) with the run's own step size, cold and warm-started
from the previous checkpoint's top Ritz vectors. Products by the dense matrix unless --hvp (double backward,
the path a run takes; slower). Goals (issue 24): trace and ms_margin rms z in [0.8, 1.2], ≥ 95 % within ±2σ,
no |z| > 4, per point kind (early: |S − 1| ≥ 0.5; near; edge: |S − 1| < 0.05).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from eos_probe.calibration import MODEL, calibrate, make_point

GOALS = "rms z in [0.7, 1.4], within ±2σ >= 0.90, ms_margin verdicts >= 0.90 where |S-1| >= 0.1"
EDGE_GOALS = "trace, ms_margin: rms z in [0.8, 1.2], within ±2σ >= 0.95, max |z| <= 4"


def _row(name: str, r: dict, keys=("verdict_correct", "wrong_converged", "mean_err", "mean_nhvp", "mean_probe_nhvp",
                                   "error_kind")) -> str:
    notes = []
    for key in keys:
        if key in r:
            v = r[key]
            notes.append(f"{key}={v:.3g}" if isinstance(v, float) else f"{key}={v}")
    return f"{name:30s} {r['rms_z']:7.2f} {r['within_2sigma']:7.3f} {r['max_abs_z']:8.2f}  {' '.join(notes)}"


def trajectory(a: argparse.Namespace) -> int:
    from eos_probe.calibration_edge import (TRAJECTORY_ARGS, TRAJECTORY_STEPS, calibrate_point, load_point, pooled,
                                            tails)

    cache = Path(a.cache) if a.cache else None
    run = Path(a.trajectory)
    if a.trajectory == "auto":
        if cache is None:
            sys.exit("--trajectory auto needs --cache DIR (the run and the Hessians are kept there)")
        run = cache / "edge.h5"
        if not run.exists():
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-c", "import sys; from eos_probe.cli import main; sys.exit(main())", "train",
                            *TRAJECTORY_ARGS, "--out", str(run)],
                           check=True)
    steps = [int(s) for s in a.steps.split(",")] if a.steps else list(TRAJECTORY_STEPS)
    results = []
    t0 = time.perf_counter()
    for step in steps:
        point = load_point(run, step, cache=cache, warm_from=step - a.warm_gap if step >= a.warm_gap else None)
        res = calibrate_point(point, a.seeds, dense=not a.hvp)
        results.append(res)
        if not a.json:
            print(f"step {step} ({res['kind']}): S = {res['s_exact']:.4f}, Tr H = {res['trace']:.4g}, λ1 = "
                  f"{res['lambda_1']:.4g}, λ2 = {res['lambda_2']:.4g}, {res['n_negative']} negative eigenvalues "
                  f"(Σ|λ| = {res['negative_mass']:.3g}), {res['mean_nhvp']:.1f} HVPs per probe", flush=True)
            for name, r in res["metrics"].items():
                print("  " + _row(name, r), flush=True)
    summary = {"all": pooled(results)}
    for kind in ("early", "near", "edge"):
        summary[kind] = pooled(results, (kind,))
    setup = {"run": str(run), "steps": steps, "seeds": a.seeds, "starts": "cold + warm", "operator":
             "hvp" if a.hvp else "dense", "seconds": time.perf_counter() - t0, "goals": EDGE_GOALS}
    if a.json:
        print(json.dumps({"setup": setup, "points": results, "pooled": summary}, indent=1))
        return 0
    print(f"pooled over points ({setup['seconds']:.0f} s, {a.seeds} seeds cold + {a.seeds} warm per point):")
    print(f"  {'metric / kind':30s} {'rms z':>7s} {'|z|<=2':>7s} {'max|z|':>8s}  below -2 / above +2")
    for kind, rows in summary.items():
        for name, r in rows.items():
            if name == "lambda_max":
                continue
            z = np.concatenate([p["z"][name] for p in results if kind == "all" or p["kind"] == kind])
            lo, hi = tails(z)
            print(f"  {name + ' / ' + kind:30s} {r['rms_z']:7.2f} {r['within_2sigma']:7.3f} {r['max_abs_z']:8.2f}  "
                  f"{lo} / {hi} of {z.size}")
    print(f"goals: {EDGE_GOALS}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--only", default=None, help="comma-separated metric name prefixes")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--trajectory", default=None, help="a run file with kept checkpoints, or 'auto'")
    ap.add_argument("--steps", default=None, help="comma-separated checkpoint steps (default: the preset list)")
    ap.add_argument("--cache", default=None, help="folder for the auto run and the dense Hessians (.npy)")
    ap.add_argument("--warm-gap", type=int, default=50, help="warm start from the checkpoint this many steps back")
    ap.add_argument("--hvp", action="store_true", help="products by double backward instead of the dense matrix")
    a = ap.parse_args(argv)
    if a.trajectory:
        return trajectory(a)
    t0 = time.perf_counter()
    point = make_point()
    res = calibrate(seeds=a.seeds, point=point, only=a.only.split(",") if a.only else None)
    eig = point.eig
    setup = {"model": MODEL, "dim": int(point.theta.numel()), "seeds": a.seeds, "lambda_max": float(eig[-1]),
             "lambda_2": float(eig[-2]), "trace": float(eig.sum()), "negative_mass": float(-eig[eig < 0].sum()),
             "seconds": time.perf_counter() - t0, "goals": GOALS}
    if a.json:
        print(json.dumps({"setup": setup, "metrics": res}, indent=1))
        return 0
    print(f"calibration at one θ: d = {setup['dim']}, λ1 = {eig[-1]:.4g}, λ2 = {eig[-2]:.4g}, Tr H = {eig.sum():.4g}, "
          f"{a.seeds} seeds ({setup['seconds']:.0f} s)")
    print(f"{'metric':30s} {'rms z':>7s} {'|z|<=2':>7s} {'max|z|':>8s}  notes")
    for name, r in res.items():
        print(_row(name, r))
    print(f"goals: {GOALS}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    torch.set_num_threads(1)  # tiny model: threads only contend
    sys.exit(main())
