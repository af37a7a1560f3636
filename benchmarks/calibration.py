"""Error-bar calibration of every probe metric against a dense float64 Hessian.

    python benchmarks/calibration.py                 # table, 30 seeds per metric (a few minutes on 2 cores)
    python benchmarks/calibration.py --json          # {"setup": ..., "metrics": {name: {rms_z, within_2sigma, ...}}}
    python benchmarks/calibration.py --seeds 50 --only ms_margin,trace

At one θ of an 874-parameter CNN (40 fashion4 images, float64, 100 GD steps from init) the probe runs
through its real code path once per seed; z = (estimate − dense truth) / logged error. Goals: rms z in
[0.7, 1.4], ≥ 90 % of seeds within ±2σ, and for ms_margin ≥ 90 % correct S < 1 verdicts where |S − 1| ≥ 0.1.
Lanczos rows (error_kind "bound") carry rigorous residual bounds: there |z| ≤ 1 is the claim, a small rms z
is conservative, and `wrong_converged` counts seeds flagged converged outside their bound (goal: 0).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from eos_probe.calibration import MODEL, calibrate, make_point

GOALS = "rms z in [0.7, 1.4], within ±2σ >= 0.90, ms_margin verdicts >= 0.90 where |S-1| >= 0.1"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--only", default=None, help="comma-separated metric name prefixes")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = ap.parse_args(argv)
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
        notes = []
        for key in ("verdict_correct", "wrong_converged", "mean_nhvp", "mean_probe_nhvp", "error_kind"):
            if key in r:
                v = r[key]
                notes.append(f"{key}={v:.3g}" if isinstance(v, float) else f"{key}={v}")
        print(f"{name:30s} {r['rms_z']:7.2f} {r['within_2sigma']:7.2f} {r['max_abs_z']:8.2f}  {' '.join(notes)}")
    print(f"goals: {GOALS}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    torch.set_num_threads(1)  # tiny model: threads only contend
    sys.exit(main())
