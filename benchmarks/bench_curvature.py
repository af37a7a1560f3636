"""Curvature benchmark: eos-probe against PyHessian (and plain Hutchinson) on the same model and data.

    python benchmarks/bench_curvature.py                 # CNN on fashion4 (1,000 images), full batch
    python benchmarks/bench_curvature.py --quick         # ~3 min on 2 CPU cores: 400 images, one repeat
    python benchmarks/bench_curvature.py --model mlp --n 600 --point init --json-out curv.json

Same model, same full batch, same loss (MSE 0.5·Σ(f−onehot)²/n), one process, side by side:

* HVP back ends: forward-over-reverse vs cached double backward (and PyHessian's own HVP), seconds per product.
* λ_max to 1e-3 relative: the true error of every method is measured against a tight Lanczos reference.
  PyHessian's power iteration stops when λ changes by < tol between iterations, which does not bound the
  error, so its tol is tightened (1e-3, 3e-4, 1e-4, ...) until its true error is ≤ 1e-3 — "equal accuracy".
* Tr H to 2% relative standard error: plain Hutchinson (PyHessian's estimator, run with an honest stopping
  rule; when it would need more probes than --hutch-cap its cost is projected from the probes it did draw,
  and the row says so), PyHessian's own trace as shipped, eos-probe's layer-stratified Hutchinson and its
  exact-Gauss–Newton + residual estimator.

Both at initialisation and after --fit-steps of full-batch Adam (the regime a training run spends its time in).
A small-model section checks the estimates against a dense Hessian. Timings are wall-clock: run it on an idle
machine (the load average is printed with the results).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from eos_probe.curvature import HessianOperator, dense_hessian, lambda_max, trace
from eos_probe.data import load_dataset
from eos_probe.models import build_model
from eos_probe.objective import Objective
from eos_probe.reference import PyHessianReference, pyhessian_available

TARGET_LAMBDA = 1e-3
TARGET_TRACE = 0.02


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{datetime.date.today().isoformat()}")


def load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def build(args) -> tuple[Objective, torch.Tensor]:
    data = load_dataset(args.dataset)
    x, y = data.x_train[: args.n], data.y_train[: args.n]
    dtype = getattr(torch, args.dtype)
    model = build_model(args.model, input_shape=data.input_shape, num_classes=data.num_classes, seed=args.seed,
                        dtype=dtype)
    obj = Objective(model, x.to(dtype) if x.is_floating_point() else x, y, loss=args.loss,
                    num_classes=data.num_classes, microbatch=args.microbatch)
    return obj, obj.initial_theta()


def fit(obj: Objective, theta: torch.Tensor, steps: int, lr: float) -> tuple[torch.Tensor, float, float]:
    """Full-batch Adam (first order) for `steps` steps: a point near a fit, as in a training run."""
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    for t in range(1, steps + 1):
        _, _, g = obj.value_and_grad(theta)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta = theta - lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    loss, acc = obj.evaluate(theta)
    return theta, float(loss), float(acc)


# -------------------------------------------------------------------------------------------------- HVP
def bench_backends(obj: Objective, theta: torch.Tensor, reps: int) -> list[dict]:
    rows = []
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=theta.dtype)
    V = torch.randn((4, theta.numel()), generator=torch.Generator().manual_seed(1), dtype=theta.dtype)
    for backend in ("double-backward", "fwd-rev"):
        op, setup = timed(lambda: HessianOperator(obj, theta, backend=backend))
        _, first = timed(lambda: op.matvec(v))
        per = statistics.median(timed(lambda: op.matvec(v))[1] for _ in range(reps))
        _, mm = timed(lambda: op.matmat(V))
        rows.append({"backend": backend, "setup_s": setup + first - per, "matvec_s": per, "matmat4_per_s": mm / 4})
    return rows


# -------------------------------------------------------------------------------------------------- λ_max
def bench_lambda(obj: Objective, theta: torch.Tensor, repeats: int, with_pyhessian: bool) -> tuple[float, list[dict]]:
    ref = lambda_max(HessianOperator(obj, theta, "double-backward"), tol=1e-8, max_iter=400,
                     generator=torch.Generator().manual_seed(12345))
    lam = ref.value
    rows: list[dict] = []

    def record(method: str, runs: list[tuple[float, int, float]], note: str = "") -> None:
        errs = [abs(v - lam) / abs(lam) for v, _, _ in runs]
        rows.append({"method": method, "value": statistics.median(v for v, _, _ in runs),
                     "true_rel_err": max(errs), "n_hvp": statistics.median(n for _, n, _ in runs),
                     "seconds": statistics.median(s for _, _, s in runs), "note": note})

    for bound in ("residual", "gap"):
        runs = []
        for r in range(repeats):
            def go():
                op = HessianOperator(obj, theta, "double-backward")
                return lambda_max(op, tol=TARGET_LAMBDA, bound=bound, generator=torch.Generator().manual_seed(r))
            est, s = timed(go)
            assert est.converged
            runs.append((est.value, est.n_hvp, s))
        record(f"eos-probe Lanczos, {bound} bound", runs,
               "certified: residual ≤ 1e-3·λ" if bound == "residual" else "Kato–Temple estimate ≤ 1e-3·λ")

    from scipy.sparse.linalg import eigsh
    runs = []
    for r in range(repeats):
        def go():
            op = HessianOperator(obj, theta, "double-backward")
            v0 = torch.randn(theta.shape, generator=torch.Generator().manual_seed(r), dtype=theta.dtype).numpy()
            val = eigsh(op.to_scipy(), k=1, which="LA", tol=TARGET_LAMBDA, v0=v0)[0][0]
            return float(val), op.n_hvp
        (val, n), s = timed(go)
        runs.append((val, n, s))
    record("scipy eigsh (ARPACK) on to_scipy()", runs, "tol=1e-3 (residual)")

    if with_pyhessian:
        runs = []
        for r in range(repeats):
            def go():
                ph = PyHessianReference(obj, theta)
                try:
                    return ph.lambda_max(tol=TARGET_LAMBDA, max_iter=1000, seed=r)
                finally:
                    ph.close()
            est, s = timed(go)
            runs.append((est.value, est.n_hvp, s))
        record("PyHessian power iteration, tol=1e-3", runs, "its stopping rule")
        # equal accuracy: tighten PyHessian's tol until every repeat has true error ≤ 1e-3
        for tol in (3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6):
            if rows[-1]["true_rel_err"] <= TARGET_LAMBDA:
                break
            runs = []
            for r in range(repeats):
                def go():
                    ph = PyHessianReference(obj, theta)
                    try:
                        return ph.lambda_max(tol=tol, max_iter=1000, seed=r)
                    finally:
                        ph.close()
                est, s = timed(go)
                runs.append((est.value, est.n_hvp, s))
            record(f"PyHessian power iteration, tol={tol:g}", runs, "tightened for equal accuracy")
    return lam, rows


# -------------------------------------------------------------------------------------------------- trace
def bench_trace(obj: Objective, theta: torch.Tensor, hutch_cap: int, cap: int, with_pyhessian: bool) -> list[dict]:
    rows: list[dict] = []

    def row(method, est, seconds, note="", projected=None):
        d = {"method": method, "value": est.value, "rel_se": est.error / abs(est.value), "n_hvp": est.n_hvp,
             "seconds": seconds, "converged": est.converged, "note": note, "error": est.error}
        if projected:
            d.update(projected)
        rows.append(d)

    # plain Hutchinson, stopped honestly at 2% s.e. (or projected from the probes drawn up to the cap)
    def hutch():
        op = HessianOperator(obj, theta, "double-backward")
        return trace(op, "hutchinson", n_matvec=hutch_cap, rtol=TARGET_TRACE, generator=torch.Generator().manual_seed(1))
    est, s = timed(hutch)
    if est.converged:
        row("Hutchinson (PyHessian's estimator), stop at 2% s.e.", est, s)
    else:
        samples = est.extra["samples"]
        need = math.ceil((samples.std(ddof=1) / (TARGET_TRACE * abs(samples.mean()))) ** 2)
        per = s / est.n_hvp
        row("Hutchinson (PyHessian's estimator), stop at 2% s.e.", est, s,
            f"projected: {need} probes from {est.n_hvp} drawn",
            {"n_hvp": need, "seconds": need * per, "rel_se": TARGET_TRACE, "projected": True,
             "drawn": est.n_hvp, "drawn_seconds": s})

    if with_pyhessian:
        def go():
            ph = PyHessianReference(obj, theta)
            try:
                return ph.trace(tol=1e-3, max_iter=100, seed=1)
            finally:
                ph.close()
        est, s = timed(go)
        row("PyHessian trace as shipped (tol=1e-3, maxIter=100)", est, s, "its stopping rule, not an error target")

    for method, label in (("hutchinson", "eos-probe Hutchinson, layer-stratified"),
                          ("ggn+residual", "eos-probe exact GGN + residual (stratified)")):
        def go():
            op = HessianOperator(obj, theta, "double-backward")
            return trace(op, method, n_matvec=cap, rtol=TARGET_TRACE, blocks="layers",
                         generator=torch.Generator().manual_seed(2))
        est, s = timed(go)
        note = ""
        if method == "ggn+residual":
            note = f"Tr G {est.extra['exact_part']:.4g} in {est.extra['ggn_seconds']:.1f}s, +{est.extra['n_jvp']} JVPs"
        row(label, est, s, note)
    return rows


# -------------------------------------------------------------------------------------------------- validation
def validate(args) -> list[dict]:
    """Small MLP with a dense Hessian: every estimator against the exact λ_max and trace."""
    data = load_dataset(args.dataset)
    x = torch.nn.functional.avg_pool2d(data.x_train[:200], 4).double()
    model = build_model("mlp", input_shape=tuple(x.shape[1:]), num_classes=data.num_classes, hidden=(24,),
                        dtype=torch.float64, seed=args.seed)
    obj = Objective(model, x, data.y_train[:200], loss=args.loss, num_classes=data.num_classes)
    theta = obj.initial_theta()
    H = dense_hessian(obj, theta)
    ev = torch.linalg.eigvalsh(H)
    exact_tr, exact_lam = float(H.trace()), float(ev[-1])
    op = HessianOperator(obj, theta)
    out = []
    lm = lambda_max(op, tol=1e-6)
    out.append({"quantity": "λ_max", "exact": exact_lam, "estimate": lm.value, "error": lm.error,
                "method": "Lanczos tol 1e-6", "n_hvp": lm.n_hvp})
    for method, blocks in (("hutchinson", None), ("hutchinson", "layers"), ("ggn+residual", "layers")):
        est = trace(op, method, n_matvec=60, blocks=blocks, generator=torch.Generator().manual_seed(3))
        out.append({"quantity": "Tr H", "exact": exact_tr, "estimate": est.value, "error": est.error,
                    "method": f"{method}{' (layers)' if blocks else ''}, 60 HVPs", "n_hvp": est.n_hvp})
    if pyhessian_available():
        ph = PyHessianReference(obj, theta)
        e = ph.lambda_max(tol=1e-6, max_iter=1000)
        t = ph.trace(tol=1e-12, max_iter=60)
        ph.close()
        out.append({"quantity": "λ_max", "exact": exact_lam, "estimate": e.value, "error": e.error,
                    "method": "PyHessian tol 1e-6", "n_hvp": e.n_hvp})
        out.append({"quantity": "Tr H", "exact": exact_tr, "estimate": t.value, "error": t.error,
                    "method": "PyHessian trace, 60 HVPs", "n_hvp": t.n_hvp})
    return out


# -------------------------------------------------------------------------------------------------- report
def fmt_lambda(point: str, lam: float, rows: list[dict]) -> list[str]:
    base = next(r for r in rows if r["method"].startswith("eos-probe Lanczos, residual"))
    lines = []
    for r in rows:
        ok = "yes" if r["true_rel_err"] <= TARGET_LAMBDA else "no"
        lines.append(f"| {point} | λ_max = {lam:.5g} | {r['method']} | {r['true_rel_err']:.1e} ({ok}) | "
                     f"{r['n_hvp']:.0f} | {r['seconds']:.1f} | {r['seconds'] / base['seconds']:.1f}x | "
                     f"{r['n_hvp'] / base['n_hvp']:.1f}x | {r['note']} |")
    return lines


def fmt_trace(point: str, rows: list[dict]) -> list[str]:
    base = next(r for r in rows if r["method"].startswith("eos-probe exact GGN"))
    lines = []
    for r in rows:
        lines.append(f"| {point} | Tr H = {r['value']:.4g} ± {r['error']:.2g} | {r['method']} | "
                     f"{100 * r['rel_se']:.1f}% | {r['n_hvp']:.0f} | {r['seconds']:.1f} | "
                     f"{r['seconds'] / base['seconds']:.1f}x | {r['n_hvp'] / base['n_hvp']:.1f}x | {r['note']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--dataset", default="fashion4")
    ap.add_argument("--n", type=int, default=None, help="training examples (first n; default all, --quick 400)")
    ap.add_argument("--loss", default="mse", choices=["mse", "ce"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--microbatch", type=int, default=250)
    ap.add_argument("--point", default="both", choices=["init", "fit", "both"])
    ap.add_argument("--fit-steps", type=int, default=None, help="full-batch Adam steps to the 'fit' point (300)")
    ap.add_argument("--fit-lr", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=None, help="repeats of each λ_max method (3; --quick 1)")
    ap.add_argument("--hutch-cap", type=int, default=None, help="most probes plain Hutchinson draws (60; quick 30)")
    ap.add_argument("--cap", type=int, default=300, help="most HVPs of eos-probe's trace estimators")
    ap.add_argument("--no-pyhessian", action="store_true")
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    args.n = args.n or (400 if args.quick else 1000)
    args.fit_steps = args.fit_steps if args.fit_steps is not None else (100 if args.quick else 300)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.hutch_cap = args.hutch_cap or (30 if args.quick else 60)
    with_ph = not args.no_pyhessian
    if with_ph and not pyhessian_available():
        print("pyhessian not installed (pip install --no-deps pyhessian==0.1): PyHessian rows skipped", file=sys.stderr)
        with_ph = False

    t_start = time.perf_counter()
    obj, theta0 = build(args)
    header = (f"{args.model} on {args.dataset} (n={args.n}, d={obj.dim:,}, {args.loss}, {args.dtype}, "
              f"micro-batch {args.microbatch}) — {machine()}")
    print(f"# {header}\nload average at start: {load()}", flush=True)
    results: dict = {"header": header, "args": vars(args), "points": {}}

    backends = bench_backends(obj, theta0, reps=3)
    results["backends"] = backends
    lines = ["| HVP back end | seconds / HVP | batched (4) seconds / HVP | one-off setup s |", "| --- | --- | --- | --- |"]
    for b in backends:
        lines.append(f"| {b['backend']} | {b['matvec_s']:.3f} | {b['matmat4_per_s']:.3f} | {b['setup_s']:.2f} |")
    print("\n" + "\n".join(lines), flush=True)

    points = []
    if args.point in ("init", "both"):
        points.append(("init", theta0, None))
    if args.point in ("fit", "both"):
        (theta_fit, loss, acc), s = timed(lambda: fit(obj, theta0, args.fit_steps, args.fit_lr))
        print(f"\nfit point: {args.fit_steps} Adam steps (lr {args.fit_lr:g}) in {s:.0f}s, "
              f"loss {loss:.4g}, train accuracy {acc:.3f}", flush=True)
        points.append((f"fit ({args.fit_steps} Adam steps, loss {loss:.3g})", theta_fit, (loss, acc)))

    lam_lines = ["| point | reference | method | true rel. error (≤1e-3?) | HVPs | seconds | time / eos-probe "
                 "| HVPs / eos-probe | note |", "|" + " --- |" * 9]
    tr_lines = ["| point | estimate | method | rel. s.e. | HVPs | seconds | time / ggn+residual "
                "| HVPs / ggn+residual | note |", "|" + " --- |" * 9]
    for name, theta, _ in points:
        lam, lrows = bench_lambda(obj, theta, args.repeats, with_ph)
        lam_lines += fmt_lambda(name, lam, lrows)
        print("\n" + "\n".join(lam_lines), flush=True)
        trows = bench_trace(obj, theta, args.hutch_cap, args.cap, with_ph)
        tr_lines += fmt_trace(name, trows)
        print("\n" + "\n".join(tr_lines), flush=True)
        results["points"][name] = {"lambda_max": lam, "lambda_rows": lrows, "trace_rows": trows}

    print(f"\n## {header}\n\nλ_max to 1e-3 relative (true error against a tol-1e-8 Lanczos reference; "
          f"median of {args.repeats} repeat(s)):\n")
    print("\n".join(lam_lines))
    print(f"\nTr H to {100 * TARGET_TRACE:.0f}% relative standard error:\n")
    print("\n".join(tr_lines))

    if not args.no_validate:
        val = validate(args)
        results["validation"] = val
        print("\nValidation against a dense Hessian (MLP, 200 images pooled to 7×7, float64):\n")
        print("| quantity | exact | method | estimate ± error | |est − exact| / error | HVPs |\n| --- | --- | --- | --- | --- | --- |")
        for v in val:
            z = abs(v["estimate"] - v["exact"]) / v["error"] if v["error"] > 0 else float("inf")
            print(f"| {v['quantity']} | {v['exact']:.6g} | {v['method']} | {v['estimate']:.6g} ± {v['error']:.2g} "
                  f"| {z:.2f} | {v['n_hvp']} |")
    print(f"\nload average at end: {load()}; total {time.perf_counter() - t_start:.0f}s")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
