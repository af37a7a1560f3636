"""The edge experiment's prediction: η* = sup{η : S(η) < 1} from the positive part of the Hessian spectrum.

S(η) = Σ_{λ_i > 0} f(λ_i) (docs/theory.md §2) needs every positive eigenvalue. Two paths:

* **dense** (d ≤ ``dense_max``): every eigenvalue of the dense Hessian, η* exact (interval of zero width).
* **top-k Ritz + SLQ** (larger d): the top-k Ritz pairs of one Lanczos run taken exactly, the rest of the
  spectrum by stochastic Lanczos quadrature on the deflated operator (``curvature.deflated``, the machinery of
  the probe's ``ms_margin``), with f continued by 0 for λ ≤ 0. An indefinite Hessian's negative eigenvalues
  then drop out of S by construction; a tail taken as Tr H − Σ top-k would lose the positive mass that the
  negative mass cancels (the 1,694-parameter CNN at step 40: Tr H = 4.15 below the top-20 sum, Tr H₊ = 7.02,
  η* 14 % too high). The interval solves S(η) ± 2·err(η) = 1, err = the estimator's error (t-corrected standard
  error over probes + quadrature error from the nested half-length rule + Ritz residuals). ``bounds`` is a
  second, deterministic bracket given Tr H₊ of the rest: f is convex with f(0) = 0, so for a rest of positive
  mass R₊ with every eigenvalue ≤ θ_k, S is largest with R₊ piled at θ_k and smallest with it spread thin.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy.optimize import brentq

#: default --dense-max: measured in benchmarks/edge_dense_cost.py (docs/edge.md, "Which path")
DENSE_MAX = 2000


@dataclass
class Spectrum:
    """What is known of the Hessian's spectrum at θ_N (dense: everything; else top-k Ritz + SLQ of the rest)."""

    method: str  # "dense" | "top-k + SLQ"
    dim: int
    top: list[float]  # dense: every eigenvalue (descending); else the top k Ritz values
    top_err: list[float]
    trace: float  # Tr H
    trace_err: float
    trace_pos: float  # Tr H₊ = Σ_{λ>0} λ
    trace_pos_err: float
    negative_mass: float  # Σ_{λ<0} |λ|
    n_negative: float  # number of negative eigenvalues (iterative path: NaN, not estimated)
    n_hvp: int = 0
    seconds: float = 0.0
    rest: Any = field(default=None, repr=False)  # curvature.deflated.RestQuadrature (iterative path)

    def as_dict(self, n_top: int = 20) -> dict[str, Any]:
        """JSON-able summary (the top ``n_top`` eigenvalues only)."""
        return {"method": self.method, "dim": self.dim, "top": self.top[:n_top], "top_err": self.top_err[:n_top],
                "trace": self.trace, "trace_err": self.trace_err, "trace_pos": self.trace_pos,
                "trace_pos_err": self.trace_pos_err, "negative_mass": self.negative_mass,
                "n_negative": self.n_negative, "lambda_max": self.top[0] if self.top else math.nan,
                "n_hvp": self.n_hvp, "seconds": self.seconds}

    def positive_model(self, max_modes: int = 4000) -> np.ndarray:
        """Eigenvalues of the positive-part quadratic model L = ½ΔᵀH₊Δ (zero modes left out).

        Dense: the positive eigenvalues. Iterative: the positive top-k Ritz values, and the rest's positive SLQ
        measure discretised at quantiles into (its estimated count of positive eigenvalues, at most
        ``max_modes``) modes."""
        top = np.asarray(self.top, dtype=float)
        if self.method == "dense" or self.rest is None:
            return top[top > 0]
        r = self.rest
        nodes = r.nodes.ravel()
        mass = (r.weights * r.norms[:, None]).ravel() / r.nodes.shape[0]
        keep = (nodes > 0) & (mass > 0)
        nodes, mass = nodes[keep], mass[keep]
        n_pos = int(round(float(mass.sum())))
        if n_pos < 1:
            return top[top > 0]
        order = np.argsort(nodes)
        cdf = np.cumsum(mass[order]) / mass.sum()
        m = min(n_pos, max_modes)
        q = (np.arange(m) + 0.5) / m
        tail = nodes[order][np.minimum(np.searchsorted(cdf, q), nodes.size - 1)]
        return np.sort(np.concatenate([top[top > 0], tail]))[::-1]


