"""Lanczos with full re-orthogonalisation: λ_max and the top-k eigenpairs of a symmetric operator.

Stopping rule. After each product the tridiagonal T_j is diagonalised; Ritz pair (θ_i, y_i) has residual
‖H y_i − θ_i y_i‖ = β_j |s_{j,i}| (exact up to round-off thanks to the full re-orthogonalisation).

* ``bound="residual"`` (default): an eigenvalue lies within that residual of θ_i — a rigorous bound.
* ``bound="gap"``: the eigenvalue lies within residual²/gap if no other eigenvalue is closer than ``gap``
  (Kato–Temple); the gap is estimated from the other Ritz values, which is optimistic while the Ritz values
  below have not yet converged (an unresolved eigenvalue just under λ_max shrinks the true gap). Far fewer
  products for the same true accuracy once the spectrum's top is resolved; not a certificate.

``error`` is the chosen bound; ``extra["ritz_residual"]`` and ``extra["gap_error"]`` hold both. A pair is
converged when error ≤ tol·|θ_i|. When ``max_iter`` is reached first the result says ``converged=False``.

A residual certifies that *an* eigenvalue lies near each Ritz value, not that none was missed above it, nor
which eigenvalue it is. Convergence therefore also needs (i) at least ``MIN_KRYLOV`` steps and (ii) a gap
check: the k-th Ritz value must be separated from the (k+1)-th by more than their two residuals, so the
intervals that certify the top k are disjoint from the rest of the resolved spectrum (otherwise θ_k could
belong to a pair whose order is still ambiguous). Without both, a stale warm start stops after 3 steps on the
old (now second) eigenvalue flagged converged. Limits of any single-vector Krylov method: it finds one copy of a repeated eigenvalue (a restart after an
exact breakdown finds the others), and a start vector with no component along the top eigenvector cannot
find it — a warm start therefore gets a small random admixture.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from ..errors import InvalidValueError
from ._probes import default_generator, gaussian
from .basis import KrylovBasis
from .estimate import Estimate
from .operators import CurvatureOperator

__all__ = ["lambda_max", "top_k", "lanczos_tridiagonal"]

#: weight of the random component mixed into a warm start, relative to the stale vector (both unit length).
#: A stale top eigenvector that has become the second one carries little of the new top direction; the
#: random part gives the Krylov space an O(1/√d) foothold on every direction, which the Lanczos filter
#: amplifies within the minimum Krylov dimension below (1e-2 was too small: a swapped pair was missed).
WARM_NOISE = 1.0
#: fewest Lanczos steps before any pair may be declared converged (warm or cold): a Krylov space barely
#: larger than k can hold k converged Ritz pairs of the wrong eigenvalues (e.g. the old top eigenvector,
#: now second, converges in 2–3 steps). The extra steps amplify an unseen eigenvalue above by a Chebyshev
#: factor of ≈ (1 + 2√(gap/spread))^MIN_KRYLOV, so it surfaces before the stop unless its start weight is tiny.
MIN_KRYLOV = 12
BOUNDS = ("residual", "gap")


def _start_vector(op: CurvatureOperator, v0, gen: torch.Generator) -> tuple[Tensor, bool, float, Tensor | None]:
    """(q, warm, random_share, warm_part): the unit start vector q = (ŵ + WARM_NOISE·r)/‖…‖ (r a uniformly
    random unit vector, ŵ the unit warm vector), whether it is warm, the squared length of its random part
    (1 for a cold start) and its warm part ŵ/‖…‖ (None for a cold start)."""
    r = gaussian(1, op.dim, gen, op.dtype, op.device)[0]
    r = r / r.norm()
    if v0 is None:
        return r, False, 1.0, None
    if isinstance(v0, Estimate):
        v0 = v0.extra.get("vectors", v0.extra.get("vector"))
        if v0 is None:
            raise InvalidValueError("the warm-start Estimate carries no eigenvector (extra['vector'/'vectors'])")
    v = torch.as_tensor(v0).to(device=op.device, dtype=op.dtype)
    if v.dim() == 2:  # several previous eigenvectors: start from their sum, which touches each of them
        v = v.sum(0)
    if v.shape != (op.dim,):
        raise InvalidValueError(f"warm-start vector has shape {tuple(v.shape)}, expected ({op.dim},)")
    nv = v.norm()
    if not torch.isfinite(nv) or nv == 0:
        return r, False, 1.0, None
    w = v / nv
    v = w + WARM_NOISE * r
    nv = float(v.norm())
    return v / nv, True, (WARM_NOISE / nv) ** 2, w / nv


def _ritz_errors(theta: np.ndarray, res: np.ndarray) -> np.ndarray:
    """min(residual, residual²/gap) per Ritz value, gap to the nearest other Ritz value less both residuals."""
    n = theta.shape[0]
    if n == 1:
        return res.copy()
    diff = np.abs(theta[:, None] - theta[None, :]) - res[:, None] - res[None, :]
    np.fill_diagonal(diff, np.inf)
    gap = diff.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        quad = np.where(gap > 0, res**2 / np.where(gap > 0, gap, 1.0), np.inf)
    return np.minimum(res, quad)


def _separated(theta: np.ndarray, res: np.ndarray, k: int, tol: float, scale: float) -> bool:
    """Gap check: the k-th Ritz interval [θ_k ± r_k] lies strictly above the (k+1)-th one, or the (k+1)-th
    pair is itself converged (a resolved near-tie: both values are certified, their order within tol)."""
    if theta.shape[0] <= k:
        return True
    return bool(theta[k - 1] - theta[k] > res[k - 1] + res[k]) or bool(res[k] <= tol * max(abs(theta[k]), scale))


#: round-off floor of a reported eigenvalue error, in units of ε·‖H‖ (Ritz values and a dense eigensolver
#: agree to a few hundred ε‖H‖, not to a converged residual of 1e-17)
ROUNDOFF = 100.0
#: accepted probability-scale of missing an eigenvalue above the k-th Ritz value (see _steps_for_gap)
MISS = 1e-2


def _steps_for_gap(theta: np.ndarray, k: int, dim: int) -> int:
    """Krylov steps needed before a stop, from the relative gap g = (θ_k − θ_{k+1}) / (θ_1 − θ_min).

    Lanczos amplifies an eigenvalue that lies a relative gap g above the others by ≈ exp(2j√g) after j
    steps (Chebyshev), against a start-vector weight of order 1/√d. An eigenvalue that the run has not
    found yet is likely no further above θ_k than θ_{k+1} is below it, so until 2j√g ≥ ln(√d / MISS) a
    tight top cluster may hide one. This adapts the minimum Krylov dimension to the cluster: well separated
    tops stop at MIN_KRYLOV, a 0.3 % cluster needs ~50 steps.
    """
    if theta.shape[0] <= k:
        return 0
    spread = theta[0] - theta[-1]
    g = (theta[k - 1] - theta[k]) / spread if spread > 0 else 1.0
    if not g > 0:
        return 1 << 30
    return int(math.ceil(math.log(math.sqrt(dim) / MISS) / (2.0 * math.sqrt(g))))


def _block_top_converged(alphas: list[float], betas: list[float], b: float, tol: float, norm_est: float) -> bool:
    if len(alphas) == 1:
        theta, S = np.array(alphas), np.ones((1, 1))
    else:
        theta, S = eigh_tridiagonal(np.array(alphas), np.array(betas))
    i = int(np.argmax(theta))
    return b * abs(S[-1, i]) <= tol * max(abs(theta[i]), 1e-14 * max(norm_est, 1e-300))


def _lanczos_top(op: CurvatureOperator, k: int, tol: float, v0, max_iter: int,
                 generator: torch.Generator | None, bound: str) -> Estimate:
    _check_top_args(op, k, tol, bound)
    gen = default_generator(generator)
    max_iter = int(min(max(max_iter, k), op.dim))
    q, warm, random_share, warm_part = _start_vector(op, v0, gen)
    basis = KrylovBasis(op.dim, op.dtype, op.device)
    alphas: list[float] = []
    betas: list[float] = []
    n0, norm_est, restarts, block_start, converged = op.n_hvp, 0.0, 0, 0, False
    theta = res = err = S = gap_err = None
    persistence = _Persistence()
    eps = float(torch.finfo(op.dtype).eps)
    # a few steps before trusting the residual test: a stale warm vector can be a wrong eigenvector, and a
    # Krylov space barely larger than k can hold k converged Ritz pairs while missing one above them
    min_steps = min(op.dim, max(2 * k + 1, MIN_KRYLOV))
    for j in range(max_iter):
        basis.append(q)
        w = op.matvec(q)
        a = float(torch.dot(q, w))
        w = basis.orthogonalize(w)
        b = float(w.norm())
        alphas.append(a)
        norm_est = max(norm_est, abs(a) + b + (betas[-1] if betas else 0.0))
        theta, S = _sorted_ritz(alphas, betas)
        # a residual below round-off certifies nothing finer than round-off: floor it at ROUNDOFF·ε·‖H‖
        res = np.maximum(b * np.abs(S[-1, :]), ROUNDOFF * eps * norm_est)
        gap_err = _ritz_errors(theta, res)
        err = gap_err if bound == "gap" else res
        m = min(k, theta.shape[0])
        done = persistence.confirm(_top_certified(theta, res, err, k, tol, norm_est, j + 1, min_steps, op.dim),
                                   j, theta[:m], err[:m], norm_est)
        if done and restarts:
            # after a restart the earlier blocks are exact; the newest block must have found the top of the
            # remaining space before we know that nothing above the current top-k is left
            done = _block_top_converged(alphas[block_start:], betas[block_start:], b, tol, norm_est)
        breakdown = b <= 1e-12 * max(norm_est, 1e-300)
        if done or (breakdown and basis.n >= op.dim):
            converged = done or basis.n >= op.dim
            break
        if breakdown:
            # invariant subspace found: continue from a fresh random direction (finds repeated eigenvalues)
            restarts += 1
            block_start = len(alphas)
            w = basis.orthogonalize(gaussian(1, op.dim, gen, op.dtype, op.device)[0])
            betas.append(0.0)
            q = w / w.norm()
            continue
        betas.append(b)
        q = w / b
    m = min(k, theta.shape[0])
    extra = {"ritz_residual": res[:m].copy(), "gap_error": gap_err[:m].copy(), "bound": bound,
             "n_iter": len(alphas), "ritz_values": theta.copy(), "warm_start": warm, "restarts": restarts,
             "alphas": np.array(alphas), "betas": np.array(betas[: len(alphas) - 1]), "beta_last": float(b),
             "random_share": random_share, **_ritz_vectors(op, basis, S, theta, res, m, warm_part, len(alphas))}
    return Estimate(value=theta[:m].copy(), error=err[:m].copy(), n_hvp=op.n_hvp - n0,
                    converged=converged, extra=extra)


def _ritz_vectors(op: CurvatureOperator, basis: KrylovBasis, S: np.ndarray, theta: np.ndarray, res: np.ndarray,
                  m: int, warm_part: Tensor | None, n: int) -> dict:
    """The top m Ritz vectors, the tail pairs kept as control variates, and the warm start's coordinates in the
    Krylov basis (the `extra` entries the deflated estimators read)."""
    coeff = torch.as_tensor(np.ascontiguousarray(S[:, :m].T), dtype=op.dtype, device=op.device)
    Y = coeff @ basis.Q[: S.shape[0]]
    tail = _tail_pairs(theta, res, m)
    coeff = torch.as_tensor(np.ascontiguousarray(S[:, tail].T), dtype=op.dtype, device=op.device)
    Yt = coeff @ basis.Q[: S.shape[0]]
    return {"vectors": Y / Y.norm(dim=1, keepdim=True), "tail_values": theta[tail].copy(),
            "warm_coefficients": None if warm_part is None else (basis.Q[:n] @ warm_part).double().cpu().numpy(),
            "tail_vectors": Yt / Yt.norm(dim=1, keepdim=True).clamp_min(1e-300)}


def _top_certified(theta: np.ndarray, res: np.ndarray, err: np.ndarray, k: int, tol: float, norm_est: float,
                   steps: int, min_steps: int, dim: int) -> bool:
    """Whether the top k Ritz values pass every stopping test after `steps` Lanczos steps: within `tol`
    relative to their size, separated from the rest, and enough steps for the spectral gap."""
    m = min(k, theta.shape[0])
    floor = 1e-14 * max(norm_est, 1e-300)
    scale = np.maximum(np.abs(theta[:m]), floor)
    return bool(np.all(err[:m] <= tol * scale)) and m == k and steps >= min_steps \
        and _separated(theta, res, k, tol, floor) and steps >= _steps_for_gap(theta, k, dim)


#: Ritz pairs beyond the top k kept as control variates of the deflated probes (``deflated.rest_quadrature``)
N_TAIL = 16


def _tail_pairs(theta: np.ndarray, res: np.ndarray, k: int) -> np.ndarray:
    """Indices of the Ritz pairs after the top k worth a control variate: the N_TAIL largest |θ| among those
    whose residual is below |θ| (a pair with a larger residual is no approximate eigenpair)."""
    idx = np.arange(k, theta.shape[0])
    idx = idx[res[idx] < np.abs(theta[idx])]
    return idx[np.argsort(-np.abs(theta[idx]), kind="stable")[:N_TAIL]]


def _check_top_args(op: CurvatureOperator, k: int, tol: float, bound: str) -> None:
    if bound not in BOUNDS:
        raise InvalidValueError(f"unknown Lanczos error bound {bound!r}; choose one of {', '.join(BOUNDS)}")
    if k < 1:
        raise InvalidValueError(f"k must be at least 1, got {k}")
    if k > op.dim:
        raise InvalidValueError(f"asked for {k} eigenvalues of a {op.dim}-dimensional operator")
    if not tol > 0:
        raise InvalidValueError(f"tol must be positive, got {tol}")


def _sorted_ritz(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values (descending) and eigenvectors of the tridiagonal (alphas, betas)."""
    if len(alphas) == 1:
        theta, S = np.array([alphas[0]]), np.ones((1, 1))
    else:
        theta, S = eigh_tridiagonal(np.array(alphas), np.array(betas))
    order = np.argsort(theta)[::-1]
    return theta[order], S[:, order]


