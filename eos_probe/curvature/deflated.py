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
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from ..errors import InvalidValueError
from ._probes import default_generator, rademacher
from .estimate import Estimate
from .lanczos import lanczos_tridiagonal
from .quadrature import probe_sums
from .slq import gauss_rules
from .operators import CurvatureOperator
from .trace import t_factor

__all__ = ["DeflatedOperator", "RestQuadrature", "negative_mass", "prior_se", "rest_quadrature", "split_trace",
           "split_trace_fn"]


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
    cv_values: np.ndarray | None = None     # (J,) Ritz values θ_j of approximate eigenpairs (y_j, θ_j) of A
    cv: np.ndarray | None = None            # (p, J) (y_jᵀz_i)² − ‖P⊥y_j‖²: zero mean over the probes
    az2: np.ndarray | None = None           # (p,) ‖Az_i‖², exact (from α₁, β₁) even with one step

    def samples(self, f: Callable[[np.ndarray], np.ndarray], half: bool = False, control: bool = True) -> np.ndarray:
        """Per-probe estimates of Tr f(A); f vectorised over numpy arrays. `half`: from the nested rule of
        half the steps (its difference to the full rule estimates the quadrature error). `control`: minus
        the Ritz control variates Σ_j f(θ_j)·cv_ij (exactly zero mean, see `rest_quadrature`)."""
        nodes, weights = (self.half_nodes, self.half_weights) if half else (self.nodes, self.weights)
        out = probe_sums(nodes, weights, f, self.norms)
        if control and self.cv is not None and self.cv.shape[1]:
            with np.errstate(invalid="ignore", over="ignore"):
                c = np.asarray(f(self.cv_values), dtype=float)
            out = out - self.cv @ np.where(np.isfinite(c), c, 0.0)
        return out

    def hutchinson(self) -> np.ndarray:
        """Per-probe z'ᵀAz' (Gauss quadrature is exact for f(λ) = λ)."""
        return self.samples(lambda x: x)