def _dense(objective, theta, chunk: int) -> Spectrum:
    from ..curvature.dense import dense_hessian_chunked

    lam = np.sort(np.linalg.eigvalsh(dense_hessian_chunked(objective, theta, chunk)))[::-1]
    pos, neg = lam[lam > 0], lam[lam < 0]
    d = lam.size
    return Spectrum("dense", d, lam.tolist(), [0.0] * d, float(lam.sum()), 0.0, float(pos.sum()), 0.0,
                    float(-neg.sum()), float(neg.size), n_hvp=d)


def _stat(samples: np.ndarray) -> tuple[float, float]:
    """Mean and t-corrected standard error of the probes' samples (inf for one sample)."""
    from ..curvature.trace import t_factor

    x = np.asarray(samples, dtype=float)
    n = x.shape[0]
    if n < 2:
        return float(x.mean()), math.inf
    se = float(x.std(ddof=1)) / math.sqrt(n)
    return float(x.mean()), se * t_factor(n - 1) if se > 0 else 0.0


def iterative_spectrum(op, k: int = 20, n_probes: int = 10, n_steps: int = 60, seed: int = 0) -> Spectrum:
    """Top-k Ritz pairs of one Lanczos run + SLQ of the rest deflated by them, on any ``CurvatureOperator``.

    Tr H, Tr H₊ and Σ|λ<0| come from the same quadrature (Ritz values exactly + the rest's samples); their
    errors add the t-corrected standard error over probes and the nested-rule quadrature error. The number of
    negative eigenvalues is not estimated (the indicator's kink at 0 defeats a Gauss rule: NaN)."""
    import torch

    from ..curvature import top_k
    from ..curvature.deflated import rest_quadrature
    from ..probe.shared import ritz_block

    d = op.dim
    gen = torch.Generator(device=op.device).manual_seed(seed)
    n0 = op.n_hvp
    tk = top_k(op, min(k, d - 1), tol=1e-3, generator=gen, max_iter=max(300, 3 * k))
    vals, vecs, errs = ritz_block(tk)  # empty unless converged: an unconverged block is not deflatable
    rest = rest_quadrature(op, vecs if len(vals) else None, n_probes, n_steps, generator=gen)

    def part(f: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
        mean, se = _stat(rest.samples(f))
        with np.errstate(invalid="ignore"):
            quad = abs(float(rest.samples(f).mean() - rest.samples(f, half=True).mean()))
        return float(np.sum(f(vals))) + mean, math.hypot(se, quad if math.isfinite(quad) else 0.0)

    tr, tr_err = part(lambda x: x)
    tp, tp_err = part(lambda x: np.maximum(x, 0.0))
    nm, _ = part(lambda x: np.maximum(-x, 0.0))
    top = vals if len(vals) else np.atleast_1d(np.asarray(tk.value, dtype=float))
    top_err = errs if len(vals) else np.atleast_1d(np.asarray(tk.error, dtype=float))
    spec = Spectrum("top-k + SLQ", d, [float(v) for v in top], [float(e) for e in top_err], tr, tr_err, tp, tp_err,
                    nm, math.nan, n_hvp=op.n_hvp - n0, rest=rest)
    spec.deflated = len(vals)  # type: ignore[attr-defined]
    return spec


def measure_spectrum(objective, theta, *, k: int = 20, n_probes: int = 10, n_steps: int = 60,
                     dense_max: int = DENSE_MAX, seed: int = 0, chunk: int = 32) -> Spectrum:
    """Dense eigenvalues for d ≤ dense_max, else top-k Ritz pairs + SLQ of the deflated rest."""
    t0 = time.perf_counter()
    from ..curvature import HessianOperator

    if objective.dim <= dense_max:
        spec = _dense(objective, theta, chunk)
    else:
        spec = iterative_spectrum(HessianOperator(objective, theta), k, n_probes, n_steps, seed)
    spec.seconds = time.perf_counter() - t0
    return spec


@dataclass
class Prediction:
    """η* with its interval and the path that produced it."""

    eta: float
    lo: float
    hi: float
    method: str
    path: str  # one sentence: what the number rests on
    bound_lo: float  # deterministic bracket given Tr H₊ of the rest (iterative path; = eta when dense)
    bound_hi: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _setting(cfg: dict[str, Any], dim: int) -> tuple[str, dict[str, Any]]:
    from ..theory import Setting

    s = Setting.from_config(cfg, dim)
    return s.optimizer, s.kwargs()


def _root(g: Callable[[float], float], upper: float) -> float:
    """The root of g(η) = 1 on (0, upper), g increasing from 0 to inf (inf beyond the admissible range)."""

    def h(eta: float) -> float:
        if eta >= upper:
            return 0.5
        v = g(eta)
        return 0.5 if not math.isfinite(v) else (v - 1.0) / (1.0 + abs(v))

    if h(upper * (1 - 1e-12)) < 0:  # never reaches 1 inside the range: the per-mode limit decides
        return upper
    return brentq(h, upper * 1e-12, upper, xtol=1e-13 * upper, maxiter=500)


def slq_sum(spec: Spectrum, eta: float, cfg: dict[str, Any]) -> tuple[float, float]:
    """(S(η), its error) from the top Ritz values + SLQ of the deflated rest (f = 0 for λ ≤ 0)."""
    from ..curvature.deflated import split_trace_fn
    from ..theory import ms_terms

    opt, kw = _setting(cfg, spec.dim)

    def f(lam: np.ndarray) -> np.ndarray:
        return ms_terms(np.maximum(np.asarray(lam, dtype=float), 0.0), eta, opt, **kw)

    est = split_trace_fn(f, np.asarray(spec.top, float), np.asarray(spec.top_err, float), spec.rest)
    return float(est.value), float(est.error) if math.isfinite(est.error) else math.inf


def _shifted(value_err: tuple[float, float], z: float) -> float:
    v, e = value_err
    return v + z * e if math.isfinite(e) else (math.inf if z > 0 else 0.0)


def predict(spec: Spectrum, cfg: dict[str, Any]) -> Prediction:
    """η* on the positive part of the spectrum, an interval that holds for indefinite spectra, and the path."""
    from ..theory import Setting, critical_lr

    opt, kw = _setting(cfg, spec.dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.method == "dense":
            eta = critical_lr(spec.top, opt, negative="ignore", **kw)
            path = (f"dense Hessian, all {spec.dim} eigenvalues ({int(spec.n_negative)} negative, left out of S): "
                    "exact")
            return Prediction(eta, eta, eta, "dense", path, eta, eta)
        lam_max = max(float(np.max(spec.top)) + float(np.max(spec.top_err)),
                      float(np.max(spec.rest.nodes)) if spec.rest is not None else 0.0)
        s = Setting.from_config(cfg, spec.dim)
        upper = s.x_limit / (s.lr_factor * lam_max) if lam_max > 0 else math.inf
        eta = _root(lambda e: slq_sum(spec, e, cfg)[0], upper)
        lo = _root(lambda e: _shifted(slq_sum(spec, e, cfg), 2.0), upper)
        hi = _root(lambda e: _shifted(slq_sum(spec, e, cfg), -2.0), upper)
        b_lo, b_hi = convex_bounds(spec, cfg)
    n_def = getattr(spec, "deflated", len(spec.top))
    path = (f"top-{n_def} Ritz values exact + SLQ of the deflated rest ({spec.rest.weights.shape[0]} probes x "
            f"{spec.rest.weights.shape[1]} steps), positive part only (Tr H+ = {spec.trace_pos:.4g} +- "
            f"{spec.trace_pos_err:.2g}, Tr H = {spec.trace:.4g}); interval: S +- 2 err = 1")
    return Prediction(eta, min(lo, eta), max(hi, eta), "top-k + SLQ", path, b_lo, b_hi)


def convex_bounds(spec: Spectrum, cfg: dict[str, Any]) -> tuple[float, float]:
    """η* bracket from the top values ± their errors and the rest's positive mass R₊ ± 2 err under θ_k."""
    from ..theory import critical_lr

    opt, kw = _setting(cfg, spec.dim)
    top = np.asarray(spec.top, dtype=float)
    err = np.asarray(spec.top_err, dtype=float)
    top_pos = np.clip(top, 0, None)
    r_pos = spec.trace_pos - float(top_pos.sum())
    r_hi = max(r_pos + 2 * spec.trace_pos_err, 0.0)
    r_lo = max(r_pos - 2 * spec.trace_pos_err, 0.0)
    cap = max(float(top[-1]), 1e-300)
    n_full = int(r_hi // cap)
    lo_nodes = np.concatenate([top_pos + err, [cap, r_hi - n_full * cap]])
    lo_w = np.concatenate([np.ones_like(top), [n_full, 1.0]])
    eps = cap * 1e-9
    hi_nodes = np.concatenate([np.clip(top - err, 0, None), [eps]])
    hi_w = np.concatenate([np.ones_like(top), [r_lo / eps]])
    kw = {k: v for k, v in kw.items() if k != "dim"}
    return (critical_lr(lo_nodes, opt, weights=lo_w, negative="ignore", dim=spec.dim, **kw),
            critical_lr(hi_nodes, opt, weights=hi_w, negative="ignore", dim=spec.dim, **kw))
