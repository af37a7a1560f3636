"""The PyHessian comparison of docs/validation.md §10: eos_probe's Python API against PyHessian as its users
call it, both measured against a dense float64 Hessian (torch.func.hessian) of the same model, loss and data.

    python benchmarks/api_vs_pyhessian.py            # prints a markdown table

Same process, same model object, timings interleaved (each method timed `--repeats` times, best kept).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn


def build(seed: int = 0, n: int = 256, d_in: int = 16, hidden: int = 32, classes: int = 3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                          nn.Linear(hidden, classes))
    x = torch.randn(n, d_in)
    y = (x[:, :classes] + 0.5 * torch.randn(n, classes)).argmax(1)
    return model, x, y


def dense_eigs(model: nn.Module, criterion, x, y) -> np.ndarray:
    from torch.func import functional_call

    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(t):
        params = {k: v.view(s) for k, v, s in zip(names, t.split(sizes), shapes)}
        return criterion(functional_call(model, params, (x,)), y)

    return np.linalg.eigvalsh(torch.func.hessian(f)(theta).numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)  # PyHessian draws its vectors in the default dtype
    torch.set_num_threads(1)
    import eos_probe
    from pyhessian import hessian as pyhessian

    model, x, y = build()
    criterion = nn.CrossEntropyLoss()
    ev = dense_eigs(model, criterion, x, y)
    lam, tr = ev[-1], ev.sum()
    d = sum(p.numel() for p in model.parameters())
    rows = []

    def timed(fn):
        best, out = np.inf, None
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out = fn(r)
            best = min(best, time.perf_counter() - t0)
        return out, best

    # --- eos-probe, as in the README and docs/howto/own-model.md
    def ours_lmax(r):
        H = eos_probe.hessian(model, criterion, (x, y))
        return eos_probe.lambda_max(H, seed=r)

    def ours_trace(r):
        H = eos_probe.hessian(model, criterion, (x, y))
        return eos_probe.trace(H, seed=r)

    def ours_trace_builtin(r):
        H = eos_probe.hessian(model, "ce", (x, y))  # built-in ce: exact Gauss–Newton part + residual
        return eos_probe.trace(H, seed=r)

    def ph_lmax(r):
        torch.manual_seed(r)
        h = pyhessian(_fresh(model), criterion, data=(x, y), cuda=False)
        n0 = _count()
        vals, _ = h.eigenvalues()
        return vals[0], _count() - n0

    def ph_trace(r):
        torch.manual_seed(r)
        h = pyhessian(_fresh(model), criterion, data=(x, y), cuda=False)
        n0 = _count()
        samples = h.trace()
        return samples, _count() - n0

    est, t = timed(ours_lmax)
    rows.append(("λ_max", "eos_probe.lambda_max(H)", f"{est.value:.6g} ± {est.error:.1e}",
                 abs(est.value - lam) / lam, est.n_hvp, t))
    (val, n), t = timed(ph_lmax)
    rows.append(("λ_max", "PyHessian eigenvalues()", f"{val:.6g}", abs(val - lam) / lam, n, t))
    for label, fn in (("eos_probe.trace(H), nn.CrossEntropyLoss()", ours_trace),
                      ('eos_probe.trace(H), loss "ce"', ours_trace_builtin)):
        est, t = timed(fn)
        rows.append(("Tr H", label, f"{est.value:.4g} ± {est.error:.2g}", abs(est.value - tr) / tr, est.n_hvp, t))
    (samples, n), t = timed(ph_trace)
    m, se = float(np.mean(samples)), float(np.std(samples, ddof=1) / np.sqrt(len(samples)))
    rows.append(("Tr H", "PyHessian trace()", f"{m:.4g} ± {se:.2g} (s.e. of its samples)", abs(m - tr) / tr, n, t))

    print(f"MLP {x.shape[1]}-32-32-3 (tanh), {d} parameters, {x.shape[0]} examples, float64, cross-entropy; "
          f"dense Hessian: λ_max = {lam:.6g}, Tr H = {tr:.5g}; torch {torch.__version__}, 1 thread, best of "
          f"{args.repeats}\n")
    print("| quantity | call | estimate | error vs dense | HVPs | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for q, label, e, err, n, t in rows:
        print(f"| {q} | {label} | {e} | {100 * err:.2g}% | {n} | {t:.3f} |")


_N = [0]


def _fresh(model: nn.Module) -> nn.Module:
    """A copy without .grad: PyHessian's backward(create_graph=True) accumulates into .grad, so a second
    `hessian(model, ...)` on the same module would see twice the gradient (and twice the Hessian)."""
    import copy

    m = copy.deepcopy(model)
    for p in m.parameters():
        p.grad = None
    return m


def _count() -> int:
    return _N[0]


def _patch_pyhessian_counter() -> None:
    """Count PyHessian's HVPs by wrapping the function its methods call."""
    import importlib

    ph = importlib.import_module("pyhessian.hessian")  # the package rebinds `pyhessian.hessian` to the class
    orig = ph.hessian_vector_product

    def counted(gradsH, params, v):
        _N[0] += 1
        return orig(gradsH, params, v)

    ph.hessian_vector_product = counted


if __name__ == "__main__":
    _patch_pyhessian_counter()
    main()
