"""The ZO-eNTK law (docs/theory.md §5c) on the entk recipe's MLP at widths ×1, ×4, ×16: measured relative MSE of
K_ZO times P/(1 + r_eff), per P, from the probe metric `entk_fidelity` itself.

    python benchmarks/entk_width_table.py [--steps 0] [--pool 2048]

`--steps N` first trains N ZO-GD steps (lr 1e-3) from the seed-0 initialisation, so the law can be read
away from initialisation too.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from eos_probe.config import TrainConfig
from eos_probe.probe import ProbeContext, build_probe
from eos_probe.build import build


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--pool", type=int, default=2048)
    ap.add_argument("--widths", default="16,64,256")
    args = ap.parse_args()
    print("| width | d | step | r_eff | P=1 | P=4 | P=16 | P=64 | step err (meas / pred) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in (int(x) for x in args.widths.split(",")):
        cfg = TrainConfig(model="mlp", model_args={"hidden": [w]}, n_per_class=50, optimizer="zo-gd", lr=1e-3,
                          probe=[f"entk_fidelity:pool={args.pool}"])
        setup = build(cfg)
        theta, opt, obj = setup.theta, setup.optimizer, setup.objective
        state = opt.init(theta)
        for t in range(args.steps):
            opt.step(obj, theta, state, t)
        probe = build_probe(cfg, setup)
        (metric,) = probe.metrics
        row = metric.compute(ProbeContext(probe, args.steps, theta, state, opt, obj, cfg))
        ratios = " | ".join(f"{r:.3f}" for r in row["entk_fidelity_mse_ratio"])
        print(f"| {w} | {obj.dim:,} | {args.steps} | {row['entk_fidelity_r_eff']:.2f} | {ratios} | "
              f"{row['entk_fidelity_step_err']:.2f} / {row['entk_fidelity_step_err_pred']:.2f} |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
