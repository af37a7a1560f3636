"""Top Ritz pairs exactly, the rest stochastically: one probe set that serves Tr H, Tr f(H) and the density.

With V the (k, d) top Ritz vectors of one Lanczos run (near-invariant: residuals ≪ gaps) and θ their Ritz
values, every spectral sum splits into

    Tr f(H) = Σ_i f(θ_i) + Tr f(A),        A = P⊥ H P⊥,  P⊥ = I − VᵀV,

up to O(residual²/gap). The top of the spectrum — what dominates f near the edge of stability and the
spread of every Hutchinson sample — is taken exactly from the shared Lanczos run; the deflated rest A is
sampled by stochastic Lanczos quadrature from projected Rademacher probes z' = P⊥z (E z'z'ᵀ = P⊥, so the
estimate of Tr f(A) is unbiased in the probes). Each probe's first Lanczos coefficient is its Hutchinson
sample z'ᵀAz', so the same products give Tr H = Σθ_i + Tr A at no extra cost (Gauss quadrature integrates
λ exactly). The split is unbiased for the trace whatever V is (it is linear); for nonlinear f it needs the
Ritz pairs converged, which the shared Lanczos run certifies (residual and gap check).

Errors are standard errors over probes widened by the Student-t factor (``trace.t_factor``), so they stay
one-sigma wide with the few probes a cheap default uses.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidValueError
from ._probes import default_generator, rademacher
from .estimate import Estimate
from .lanczos import lanczos_tridiagonal
from .quadrature import probe_sums
from .slq import gauss_rules
from .operators import CurvatureOperator
from .trace import t_factor

__all__ = ["DeflatedOperator", "RestQuadrature", "rest_quadrature", "split_trace", "split_trace_fn"]


class DeflatedOperator(CurvatureOperator):
    """P⊥ A P⊥ for orthonormal rows V (P⊥ = I − VᵀV); one product of A per product (counted by A)."""

    def __init__(self, op: CurvatureOperator, V: Tensor | None) -> None:
        self.op = op
        self.V = None if V is None or V.shape[0] == 0 else V.to(device=op.device, dtype=op.dtype)
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device

    def project(self, Z: Tensor) -> Tensor:
        if self.V is None:
            return Z
        for _ in range(2):  # twice is enough (round-off)
            Z = Z - (Z @ self.V.T) @ self.V
        return Z

    def matvec(self, v: Tensor) -> Tensor:
        return self.matmat(v[None])[0]

    def matmat(self, V: Tensor) -> Tensor:
        return self.project(self.op.matmat(self.project(self._check(V))))

    @property
    def n_hvp(self) -> int:
        return self.op.n_hvp


@dataclass(frozen=True)
class RestQuadrature:
    """Gauss rules of the deflated rest A, one row per probe: Tr f(A) ≈ mean_i norms_i Σ_k w_ik f(nodes_ik)."""

    nodes: np.ndarray      # (p, s) Ritz values of each probe's tridiagonal (padding: weight 0)
    weights: np.ndarray    # (p, s) squared first components, rows sum to 1
    norms: np.ndarray      # (p,) ‖P⊥ z‖² of each probe
    n_hvp: int
    dim: int
    n_deflated: int
    half_nodes: np.ndarray | None = None    # the same from the first ⌈s/2⌉ steps (nested rule, no products)
    half_weights: np.ndarray | None = None

    def samples(self, f: Callable[[np.ndarray], np.ndarray], half: bool = False) -> np.ndarray:
        """Per-probe estimates of Tr f(A); f vectorised over numpy arrays. `half`: from the nested rule of
        half the steps (its difference to the full rule estimates the quadrature error)."""
        nodes, weights = (self.half_nodes, self.half_weights) if half else (self.nodes, self.weights)
        return probe_sums(nodes, weights, f, self.norms)

    def hutchinson(self) -> np.ndarray:
        """Per-probe z'ᵀAz' (Gauss quadrature is exact for f(λ) = λ)."""
        return self.samples(lambda x: x)


def rest_quadrature(op: CurvatureOperator, V: Tensor | None, n_probes: int, n_steps: int,
                    generator: torch.Generator | None = None) -> RestQuadrature:
    """SLQ of P⊥ op P⊥ (V: (k, d) orthonormal rows, or None) from ``n_probes`` projected Rademacher probes."""
    if n_probes < 2 or n_steps < 1:
        raise InvalidValueError(f"the deflated quadrature needs n_probes >= 2 and n_steps >= 1, got {n_probes}, {n_steps}")
    gen = default_generator(generator)
    A = DeflatedOperator(op, V)
    n0 = op.n_hvp
    Z = A.project(rademacher(n_probes, op.dim, gen, op.dtype, op.device))
    norms = (Z * Z).sum(1).double().cpu().numpy()
    runs = lanczos_tridiagonal(A, Z, n_steps)
    width = min(n_steps, op.dim)
    nodes, weights = gauss_rules(runs, width)
    half = max(1, (width + 1) // 2)
    h_nodes, h_weights = gauss_rules([(a[:half], b[: max(0, min(half, a.shape[0]) - 1)]) for a, b in runs], half)
    k = 0 if A.V is None else A.V.shape[0]
    return RestQuadrature(nodes, weights, norms, op.n_hvp - n0, op.dim, k, h_nodes, h_weights)


def _mean_se(samples: np.ndarray) -> tuple[float, float]:
    n = samples.shape[0]
    mean = float(samples.mean())
    if n < 2:
        return mean, math.inf
    se = float(samples.std(ddof=1)) / math.sqrt(n)
    return mean, se * t_factor(n - 1) if se > 0 else 0.0


def split_trace(ritz_values: np.ndarray, rest: RestQuadrature, n_hvp: int | None = None) -> Estimate:
    """Tr H = Σ θ_i (exact part) + Hutchinson on the deflated rest; error = t-corrected standard error.

    Theory: [docs/theory.md#metric-trace][metric-trace].
    """
    exact = float(np.sum(ritz_values))
    samples = rest.hutchinson()
    mean, se = _mean_se(samples)
    return Estimate(value=exact + mean, error=se, n_hvp=rest.n_hvp if n_hvp is None else n_hvp,
                    extra={"method": "krylov", "exact_part": exact, "samples": samples,
                           "n_probes": int(samples.shape[0]), "n_deflated": rest.n_deflated})


def split_trace_fn(f: Callable[[np.ndarray], np.ndarray], ritz_values: np.ndarray, ritz_errors: np.ndarray,
                   rest: RestQuadrature, linear: tuple[float, float, float] | None = None) -> Estimate:
    """Tr f(H) = Σ f(θ_i) + Tr f(A), f vectorised; inf if any term is inf.

    ``linear = (slope, trace, trace_err)``: a control variate. When an independent estimate of Tr H is at
    hand, Tr f(A) = slope·(Tr H − Σθ_i) + ``Tr[f − slope·λ](A)``, and only the small remainder is sampled.
    The error adds the rest's standard error, the trace's, the quadrature error (full minus half-length
    nested rule) and |f'(θ_i)|·err_i of the Ritz values.

    Theory: [docs/theory.md#metric-ms_margin][metric-ms_margin].
    """
    theta = np.asarray(ritz_values, dtype=float)
    top = np.asarray(f(theta), dtype=float)
    if linear is None:
        g = f
        lin_value, lin_err = 0.0, 0.0
    else:
        slope, tr, tr_err = linear
        g = (lambda x: f(x) - slope * x)
        lin_value, lin_err = slope * (tr - float(theta.sum())), abs(slope) * tr_err
    samples = rest.samples(g)
    quad_err = 0.0
    if rest.half_nodes is not None:
        # nested Gauss rules: |full − half| estimates the quadrature error, which is not a sampling error
        # (a kink of f, such as the exclusion of λ ≤ 0 inside the spectral bulk, converges slowly in the
        # number of steps); with a smooth f it is negligible
        with np.errstate(invalid="ignore"):
            quad_err = float(abs(samples.mean() - rest.samples(g, half=True).mean()))
        if not math.isfinite(quad_err):
            quad_err = 0.0
    if not (np.all(np.isfinite(top)) and np.all(np.isfinite(samples))):
        return Estimate(value=math.inf, error=math.nan, n_hvp=rest.n_hvp, converged=False,
                        extra={"samples": samples, "top_terms": top})
    mean, se = _mean_se(samples)
    h = 1e-6 * np.maximum(np.abs(theta), 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope_top = np.abs((np.asarray(f(theta + h), float) - np.asarray(f(theta - h), float)) / (2 * h))
    top_err = float(np.sum(np.where(np.isfinite(slope_top), slope_top, 0.0) * np.abs(ritz_errors)))
    value = float(top.sum()) + lin_value + mean
    err = math.sqrt(se**2 + lin_err**2 + quad_err**2) + top_err
    return Estimate(value=value, error=err, n_hvp=rest.n_hvp,
                    extra={"samples": samples, "top_terms": top, "rest": mean, "rest_err": se,
                           "linear": lin_value, "quadrature_err": quad_err})
