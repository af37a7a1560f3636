"""Where the edge prediction's dense path stops being affordable: wall time and memory of the dense Hessian
(chunked reverse-over-reverse + eigvalsh) against the iterative path (top-20 Ritz + SLQ, 10 probes x 60 steps) on
CNNs of growing width (fashion4, 40 images, float64, one thread), and how far the iterative η* lands from the
dense one.

    python benchmarks/edge_dense_cost.py --out benchmarks/results_edge_dense_cost.json

The default `--dense-max` of `eos-probe edge` (`eos_probe.sweep.edge_predict.DENSE_MAX`) is the largest d at
which the dense path costs at most 3x the iterative one: up to there exactness is cheap, beyond it the iterative
path's ±2-3 % interval is the better buy (docs/edge.md, "Which path").
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import torch

SIZES = [([2, 2], 4), ([2, 4], 8), ([3, 6], 12), ([4, 8], 16)]


def one(widths: list[int], hidden: int, steps: int) -> dict:
    from eos_probe.config import TrainConfig
    from eos_probe.curvature import HessianOperator
    from eos_probe.sweep.edge_predict import _dense, iterative_spectrum, predict
    from eos_probe.build import build

    cfg = TrainConfig(model="cnn", model_args={"widths": widths, "hidden": hidden}, n_per_class=10, device="cpu",
                      dtype="float64", optimizer="zo-gd", lr=0.02, steps=steps, probe=[])
    setup = build(cfg)
    obj, theta = setup.objective, setup.theta.clone()
    state = setup.optimizer.init(theta)
    for t in range(steps):  # a trained (indefinite) point, not the initialisation
        setup.optimizer.step(obj, theta, state, t)
    t0 = time.perf_counter()
    dense = _dense(obj, theta, 32)
    t_dense = time.perf_counter() - t0
    rss_dense = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    it = iterative_spectrum(HessianOperator(obj, theta), 20, 10, 60, seed=0)
    t_it = time.perf_counter() - t0
    pd, pi = predict(dense, cfg.to_dict()), predict(it, cfg.to_dict())
    return {"widths": widths, "hidden": hidden, "dim": obj.dim, "dense_seconds": t_dense, "iterative_seconds": t_it,
            "ratio": t_dense / t_it, "iterative_hvp": it.n_hvp, "peak_rss_mb_after_dense": rss_dense,
            "eta_dense": pd.eta, "eta_iterative": pi.eta, "iterative_lo": pi.lo, "iterative_hi": pi.hi,
            "contains": bool(pi.lo <= pd.eta <= pi.hi), "n_negative": dense.n_negative}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results_edge_dense_cost.json")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for widths, hidden in SIZES:
        r = one(widths, hidden, args.steps)
        rows.append(r)
        print(json.dumps(r), flush=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    out = {"machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread", "load_average_at_end": load,
           "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
