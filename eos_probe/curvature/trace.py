"""Stochastic trace estimators with standard errors: Hutchinson, Hutch++, deflation, Gauss–Newton + residual.

All estimators are unbiased; ``error`` is one standard error of the estimate (sample standard deviation
of the per-probe values over √n). With ``rtol`` the probes are drawn in blocks until error ≤ rtol·|value|
(at least ``MIN_PROBES`` probes, at most the ``n_matvec`` budget); ``converged`` says whether rtol was met.

* ``hutchinson``: Tr H ≈ mean zᵀHz over Rademacher z. Its variance is 2 Σ_{i≠j} H_ij² per probe.
* ``hutch++`` (Meyer, Musco, Musco & Woodruff 2021): a third of the budget sketches the range of H
  (Q = orth(H S)), Tr(QᵀHQ) is computed exactly, Hutchinson handles the complement (I − QQᵀ)H(I − QQᵀ).
* ``deflate=`` a top_k / lambda_max Estimate of the same operator: Tr H = Σ θ_i (the Ritz values are the
  Rayleigh quotients of the Ritz vectors, so no extra product) + Hutchinson on the complement of the
  Ritz vectors. Combines with both methods above.
* ``ggn+residual``: Tr G exactly from per-example output Jacobians (see ``ggn.py``) plus Hutchinson on
  R = H − G (one Hessian-vector product and one forward-mode product per probe). R vanishes at an exact
  fit and is zero-mean across examples near one, so its probes have far smaller spread than H's.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ._probes import default_generator, rademacher
from .estimate import Estimate
from .operators import CurvatureOperator, HessianOperator

__all__ = ["trace", "METHODS"]

METHODS = ("hutchinson", "hutch++", "ggn+residual")
#: fewest probes behind a standard error used to stop adaptively (fewer make the error itself unreliable)
MIN_PROBES = 10
#: probes per batched product
BLOCK = 8


def _stats(samples: np.ndarray) -> tuple[float, float]:
    n = samples.shape[0]
    mean = float(samples.mean())
    se = float(samples.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    return mean, se


def _hutchinson_loop(sample_block, n_max: int, rtol: float | None, offset: float) -> tuple[np.ndarray, bool]:
    """Draw probe blocks until the cap, or until se ≤ rtol·|offset + mean| once MIN_PROBES are in."""
    samples: list[float] = []
    met = rtol is None
    while len(samples) < n_max:
        if rtol is not None and len(samples) >= MIN_PROBES:
            mean, se = _stats(np.asarray(samples))
            if se <= rtol * abs(offset + mean):
                met = True
                break
        m = min(BLOCK, n_max - len(samples))
        if rtol is not None and len(samples) < MIN_PROBES:
            m = min(max(m, MIN_PROBES - len(samples)), n_max - len(samples))
        samples.extend(sample_block(m).tolist())
    if rtol is not None and not met and len(samples) >= 2:
        mean, se = _stats(np.asarray(samples))
        met = se <= rtol * abs(offset + mean)
    return np.asarray(samples, dtype=float), met


def _project_out(Z: Tensor, Q: Tensor | None) -> Tensor:
    if Q is None or Q.shape[0] == 0:
        return Z
    for _ in range(2):
        Z = Z - (Z @ Q.T) @ Q
    return Z


def _complement_sampler(op: CurvatureOperator, Q: Tensor | None, gen: torch.Generator):
    def block(m: int) -> np.ndarray:
        Z = _project_out(rademacher(m, op.dim, gen, op.dtype, op.device), Q)
        HZ = op.matmat(Z)
        return (Z * HZ).sum(1).double().cpu().numpy()

    return block


def _deflation_basis(op: CurvatureOperator, deflate: Estimate | None) -> tuple[Tensor | None, float]:
    if deflate is None:
        return None, 0.0
    V = deflate.extra.get("vectors", deflate.extra.get("vector"))
    if V is None:
        raise UserError("deflate= needs a top_k or lambda_max Estimate (it carries the eigenvectors)")
    V = torch.as_tensor(V).to(device=op.device, dtype=op.dtype)
    if V.dim() == 1:
        V = V[None]
    if V.shape[1] != op.dim:
        raise UserError(f"deflation vectors have length {V.shape[1]}, the operator dimension is {op.dim}")
    theta = np.atleast_1d(np.asarray(deflate.value, dtype=float))
    # Ritz vectors are orthonormal; re-orthonormalise anyway so the split Tr = Tr(VᵀHV) + Tr(P⊥HP⊥) is exact
    Q, R = torch.linalg.qr(V.T)
    if not torch.allclose(R.abs(), torch.eye(R.shape[0], dtype=R.dtype, device=R.device), atol=1e-4):
        raise UserError("deflation vectors are not orthonormal; pass the Estimate returned by top_k/lambda_max")
    return V, float(theta.sum())


def trace(op: CurvatureOperator, method: str = "hutchinson", n_matvec: int = 100, rtol: float | None = None,
          deflate: Estimate | None = None, generator: torch.Generator | None = None,
          objective=None, theta: Tensor | None = None, ggn_path: str = "auto") -> Estimate:
    """Estimate Tr(op) with a standard error (see the module docstring for the methods).

    ``n_matvec`` is the budget of operator products (the cap when ``rtol`` is given). ``objective`` and
    ``theta`` are needed by "ggn+residual" unless ``op`` is a HessianOperator (then they are taken from it).
    ``extra``: "samples" (per-probe values), "n_probes", and per method "exact_part" (Σθ_i, Tr(QᵀHQ) or
    Tr G), "ggn_seconds", "n_jvp".
    """
    if method not in METHODS:
        raise UserError(f"unknown trace method {method!r}; choose one of {', '.join(METHODS)}")
    if n_matvec < 2:
        raise UserError(f"n_matvec must be at least 2 (a standard error needs two probes), got {n_matvec}")
    if rtol is not None and not rtol > 0:
        raise UserError(f"rtol must be positive, got {rtol}")
    gen = default_generator(generator)
    n0 = op.n_hvp
    t0 = time.perf_counter()
    extra: dict = {"method": method}

    if method == "ggn+residual":
        if deflate is not None:
            raise UserError("deflate= does not combine with ggn+residual (the Gauss–Newton part is already exact)")
        objective = objective if objective is not None else getattr(op, "objective", None)
        theta = theta if theta is not None else getattr(op, "theta", None)
        if objective is None or theta is None:
            raise UserError("ggn+residual needs the objective and θ: pass a HessianOperator or objective=, theta=")
        if not isinstance(op, HessianOperator):
            raise UserError("ggn+residual applies to the Hessian itself, not to a preconditioned or dense operator")
        from .ggn import ggn_quadratic, ggn_trace

        tr_g, info = ggn_trace(objective, theta, path=ggn_path)
        extra.update(exact_part=tr_g, ggn_path=info["path"], ggn_seconds=info["seconds"])
        n_jvp = [0]

        def block(m: int) -> np.ndarray:
            Z = rademacher(m, op.dim, gen, op.dtype, op.device)
            zhz = (Z * op.matmat(Z)).sum(1)
            zgz = ggn_quadratic(objective, theta, Z)
            n_jvp[0] += m
            return (zhz - zgz).double().cpu().numpy()

        samples, met = _hutchinson_loop(block, n_matvec, rtol, tr_g)
        extra["n_jvp"] = n_jvp[0]
        exact = tr_g
    else:
        V, exact = _deflation_basis(op, deflate)
        budget = n_matvec
        if method == "hutch++":
            n_sketch = max(1, n_matvec // 3)
            if 2 * n_sketch + 2 > n_matvec:
                raise UserError(f"hutch++ needs n_matvec >= 5 (sketch, projection and 2 probes), got {n_matvec}")
            S = _project_out(rademacher(n_sketch, op.dim, gen, op.dtype, op.device), V)
            Y = _project_out(op.matmat(S), V)
            Qs, _ = torch.linalg.qr(Y.T)
            Qs = Qs.T.contiguous()
            exact += float((Qs * op.matmat(Qs)).sum())
            V = Qs if V is None else torch.cat([V, Qs])
            budget = n_matvec - 2 * n_sketch
            extra["sketch_size"] = n_sketch
        if V is not None and V.shape[0] >= op.dim:
            samples, met = np.zeros(2), True  # the basis spans everything: the exact part is the trace
        else:
            samples, met = _hutchinson_loop(_complement_sampler(op, V, gen), budget, rtol, exact)
        extra["exact_part"] = exact

    mean, se = _stats(samples)
    extra.update(samples=samples, n_probes=int(samples.shape[0]), seconds=time.perf_counter() - t0)
    return Estimate(value=exact + mean, error=se, n_hvp=op.n_hvp - n0, converged=bool(met), extra=extra)