class _Persistence:
    """A stop is final only after the criteria have held over a further quarter of the steps taken (at least
    2) with the top values unmoved; an eigenvalue that the start vector barely touched grows geometrically in
    those steps and moves θ_1 (a close top cluster otherwise returned λ₂ "converged" in a few % of cold starts)."""

    def __init__(self) -> None:
        self.first_done: int | None = None
        self.first_theta: np.ndarray | None = None

    def confirm(self, done: bool, j: int, theta: np.ndarray, err: np.ndarray, norm_est: float) -> bool:
        """Whether the stop criteria met (``done``) at step ``j`` with top values ``theta`` have persisted."""
        if not done:
            self.first_done = None
            return False
        if self.first_done is None:
            self.first_done, self.first_theta = j, theta.copy()
        if j < self.first_done + max(2, self.first_done // 4):
            return False
        if np.any(np.abs(theta - self.first_theta) > err + 1e-15 * max(norm_est, 1e-300)):
            self.first_done, self.first_theta = j, theta.copy()
            return False
        return True


def top_k(op: CurvatureOperator, k: int, tol: float = 1e-3, v0=None, max_iter: int = 200,
          generator: torch.Generator | None = None, bound: str = "residual") -> Estimate:
    """The k algebraically largest eigenvalues (descending) with error bounds; ``extra["vectors"]`` (k, d).

    ``v0``: warm start — a flat vector, a (k', d) stack of previous eigenvectors, or a previous Estimate.
    ``extra`` also keeps what the deflated probes reuse at no cost: the tridiagonal ("alphas", "betas",
    "beta_last"), the start vector's random share and warm part in the Lanczos basis ("random_share",
    "warm_coefficients"; ``deflated.negative_mass``), and up to N_TAIL further Ritz pairs ("tail_values",
    "tail_vectors"; control variates in ``deflated.rest_quadrature``).

    Theory: [docs/theory.md#metric-top_k][metric-top_k].
    """
    return _lanczos_top(op, k, tol, v0, max_iter, generator, bound)


def lambda_max(op: CurvatureOperator, tol: float = 1e-3, v0=None, max_iter: int = 200,
               generator: torch.Generator | None = None, bound: str = "residual") -> Estimate:
    """The largest eigenvalue (algebraic) with its error bound; ``extra["vector"]`` is its Ritz vector.

    Theory: [docs/theory.md#metric-lambda_max][metric-lambda_max].
    """
    est = _lanczos_top(op, 1, tol, v0, max_iter, generator, bound)
    extra = dict(est.extra)
    extra["vector"] = extra["vectors"][0]
    return Estimate(value=float(est.value[0]), error=float(est.error[0]), n_hvp=est.n_hvp,
                    converged=est.converged, extra=extra)


def lanczos_tridiagonal(op: CurvatureOperator, V0: Tensor, n_steps: int,
                        reorthogonalize: bool = True,
                        first_beta: list[float] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run n_steps of Lanczos from each row of V0 in lockstep (one batched product per step).

    Returns, per start vector, the (alphas, betas) of its tridiagonal; a run whose Krylov space closes
    early (breakdown) stops there, so its tridiagonal is shorter. Used by stochastic Lanczos quadrature.
    ``first_beta``: a list that receives each run's β₁ = ‖Aq₁ − α₁q₁‖, also when n_steps = 1 (then the
    tridiagonal has no β): with α₁ it gives ‖Aq₁‖² = α₁² + β₁².
    """
    p, d = V0.shape
    n_steps = int(min(n_steps, d))
    Q = torch.empty((p, n_steps, d), dtype=op.dtype, device=op.device)
    q = V0.to(device=op.device, dtype=op.dtype)
    q = q / q.norm(dim=1, keepdim=True)
    alphas = [[] for _ in range(p)]
    betas = [[] for _ in range(p)]
    active = list(range(p))
    q_prev = torch.zeros_like(q)
    b_prev = torch.zeros(p, dtype=op.dtype, device=op.device)
    norm_est = np.zeros(p)
    for j in range(n_steps):
        idx = torch.tensor(active, device=op.device)
        Q[idx, j] = q[idx]
        W = op.matmat(q[idx])
        a = (W * q[idx]).sum(1)
        W = W - a[:, None] * q[idx] - b_prev[idx][:, None] * q_prev[idx]
        if reorthogonalize:
            Qa = Q[idx, : j + 1]
            for _ in range(2):
                W = W - torch.einsum("pjd,pj->pd", Qa, torch.einsum("pjd,pd->pj", Qa, W))
        b = W.norm(dim=1)
        a_np, b_np = a.double().cpu().numpy(), b.double().cpu().numpy()
        if j == 0 and first_beta is not None:
            first_beta.extend(float(x) for x in b_np)
        bp_np = b_prev.double().cpu().numpy()
        still = []
        for r, i in enumerate(active):
            ai, bi = float(a_np[r]), float(b_np[r])
            alphas[i].append(ai)
            norm_est[i] = max(norm_est[i], abs(ai) + bi + float(bp_np[i]))
            if j + 1 < n_steps and bi > 1e-10 * max(norm_est[i], 1e-300):
                betas[i].append(bi)
                still.append(r)
        q_prev = q.clone()
        if still:
            rows = torch.tensor(still, device=op.device)
            keep = idx[rows]
            q[keep] = W[rows] / b[rows, None]
            b_prev[keep] = b[rows]
        active = [active[r] for r in still]
        if not active:
            break
    return [(np.array(alphas[i]), np.array(betas[i][: len(alphas[i]) - 1])) for i in range(p)]
