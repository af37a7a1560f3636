"""A cheap tracking estimate of λ_max between certified probes: a few Lanczos products from a warm start."""
from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from ._probes import gaussian
from .basis import KrylovBasis
from .estimate import Estimate
from .operators import CurvatureOperator


def warm_lambda_max(op: CurvatureOperator, v0: Tensor, n_steps: int = 4, generator: torch.Generator | None = None,
                    noise: float = 0.1) -> Estimate:
    """A cheap tracking estimate of λ_max: `n_steps` Lanczos products from a warm start (not a certified probe).

    The top Ritz value θ₁ of any Krylov space is a lower bound of λ_max (Rayleigh–Ritz); its residual r bounds
    the distance to *an* eigenvalue, which is λ_max when the warm start still points at the top eigenvector
    (nothing checks that here: no gap test, no minimum Krylov dimension — that is what the certified probe
    is for). ``value`` = θ₁, ``error`` = r, ``extra["lower"]`` = θ₁, ``extra["upper"]`` = θ₁ + r,
    ``extra["vector"]`` the Ritz vector (the next warm start).

    Args:
        op: the symmetric operator.
        v0: the warm start (e.g. the last probe's top eigenvector), flat.
        n_steps: products to spend (≥ 1).
        generator: draws the small random part mixed into v0 (relative weight `noise`).
    """
    n_steps = int(max(1, min(n_steps, op.dim)))
    q = v0.reshape(-1).to(device=op.device, dtype=op.dtype)
    q = q / q.norm()
    if noise > 0:
        z = gaussian(1, op.dim, generator, op.dtype, op.device)[0]
        q = q + noise * z / z.norm()
        q = q / q.norm()
    basis = KrylovBasis(op.dim, op.dtype, op.device)
    alphas, betas, beta = [], [], 0.0
    q_prev = torch.zeros_like(q)
    start = op.n_hvp
    for j in range(n_steps):
        basis.append(q)
        w = op.matvec(q)
        a = float((w * q).sum())
        w = basis.orthogonalize(basis.orthogonalize(w - a * q - beta * q_prev))
        alphas.append(a)
        beta = float(w.norm())
        if j + 1 == n_steps or beta <= 1e-12 * max(abs(a), 1e-300):
            break
        betas.append(beta)
        q_prev, q = q, w / beta
    theta, s = eigh_tridiagonal(np.array(alphas), np.array(betas)) if len(alphas) > 1 else \
        (np.array(alphas), np.ones((1, 1)))
    top = int(np.argmax(theta))
    resid = abs(beta * s[-1, top])
    vec = basis.Q[: len(alphas)].T @ torch.as_tensor(s[:, top], dtype=op.dtype, device=op.device)
    val = float(theta[top])
    return Estimate(value=val, error=resid, n_hvp=op.n_hvp - start, converged=False,
                    extra={"lower": val, "upper": val + resid, "vector": vec})
