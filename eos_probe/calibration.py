"""Error-bar calibration of every probe metric against a dense float64 Hessian (behind benchmarks/calibration.py).

At one fixed θ of a small real model (a tiny CNN on a fashion4 subset, float64) the probe is run through its
real code path (`build_probe` → `Probe.run`) once per seed — the seed only changes the probe's random
streams — and each logged value is compared with the truth from `torch.func.hessian`:
z = (estimate − truth) / error. A calibrated one-sigma error bar has rms z ≈ 1 and ≈ 95 % of |z| ≤ 2.

Lanczos error bars (lambda_max, top_k, precond_lambda_max) are rigorous residual bounds, not standard
errors: for them |z| ≤ 1 is the claim (z far below 1 is conservative, not wrong) and the row also counts
`wrong_converged`, seeds flagged converged whose value lies outside its bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .curvature.dense import dense_hessian_chunked

#: the calibration model: 874 parameters, 40 fashion4 images, float64
MODEL = dict(model="cnn", model_args={"widths": [2, 2], "hidden": 8}, n_per_class=10, device="cpu",
             dtype="float64", checkpoint_every=10**9)


class _Rows:
    """A stand-in for the run writer: keeps the rows `Probe.run` appends."""

    def __init__(self) -> None:
        self.rows: dict[str, list] = {}

    def append(self, group: str, row: dict) -> None:
        self.rows.setdefault(group, []).append(row)


@dataclass
class Point:
    """A fixed θ with its dense Hessian, eigen-decomposition and (for Adam) a preconditioner state."""

    setup: Any
    theta: torch.Tensor
    H: np.ndarray
    eig: np.ndarray
    vecs: np.ndarray
    adam_state: dict = field(default_factory=dict)
    adam_optimizer: Any = None


def make_point(gd_steps: int = 100, lr: float = 0.3, adam_steps: int = 20) -> Point:
    """Train the calibration model a little with full-batch GD (a θ with a developed outlier spectrum)."""
    from .config import TrainConfig
    from .build import build

    setup = build(TrainConfig(**MODEL, optimizer="gd", lr=lr, steps=gd_steps, probe=[]))
    obj, opt, theta = setup.objective, setup.optimizer, setup.theta.clone()
    state = opt.init(theta)
    for t in range(gd_steps):
        opt.step(obj, theta, state, t)
    H = dense_hessian_chunked(obj, theta)
    eig, vecs = np.linalg.eigh(H)
    # an Adam preconditioner from a few ZO-Adam steps taken from θ (θ itself is kept)
    aset = build(TrainConfig(**MODEL, optimizer="zo-adam", lr=1e-3, steps=adam_steps, probe=[]))
    a_theta = theta.clone()
    a_state = aset.optimizer.init(a_theta)
    for t in range(adam_steps):
        aset.optimizer.step(obj, a_theta, a_state, t)
    return Point(setup, theta, H, eig, vecs, a_state, aset.optimizer)


def _probe(point: Point, optimizer: str, lr: float, seed: int, metrics: list[str], warm: dict | None = None,
           state: dict | None = None, opt=None) -> dict[str, Any]:
    from .config import TrainConfig
    from .probe import build_probe

    cfg = TrainConfig(**MODEL, optimizer=optimizer, lr=lr, seed=seed, probe=metrics)
    probe = build_probe(cfg, objective=point.setup.objective, optimizer=opt, theta=point.theta)
    probe._backend = "double-backward"  # the faster back end for this small CNN on CPU
    if warm:
        probe.warm = dict(warm)
    rows = _Rows()
    probe.run(step=1, theta=point.theta, state=state or {}, optimizer=opt, objective=point.setup.objective,
              writer=rows, config=cfg)
    return rows.rows["probe"][0]


def ms_exact(eig: np.ndarray, lr: float, optimizer: str = "zo-gd", beta: float = 0.0) -> float:
    """S(η) over the positive eigenvalues (the probe's definition), by the theory module."""
    from .presets import preset
    from .theory import ms_sum

    pos = eig[eig > 0]
    kw = {"momentum": beta} if preset(optimizer).takes_momentum else {}
    return ms_sum(pos, lr, optimizer, **kw)


def lr_for_s(eig: np.ndarray, target: float, optimizer: str = "zo-gd") -> float:
    """The step size at which the exact S(η) equals `target` (S is increasing in η on the admissible range)."""
    from scipy.optimize import brentq

    from .presets import preset

    p = preset(optimizer)
    beta = p.momentum  # the preset's default: 0 for zo-gd, 0.9 otherwise
    hi = (2.0 if not p.takes_momentum else 20.0) / eig.max()  # beyond the per-mode limit: S = inf
    return float(brentq(lambda e: min(ms_exact(eig, e, optimizer, beta), 1e6) - target, 1e-9, hi))


def _summary(z: np.ndarray, **extra) -> dict[str, Any]:
    z = np.asarray(z, dtype=float)
    finite = z[np.isfinite(z)]
    out = {"n": int(z.size), "rms_z": float(np.sqrt(np.mean(finite**2))) if finite.size else math.nan,
           "within_2sigma": float(np.mean(np.abs(z) <= 2)) if z.size else math.nan,
           "max_abs_z": float(np.max(np.abs(finite))) if finite.size else math.nan}
    out.update(extra)
    return out


def _z(value, err, truth) -> float:
    if not np.isfinite(value) or not np.isfinite(err):
        return math.inf
    if err == 0:
        return 0.0 if value == truth else math.inf
    return float((value - truth) / err)


#: the trace estimators calibrated, by result name
TRACE_SPECS = {
    "trace_krylov": "trace:method=krylov:n_matvec=6",
    "trace_hutchinson": "trace:method=hutchinson:n_matvec=30:rtol=None",
    "trace_hutchinson_adaptive": "trace:method=hutchinson:n_matvec=100:rtol=0.05",
    "trace_hutch++": "trace:method=hutch++:n_matvec=30:rtol=None",
    "trace_hutch++_adaptive": "trace:method=hutch++:n_matvec=100:rtol=0.05",
    "trace_ggn+residual": "trace:method=ggn+residual:n_matvec=30:rtol=None",
    "trace_ggn+residual_adaptive": "trace:method=ggn+residual:n_matvec=100:rtol=0.02",
}


def calibrate(seeds: int = 30, point: Point | None = None, only: list[str] | None = None,
              s_targets: tuple[float, ...] = (0.8, 0.9, 0.97, 1.03, 1.1, 1.2)) -> dict[str, dict[str, Any]]:
    """Per metric: rms z, share within ±2σ (and for ms_margin the share of correct S < 1 verdicts).

    Args:
        seeds: probe seeds per metric (and per step size for ms_margin).
        point: the θ to calibrate at (default: :func:`make_point`).
        only: result-name prefixes to calibrate (default: all).
        s_targets: the exact S(η) values at which ms_margin is checked.

    Returns:
        One summary dict per result name (see `_summary`).
    """
    point = point or make_point()
    res: dict[str, dict[str, Any]] = {}
    want = (lambda name: only is None or any(name.startswith(o) for o in only))
    lr0 = lr_for_s(point.eig, 1.0)
    if want("lambda_max"):
        res.update(_calibrate_lambda_max(point, seeds, lr0))
    if want("top_k"):
        res.update(_calibrate_top_k(point, seeds, lr0))
    for name, spec in TRACE_SPECS.items():
        if want(name):
            res[name] = _calibrate_trace(point, seeds, lr0, spec)
    if want("ms_margin"):
        res.update(_calibrate_ms_margin(point, seeds, s_targets))
    if any(want(n) for n in ("precond", "commutator")):
        res.update(_calibrate_preconditioned(point, seeds))
    return res


def _calibrate_lambda_max(point: Point, seeds: int, lr0: float) -> dict[str, dict[str, Any]]:
    eig, V = point.eig, point.vecs
    zc, zw, bad_c, bad_w, nh_c, nh_w = [], [], 0, 0, [], []
    v2 = torch.as_tensor(V[:, -2])
    for s in range(seeds):
        r = _probe(point, "gd", lr0, s, ["lambda_max"])
        zc.append(_z(r["lambda_max"], r["lambda_max_err"], eig[-1]))
        bad_c += int(r["lambda_max_converged"] == 1 and abs(zc[-1]) > 1)
        nh_c.append(r["lambda_max_nhvp"])
        # warm start from the old top eigenvector that is now the second one (a swapped top pair)
        r = _probe(point, "gd", lr0, s, ["lambda_max"], warm={"lanczos/H": v2})
        zw.append(_z(r["lambda_max"], r["lambda_max_err"], eig[-1]))
        bad_w += int(r["lambda_max_converged"] == 1 and abs(zw[-1]) > 1)
        nh_w.append(r["lambda_max_nhvp"])
    gap = float((eig[-1] - eig[-2]) / eig[-1])
    return {"lambda_max_cold": _summary(zc, wrong_converged=bad_c, error_kind="bound", mean_nhvp=float(np.mean(nh_c))),
            "lambda_max_warm_swapped": _summary(zw, wrong_converged=bad_w, error_kind="bound", relative_gap=gap,
                                                mean_nhvp=float(np.mean(nh_w)))}


def _calibrate_top_k(point: Point, seeds: int, lr0: float) -> dict[str, dict[str, Any]]:
    z, bad = [], 0
    for s in range(seeds):
        r = _probe(point, "gd", lr0, s, ["top_k:k=5"])
        zs = [_z(v, e, t) for v, e, t in zip(r["top_k"], r["top_k_err"], point.eig[::-1][:5])]
        z += zs
        bad += int(r["top_k_converged"] == 1 and max(abs(x) for x in zs) > 1)
    return {"top_k": _summary(z, wrong_converged=bad, error_kind="bound")}


def _calibrate_trace(point: Point, seeds: int, lr0: float, spec: str) -> dict[str, Any]:
    tr_true = float(point.eig.sum())
    z, nh = [], []
    for s in range(seeds):
        r = _probe(point, "gd", lr0, s, [spec])
        z.append(_z(r["trace"], r["trace_err"], tr_true))
        nh.append(r["trace_nhvp"])
    return _summary(z, mean_nhvp=float(np.mean(nh)))


def _calibrate_ms_margin(point: Point, seeds: int, s_targets: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    eig = point.eig
    z, correct, decided, zneg, nh = [], 0, 0, [], []
    for target in s_targets:
        lr = lr_for_s(eig, target)
        s_true = ms_exact(eig, lr)
        neg_true = float(-eig[eig < 0].sum() * lr / 2)
        for s in range(seeds):
            r = _probe(point, "zo-gd", lr, s, ["lambda_max", "trace", "ms_margin"])
            z.append(_z(r["ms_margin"], r["ms_margin_err"], s_true))
            zneg.append(_z(r["ms_margin_neg"], r["ms_margin_neg_err"], neg_true))
            nh.append(r["nhvp"])
            if abs(s_true - 1) >= 0.1:
                decided += 1
                correct += int((r["ms_margin"] < 1) == (s_true < 1))
    return {"ms_margin": _summary(z, verdict_correct=correct / decided if decided else math.nan,
                                  s_targets=list(s_targets), mean_probe_nhvp=float(np.mean(nh))),
            "ms_margin_neg": _summary(zneg)}


def _calibrate_preconditioned(point: Point, seeds: int) -> dict[str, dict[str, Any]]:
    from .presets import preset

    beta1 = preset("zo-adam").momentum
    p = point.adam_optimizer.preconditioner(point.adam_state).numpy()
    et = np.linalg.eigvalsh(point.H / np.sqrt(np.outer(p, p)))
    PH = p[:, None] * point.H
    r_true = float(np.linalg.norm(PH - PH.T) / np.linalg.norm(PH))
    lr_a = lr_for_s(et, 1.05, "zo-adam")
    zl, zt, zc, zs, bad = [], [], [], [], 0
    for s in range(seeds):
        r = _probe(point, "zo-adam", lr_a, s, ["precond_lambda_max", "precond_trace", "commutator_ratio", "ms_margin"],
                   state=point.adam_state, opt=point.adam_optimizer)
        zl.append(_z(r["precond_lambda_max"], r["precond_lambda_max_err"], et[-1]))
        bad += int(r["precond_lambda_max_converged"] == 1 and abs(zl[-1]) > 1)
        zt.append(_z(r["precond_trace"], r["precond_trace_err"], et.sum()))
        zc.append(_z(r["commutator_ratio"], r["commutator_ratio_err"], r_true))
        zs.append(_z(r["ms_margin"], r["ms_margin_err"], ms_exact(et, lr_a, "zo-adam", beta1)))
    return {"precond_lambda_max": _summary(zl, wrong_converged=bad, error_kind="bound"),
            "precond_trace": _summary(zt), "commutator_ratio": _summary(zc, truth=r_true),
            "precond_ms_margin": _summary(zs, truth=ms_exact(et, lr_a, "zo-adam", beta1))}
