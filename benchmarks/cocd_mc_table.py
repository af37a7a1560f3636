"""CoCD's exact threshold α*(H, B, γ) (monodromy, eos_probe.theory.cocd) against the step size where the
project's own `cocd` source starts to diverge on random quadratics (eos_probe.theory.cocd_simulate).

    python benchmarks/cocd_mc_table.py [--d 12] [--quadratics 5]

Each quadratic: H = Q diag(λ) Qᵀ, λ ~ U(0.05, 1) sorted, Q Haar-random. α_MC is located by nested grids
(±5 %, then two refinements: resolution 0.01 % of α*); also checked: 0.95α* decays and 1.05α* grows.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from eos_probe.theory.cocd import critical_lr, random_rotation
from eos_probe.theory.cocd_simulate import mc_critical_lr, simulate_cocd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=12)
    ap.add_argument("--quadratics", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=200)
    args = ap.parse_args()
    d = args.d
    blocks = sorted({d, d // 3, max(1, d // 4), 1}, reverse=True)
    print(f"d = {d}, {args.quadratics} random quadratics per (B, gamma); cycles per simulation {args.cycles}")
    print("| B | gamma | alpha*·λmax (min–max) | max abs(α_MC/α* − 1) | 0.95α* decays | 1.05α* grows |")
    print("|---|---|---|---|---|---|")
    t0 = time.time()
    for B in blocks:
        for gamma in (1.0, 0.99, 0.9, 0.5, 0.0):
            edges, errs, dec, grow = [], [], 0, 0
            for q in range(args.quadratics):
                rng = np.random.default_rng(1000 * B + q)
                lam = np.sort(rng.uniform(0.05, 1.0, d))
                Q = random_rotation(d, 7919 * q + B)
                H = Q @ np.diag(lam) @ Q.T
                a = critical_lr(H, B, gamma)
                runs = simulate_cocd(H, [0.95 * a, 1.05 * a], B, gamma, cycles=args.cycles, seed=q, predict=False)
                dec += runs[0].rate < 0
                grow += runs[1].rate > 0
                amc = mc_critical_lr(H, B, gamma, a, span=0.05, points=11, refine=2, cycles=args.cycles, seed=q)
                edges.append(a * lam[-1])
                errs.append(abs(amc / a - 1))
            n = args.quadratics
            print(f"| {B} | {gamma:g} | {min(edges):.3f}–{max(edges):.3f} | {max(errs):.2e} | {dec}/{n} | {grow}/{n} |",
                  flush=True)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