def rest_quadrature(op: CurvatureOperator, V: Tensor | None, n_probes: int, n_steps: int,
                    generator: torch.Generator | None = None,
                    control: tuple[np.ndarray, Tensor] | None = None) -> RestQuadrature:
    """SLQ of P⊥ op P⊥ (V: (k, d) orthonormal rows, or None) from ``n_probes`` projected Rademacher probes.

    ``control = (θ, Y)``: approximate eigenpairs of the rest (Ritz pairs of an independent Lanczos run, Y
    (J, d)) used as control variates. A probe's sample zᵀf(A)z carries f(λ_j)(u_jᵀz)² from each large
    eigenvalue left in A; with few probes these chi-square terms make the samples skewed, and their mean
    and spread small together (error bars too short exactly when the estimate is low). Subtracting
    f(θ_j)((y_jᵀz)² − ‖P⊥y_j‖²), whose mean is exactly zero for projected Rademacher z whatever Y is,
    removes those terms: unbiased, no products, and only the flat bulk is left to be sampled.
    """
    if n_probes < 2 or n_steps < 1:
        raise InvalidValueError(f"the deflated quadrature needs n_probes >= 2 and n_steps >= 1, got {n_probes}, {n_steps}")
    gen = default_generator(generator)
    A = DeflatedOperator(op, V)
    n0 = op.n_hvp
    Z = A.project(rademacher(n_probes, op.dim, gen, op.dtype, op.device))
    norms = (Z * Z).sum(1).double().cpu().numpy()
    beta1: list[float] = []
    runs = lanczos_tridiagonal(A, Z, n_steps, first_beta=beta1)
    az2 = norms * np.array([a[0] ** 2 + b1**2 for (a, _), b1 in zip(runs, beta1)])
    width = min(n_steps, op.dim)
    nodes, weights = gauss_rules(runs, width)
    half = max(1, (width + 1) // 2)
    h_nodes, h_weights = gauss_rules([(a[:half], b[: max(0, min(half, a.shape[0]) - 1)]) for a, b in runs], half)
    k = 0 if A.V is None else A.V.shape[0]
    cv_values = cv = None
    if control is not None and control[1] is not None and control[1].shape[0]:
        Y = control[1].to(device=op.device, dtype=op.dtype)
        PY = A.project(Y)
        cv = ((Z @ PY.T) ** 2 - (PY * PY).sum(1)[None]).double().cpu().numpy()
        cv_values = np.asarray(control[0], dtype=float)
    return RestQuadrature(nodes, weights, norms, op.n_hvp - n0, op.dim, k, h_nodes, h_weights, cv_values, cv, az2)


def prior_se(rest: RestQuadrature, g: Callable[[np.ndarray], np.ndarray], linear: bool = False) -> float:
    """Standard error of mean_i rest.samples(g) from the Gaussian-probe variance 2‖B‖_F², not from the
    spread of the few samples themselves.

    B = g(A) − Σ_j g(θ_j) y_j y_jᵀ is what the control-varied samples zᵀBz leave random; ‖B‖_F² = Tr g(A)² −
    Σ_j g(θ_j)² (Ritz vectors: y_jᵀg(A)y_j ≈ g(θ_j)) is read from the same Gauss rules (g² integrated, exact
    for g = λ), controlled by the same pairs. A Rademacher probe's variance is 2(‖B‖_F² − Σ B_ii²) ≤ 2‖B‖_F².
    The sample standard deviation of 6 skewed samples is small exactly when their mean is low (measured:
    all misses below the truth); ‖B‖_F² is a sum of squares over the whole spectrum, estimated with far
    more effective degrees of freedom and only weakly tied to the sampled mean. ``linear``: g is λ itself
    (then Tr A² comes from the exact ‖Az‖², which one-step rules also have).
    """
    p = rest.norms.shape[0]
    if p < 1:
        return math.inf
    if linear and rest.az2 is not None:
        # g(λ) = λ: Tr A² from ‖Az‖² itself (exact, also for one-step rules, which cannot integrate λ²)
        m2 = float(rest.az2.mean())
        if rest.cv is not None and rest.cv.shape[1]:
            m2 -= float((rest.cv @ rest.cv_values**2).mean())
    elif rest.nodes.shape[1] < 2:
        # a one-node rule does not integrate g²: the t-corrected spread of the samples is all there is
        x = rest.samples(g)
        return float(x.std(ddof=1)) / math.sqrt(p) * t_factor(p - 1) if p > 1 else math.inf
    else:
        m2 = float(rest.samples(lambda x: np.asarray(g(x), dtype=float) ** 2).mean())
    if rest.cv is not None and rest.cv.shape[1]:
        with np.errstate(invalid="ignore", over="ignore"):
            c = np.asarray(g(rest.cv_values), dtype=float)
        m2 -= float(np.sum(np.where(np.isfinite(c), c, 0.0) ** 2))
    if not math.isfinite(m2):
        return math.inf
    return math.sqrt(2.0 * max(m2, 0.0) / p)


#: a negative Ritz pair of the shared Lanczos run counts as an eigenvalue, exactly, when its residual is
#: below this share of |θ| (then some eigenvalue lies within 1 % of it)
EXACT_NEGATIVE_RTOL = 1e-2


def negative_mass(lanczos: Estimate, dim: int) -> tuple[float, float]:
    """Σ_{λ<0} |λ| of the operator and its error, from the Gauss rule of the shared Lanczos run's tridiagonal.

    The deflated probes' short rules cannot see the negative spectrum when it is a narrow band of tiny
    eigenvalues inside the bulk: a 4-node rule lumps the bulk into one node just above 0, so any f with a
    kink at 0 (S(η) excludes λ ≤ 0) is off by f'(0⁺)·Σ_{λ<0}|λ| (1–2 % of S, always low). The Lanczos run
    that certifies the top pairs resolves the lower edge far better (many more steps):

    * its converged negative Ritz values (residual ≤ EXACT_NEGATIVE_RTOL·|θ|) count exactly;
    * for the other nodes its start vector's random part is one Gaussian probe: N_rest = (d / share)·
      Σ_k w_k max(−θ_k, 0), ``share`` the squared length of that part (1 cold, about ½ warm) and w_k the
      squared component of that part alone on the k-th Ritz vector — the warm part's components
      (``warm_coefficients``, the stale top vectors in the Lanczos basis) are subtracted, since after a
      catapult a stale top vector can lie half in the negative eigenspace and would count d-fold.

    N_rest is the mean of the m- and (m − 1)-node rules (the nested rule of one step less, free), whose kink
    errors have opposite signs. Error, in quadrature: the probe's variance 2·Σ_rest λ² (same rule, at least
    2·Σθ² of the inexact negative Ritz values, a lower bound by interlacing that does not shrink with the
    sample) and the kink's quadrature error, the whole difference of the two rules above the exact
    eigenvalues. (nan, nan) when the run kept no tridiagonal.

    Theory: [docs/theory.md#metric-ms_margin][metric-ms_margin].
    """
    a, b, share = (lanczos.extra.get(k) for k in ("alphas", "betas", "random_share"))
    if a is None or b is None or not share or len(a) < 1:
        return math.nan, math.nan
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    b_last = float(lanczos.extra.get("beta_last", math.inf))

    cw = lanczos.extra.get("warm_coefficients")

    def rule(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nodes, weights of the start vector's random part, |last components| of the m-step rule."""
        if m == 1:
            return a[:1], np.ones(1) * float(share), np.ones(1)
        theta, S = eigh_tridiagonal(a[:m], b[: m - 1])
        # y_kᵀq = S[0, k]; minus the warm part's y_kᵀ(αŵ) = S[:, k]·(Qᵀαŵ) leaves y_kᵀ(random part)
        first = S[0] if cw is None else S[0] - cw[:m] @ S
        return theta, first**2, np.abs(S[-1])

    m = a.shape[0]
    theta, w, last = rule(m)
    neg = np.maximum(-theta, 0.0)
    exact = (theta < 0) & (b_last * last <= EXACT_NEGATIVE_RTOL * np.abs(theta))
    c = dim / float(share)
    value = float(np.sum(neg[exact])) + c * float(np.sum(w[~exact] * neg[~exact]))
    # the probe's variance 2·Σλ², from its own rule, but at least from the Ritz values themselves (interlacing:
    # the bottom Ritz values are above the bottom eigenvalues, so Σθ² of the inexact ones bounds Σλ² below),
    # which does not shrink with the sample when the probe happened to miss the larger negative eigenvalues
    samp2 = 2.0 * max(c * float(np.sum(w[~exact] * neg[~exact] ** 2)), float(np.sum(neg[~exact] ** 2)))
    # the kink's quadrature error: both rules above the exact eigenvalues (which both rules hold alike)
    above = float(np.max(theta[exact])) if np.any(exact) else -math.inf
    nodes_above = theta[theta > above]
    cut = 0.5 * (above + float(nodes_above.min())) if np.any(exact) and nodes_above.size else above
    if m > 1:
        # a kink's Gauss-rule error changes sign with the number of nodes (on the edge run of
        # docs/validation.md §7a the m-node rule was 6–38 % low at four of five points and 29 % high at the
        # fifth, the mean of the m- and (m − 1)-node rules 0–28 % low): the mean is the estimate, the whole
        # difference its quadrature error
        t1, w1, _ = rule(m - 1)
        rest_m = float(np.sum(np.where(theta > cut, w * neg, 0.0)))
        rest_m1 = float(np.sum(np.where(t1 > cut, w1 * np.maximum(-t1, 0.0), 0.0)))
        value = float(np.sum(neg[exact])) + c * 0.5 * (rest_m + rest_m1)
        quad = c * abs(rest_m - rest_m1)
    else:
        quad = value
    return value, math.sqrt(samp2 + quad**2)


def split_trace(ritz_values: np.ndarray, rest: RestQuadrature, n_hvp: int | None = None) -> Estimate:
    """Tr H = Σ θ_i (exact part) + Hutchinson on the deflated rest (Ritz control variates); error =
    ``prior_se`` (Gaussian-probe variance from ‖B‖_F²).

    Theory: [docs/theory.md#metric-trace][metric-trace].
    """
    exact = float(np.sum(ritz_values))
    samples = rest.hutchinson()
    mean = float(samples.mean())
    se = prior_se(rest, lambda x: x, linear=True)
    return Estimate(value=exact + mean, error=se, n_hvp=rest.n_hvp if n_hvp is None else n_hvp,
                    extra={"method": "krylov", "exact_part": exact, "samples": samples,
                           "n_probes": int(samples.shape[0]), "n_deflated": rest.n_deflated,
                           "n_control": 0 if rest.cv is None else int(rest.cv.shape[1])})


def _kink_slope(f: Callable[[np.ndarray], np.ndarray], scale: float) -> float:
    """f'(0⁺) by a one-sided difference (every f here has f(0) = 0 and f = 0 for λ ≤ 0)."""
    h = 1e-9 * max(scale, 1e-300)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s = float(np.asarray(f(np.array([h])), dtype=float)[0]) / h
    return s if math.isfinite(s) else 0.0


def split_trace_fn(f: Callable[[np.ndarray], np.ndarray], ritz_values: np.ndarray, ritz_errors: np.ndarray,
                   rest: RestQuadrature, linear: tuple[float, float, float] | None = None,
                   negative: tuple[float, float] | None = None) -> Estimate:
    """Tr f(H) = Σ f(θ_i) + Tr f(A), f vectorised with f = 0 for λ ≤ 0; inf if any term is inf.

    ``linear = (slope, trace, trace_err)``: a control variate. When an independent estimate of Tr H is at
    hand, Tr f(A) = slope·(Tr H − Σθ_i) + ``Tr[f − slope·λ](A)``, and only the small remainder is sampled.
    ``negative = (N, N_err)``: Σ_{λ<0}|λ| (``negative_mass``). Then the kink of f at 0 is taken out of the
    quadrature: the rest integrates f_c (f for λ > 0, f'(0⁺)·λ below: no kink, so short Gauss rules are
    accurate on a bulk around 0) and f'(0⁺)·N is added back, as Tr f = Tr f_c + f'(0⁺)·Σ_{λ<0}|λ|.
    The error adds the rest's standard error (``prior_se``), the trace's, the quadrature error (full minus
    half-length nested rule), f'(0⁺)·N_err and |f'(θ_i)|·err_i of the Ritz values.

    Theory: [docs/theory.md#metric-ms_margin][metric-ms_margin].
    """
    theta = np.asarray(ritz_values, dtype=float)
    top = np.asarray(f(theta), dtype=float)
    kink_value, kink_err, slope0 = 0.0, 0.0, None
    if negative is not None and math.isfinite(negative[0]):
        slope0 = _kink_slope(f, float(np.max(np.abs(rest.nodes))) if rest.nodes.size else 1.0)
        kink_value, kink_err = slope0 * negative[0], slope0 * negative[1]

    def fc(x: np.ndarray) -> np.ndarray:
        if slope0 is None:
            return f(x)
        x = np.asarray(x, dtype=float)
        return np.where(x > 0, f(x), slope0 * x)

    if linear is None:
        g = fc
        lin_value, lin_err = 0.0, 0.0
    else:
        slope, tr, tr_err = linear
        g = (lambda x: fc(x) - slope * x)
        lin_value, lin_err = slope * (tr - float(theta.sum())), abs(slope) * tr_err
    samples = rest.samples(g)
    quad_err = 0.0
    if rest.half_nodes is not None:
        # nested Gauss rules: |full − half| estimates the quadrature error, which is not a sampling error
        with np.errstate(invalid="ignore"):
            quad_err = float(abs(samples.mean() - rest.samples(g, half=True).mean()))
        if not math.isfinite(quad_err):
            quad_err = 0.0
    if not (np.all(np.isfinite(top)) and np.all(np.isfinite(samples))):
        return Estimate(value=math.inf, error=math.nan, n_hvp=rest.n_hvp, converged=False,
                        extra={"samples": samples, "top_terms": top})
    mean = float(samples.mean())
    se = prior_se(rest, g)
    h = 1e-6 * np.maximum(np.abs(theta), 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope_top = np.abs((np.asarray(f(theta + h), float) - np.asarray(f(theta - h), float)) / (2 * h))
    top_err = float(np.sum(np.where(np.isfinite(slope_top), slope_top, 0.0) * np.abs(ritz_errors)))
    value = float(top.sum()) + lin_value + mean + kink_value
    err = math.sqrt(se**2 + lin_err**2 + quad_err**2 + kink_err**2) + top_err
    return Estimate(value=value, error=err, n_hvp=rest.n_hvp,
                    extra={"samples": samples, "top_terms": top, "rest": mean, "rest_err": se,
                           "linear": lin_value, "quadrature_err": quad_err, "kink": kink_value,
                           "kink_err": kink_err})
