"""How exact is the free ZO curvature sample (L(θ+μu) + L(θ−μu) − 2L(θ))/μ² against uᵀHu?

    python benchmarks/zo_trace_accuracy.py                      # default CNN at initialisation
    python benchmarks/zo_trace_accuracy.py --model cnn --model-arg widths=[4,8] --model-arg hidden=16 \
        --n-per-class 20 --directions 20 --json

For each μ, the same directions u (the trainer's own stream and sampler) give
  * `exact`: uᵀHu by a float64 Hessian-vector product (the truth),
  * `f64`:   the second difference with float64 losses  → its error is the O(μ²) truncation alone,
  * `f32`:   the second difference with float32 losses (what a float32 run logs) → truncation + rounding.
Reported per μ: rms of (sample − exact), relative to the Hutchinson spread sd(uᵀHu) = the noise the
monitor has anyway. An error well below that spread costs the monitor nothing.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import sys

import torch

from eos_probe.config import TrainConfig
from eos_probe.optim.sources import TwoPointSource
from eos_probe.optim.sources import PURPOSE_DIRECTIONS, stream_seed
from eos_probe.build import build
from eos_probe.zo_monitor import curvature_sample


def measure(model: str = "cnn", model_args: dict | None = None, n_per_class: int | None = None,
            n_dirs: int = 10, mus: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 3e-2), directions: str = "gaussian",
            seed: int = 0) -> dict:
    """Errors of the float32/float64 second differences against uᵀHu (float64) at the initial θ."""
    kw = dict(model=model, model_args=dict(model_args or {}), n_per_class=n_per_class, device="cpu", seed=seed)
    s32 = build(TrainConfig(**kw, dtype="float32"))
    s64 = build(TrainConfig(**kw, dtype="float64"))
    th32, th64 = s32.theta, s64.theta
    assert torch.equal(th32.double(), th64) or torch.allclose(th32.double(), th64)
    th64 = th32.double()  # the same point in both precisions
    src = TwoPointSource(directions=directions, seed=seed)
    gen = torch.Generator()
    hvp = s64.objective.hvp_at(th64)
    f0_32, f0_64 = s32.objective.loss(th32), s64.objective.loss(th64)
    exact, rows = [], {mu: {"f32": [], "f64": []} for mu in mus}
    for k in range(n_dirs):
        gen.manual_seed(stream_seed(seed, k, PURPOSE_DIRECTIONS))
        u32 = src.sample(torch.empty_like(th32), gen)
        u64 = u32.double()
        exact.append(float(u64 @ hvp.matvec(u64)))
        for mu in mus:
            for tag, obj, th, u, f0 in (("f32", s32.objective, th32, u32, f0_32),
                                        ("f64", s64.objective, th64, u64, f0_64)):
                lp, lm = obj.loss(th + mu * u), obj.loss(th - mu * u)
                rows[mu][tag].append(float(curvature_sample(lp[None], lm[None], f0, mu)))
    ex = torch.tensor(exact, dtype=torch.float64)
    spread = float(ex.std())
    out = {"model": model, "n_params": s32.objective.dim, "loss": float(f0_64), "directions": directions,
           "n_dirs": n_dirs, "mean_uHu": float(ex.mean()), "sd_uHu": spread, "per_mu": []}
    for mu in mus:
        r = {"mu": mu, "mu_norm_u": mu * math.sqrt(s32.objective.dim)}
        for tag in ("f32", "f64"):
            d = torch.tensor(rows[mu][tag], dtype=torch.float64) - ex
            r[f"rms_err_{tag}"] = float(d.pow(2).mean().sqrt())
            r[f"mean_err_{tag}"] = float(d.mean())
            r[f"rms_err_{tag}_over_sd"] = r[f"rms_err_{tag}"] / spread if spread > 0 else math.nan
        out["per_mu"].append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--n-per-class", type=int)
    ap.add_argument("--directions", type=int, default=10, help="number of directions u")
    ap.add_argument("--law", default="gaussian", choices=["gaussian", "sphere", "rademacher"])
    ap.add_argument("--mus", default="1e-4,1e-3,1e-2,3e-2")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    margs = {}
    for item in a.model_arg:
        k, v = item.split("=", 1)
        try:
            margs[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            margs[k] = v
    res = measure(a.model, margs, a.n_per_class, a.directions, tuple(float(m) for m in a.mus.split(",")), a.law)
    if a.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return 0
    print(f"{res['model']} ({res['n_params']:,} params, loss {res['loss']:.4g}, {res['directions']} u): "
          f"mean uᵀHu {res['mean_uHu']:.4g}, sd {res['sd_uHu']:.4g} over {res['n_dirs']} directions")
    print("| μ | μ‖u‖ | rms err float64 | rms err float32 | float32 err / sd(uᵀHu) |")
    print("| --- | --- | --- | --- | --- |")
    for r in res["per_mu"]:
        print(f"| {r['mu']:g} | {r['mu_norm_u']:.3g} | {r['rms_err_f64']:.3g} | {r['rms_err_f32']:.3g} "
              f"| {r['rms_err_f32_over_sd']:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
