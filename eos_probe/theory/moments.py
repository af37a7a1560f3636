"""Growth rate of E‖θ‖² (docs/theory.md §2): the per-mode closed form and the dense exact operator.

`ms_spectral_radius` is exact on the quadratic from the spectrum alone; `moment_operator` builds the
second-moment map from first principles for small dense problems (any directions, any preconditioner),
and `exact_critical_lr` reads η* off it. Numpy/scipy only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import brentq

from ..errors import InvalidValueError
from ..presets import DEFAULT_DIRECTIONS
from .setting import Setting, _check_lr, _setting_for_spectrum, _spectrum, _warn, resolve


def _mode_blocks(lam: np.ndarray, lr: float, s: Setting) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-mode 4×4 second-moment maps of (x, m) without coupling, the noise input and its coefficient.

    Mode update (η_eff absorbed into γ): ``m' = βm + γ(λx + ξ)``, ``x' = x − η m'`` with ``γ = 1`` (heavy
    ball) or ``1−β`` (EMA); ``Var ξ = (a λ² E x² + b Σ_j λ_j² E x_j²)/q``.
    """
    beta = s.momentum
    gamma = 1.0 - beta if s.momentum_style == "ema" else 1.0
    n = lam.size
    F = np.zeros((n, 2, 2))
    F[:, 0, 0] = 1.0 - lr * gamma * lam
    F[:, 0, 1] = -lr * beta
    F[:, 1, 0] = gamma * lam
    F[:, 1, 1] = beta
    K = np.einsum("nij,nkl->nikjl", F, F).reshape(n, 4, 4)
    Bv = np.array([-lr * gamma, gamma])
    e = np.outer(Bv, Bv).ravel()
    if s.zeroth_order:
        a, _ = s.noise_coefficients
        K = K + (a * lam**2 / s.queries)[:, None, None] * np.einsum("i,j->ij", e, np.eye(4)[0])[None]
    return K, e, lam


def ms_spectral_radius(spectrum: Sequence[float] | np.ndarray, lr: float, optimizer: str, queries: int = 1,
                       momentum: float | None = None, momentum_style: str | None = None, *,
                       directions: str = DEFAULT_DIRECTIONS, dim: int | None = None) -> float:
    """Spectral radius ρ of the mean-square operator, so that ``E‖θ_t‖² ~ ρ^t`` (growth rate ``log ρ``).

    Exact on the quadratic (Gaussian/sphere directions, commuting P for Adam): each mode's (x, m)
    second moments evolve by a 4×4 map ``G_i`` and the modes couple only through the rank-one noise
    ``(b/q) Σ_j λ_j² E x_j²``, so ρ is the largest root of ``Σ_i (bλ_i²/q) e_xᵀ(ρI − G_i)⁻¹ e_ξ = 1``
    above ``max_i ρ(G_i)`` (or ``max_i ρ(G_i)`` if there is none). For a positive definite spectrum
    ``ρ < 1 ⇔ S(η) < 1``; a zero eigenvalue is a neutral mode and pins ρ ≥ 1.

    Theory: [docs/theory.md#ms-sum][ms-sum].
    """
    lam, w = _spectrum(spectrum, None, "unstable")
    s = _setting_for_spectrum(optimizer, queries, momentum, momentum_style, directions, dim, lam, w)
    _warn(s)
    lr = _check_lr(lr)
    K, e, lam = _mode_blocks(lam, lr, s)
    rho_modes = np.max(np.abs(np.linalg.eigvals(K)), axis=-1)
    rho0 = float(np.max(rho_modes))
    if not s.zeroth_order:
        return rho0
    _, b = s.noise_coefficients
    coef = b * lam**2 / s.queries
    eye = np.eye(4)

    def coupling(rho: float) -> float:
        sol = np.linalg.solve(rho * eye[None] - K, np.broadcast_to(e, (lam.size, 4))[..., None])[..., 0]
        return float(np.dot(coef, sol[:, 0]))

    lo = rho0 * (1 + 1e-12) + 1e-300
    if coupling(lo) <= 1.0:  # the coupling cannot lift ρ above the worst single mode
        return rho0
    hi = max(lo * 2, 2.0)
    while coupling(hi) > 1.0:
        hi *= 2
    return brentq(lambda r: coupling(r) - 1.0, lo, hi, rtol=4 * np.finfo(float).eps, maxiter=500)


def moment_operator(hessian: np.ndarray, lr: float, optimizer: str, queries: int = 1,
                    momentum: float | None = None, momentum_style: str | None = None, *,
                    directions: str = DEFAULT_DIRECTIONS, preconditioner: np.ndarray | None = None) -> np.ndarray:
    """Dense linear map ``vec(Σ_t) ↦ vec(Σ_{t+1})`` of the second moment of the state ``z = (θ, m)``.

    Built from first principles for small dense problems (d ≲ 12), independent of the spectral formulas:
    ``m' = βm + γ g``, ``θ' = θ − η P⁻¹ m'`` with ``g = Z H θ`` (ZO, exact on a quadratic) or ``g = Hθ``.
    Writing ``Z = I + Δ``: ``Σ' = M Σ Mᵀ + L E[Δ (RΣRᵀ) Δ] Lᵀ`` with ``E[ΔAΔ] = (E[uuᵀAuuᵀ] − A)/q`` and
    ``E[uuᵀAuuᵀ] = 2A + tr(A)I`` (Gaussian), ``d/(d+2)·(2A + tr(A)I)`` (sphere radius √d) or
    ``2A + tr(A)I − 2diag(A)`` (Rademacher, exact here since the map is in coordinates).
    ``preconditioner``: Adam's frozen P, a positive vector (diagonal) or an SPD matrix; None means I.
    Row-major ``vec``, so ``vec(AΣBᵀ) = (A ⊗ B) vec(Σ)``.

    Theory: [docs/theory.md#zo-estimator][zo-estimator].
    """
    H = np.asarray(hessian, dtype=float)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise InvalidValueError(f"hessian must be a square matrix, got shape {H.shape}")
    d = H.shape[0]
    s = resolve(optimizer, queries, momentum, momentum_style, directions, d)
    lr = _check_lr(lr)
    if preconditioner is None:
        Pinv = np.eye(d)
    else:
        if not s.preconditioned:
            raise InvalidValueError(f"{optimizer} has no preconditioner; pass preconditioner only for Adam")
        P = np.asarray(preconditioner, dtype=float)
        Pinv = np.diag(1.0 / P) if P.ndim == 1 else np.linalg.inv(P)
    beta = s.momentum
    gamma = 1.0 - beta if s.momentum_style == "ema" else 1.0
    I, O = np.eye(d), np.zeros((d, d))
    M = np.block([[I - lr * gamma * Pinv @ H, -lr * beta * Pinv], [gamma * H, beta * I]])
    op = np.kron(M, M)
    if s.zeroth_order:
        L = np.vstack([-lr * gamma * Pinv, gamma * I])
        R = np.hstack([H, O])
        vi = I.ravel()
        if s.directions == "gaussian":
            quartic = 2 * np.eye(d * d) + np.outer(vi, vi)
        elif s.directions == "sphere":
            quartic = d / (d + 2.0) * (2 * np.eye(d * d) + np.outer(vi, vi))
        else:
            quartic = 2 * np.eye(d * d) + np.outer(vi, vi) - 2 * np.diag(vi)
        noise = (quartic - np.eye(d * d)) / s.queries
        op = op + np.kron(L, L) @ noise @ np.kron(R, R)
    return op


def spectral_radius(matrix: np.ndarray) -> float:
    """Largest |eigenvalue| of a square matrix."""
    return float(np.max(np.abs(np.linalg.eigvals(matrix))))


def exact_critical_lr(hessian: np.ndarray, optimizer: str, queries: int = 1, momentum: float | None = None,
                      momentum_style: str | None = None, *, directions: str = DEFAULT_DIRECTIONS,
                      preconditioner: np.ndarray | None = None, rtol: float = 1e-10) -> float:
    """η* from the dense :func:`moment_operator`: the first η where its spectral radius crosses 1.

    Needs a positive definite ``hessian`` (a null mode is a neutral random walk, ρ = 1 for every η).
    Works where the spectral formulas are only approximate: Rademacher directions and a preconditioner
    that does not commute with H. Scans η geometrically for the first sign change of ``det(I − Op)``,
    refines it with ``brentq`` and confirms with the spectral radius.

    Theory: [docs/theory.md#ms-sum][ms-sum].
    """
    H = np.asarray(hessian, dtype=float)
    ev = np.linalg.eigvalsh((H + H.T) / 2)
    if ev[0] <= 0:
        raise InvalidValueError("exact_critical_lr needs a positive definite hessian")
    kw = dict(queries=queries, momentum=momentum, momentum_style=momentum_style, directions=directions,
              preconditioner=preconditioner)

    def det_sign(eta: float) -> float:
        # sign(det(I − Op))·|det|^(1/n): continuous in η, positive while ρ < 1 (every real eigenvalue is
        # below the Perron root ρ, complex pairs give |1−μ|² > 0) and it changes sign where ρ crosses 1;
        # an LU factorisation is ~10x cheaper than the eigenvalues
        op = moment_operator(H, eta, optimizer, **kw)
        sign, logdet = np.linalg.slogdet(np.eye(op.shape[0]) - op)
        return float(sign * np.exp(logdet / op.shape[0]))

    if preconditioner is not None:
        P = np.asarray(preconditioner, dtype=float)
        Pm = np.diag(P) if P.ndim == 1 else P
        ev = np.linalg.eigvals(np.linalg.solve(Pm, H)).real
    # x_limit/λ_max bounds η* from above for the spectral formula; scan to 4x that for the first crossing
    s = resolve(optimizer, queries, momentum, momentum_style,
                "gaussian" if directions == "rademacher" else directions, H.shape[0])
    hi = 4 * s.x_limit / (s.lr_factor * float(np.max(ev)))
    grid = hi * np.geomspace(1e-3, 1.0, 120)
    prev = grid[0]
    for eta in grid:
        if det_sign(eta) <= 0:
            root = brentq(det_sign, prev, eta, rtol=rtol, maxiter=500)
            # confirm it is the Perron root that crossed (not an even number of eigenvalues between points)
            below = spectral_radius(moment_operator(H, root * (1 - 1e-6), optimizer, **kw))
            above = spectral_radius(moment_operator(H, root * (1 + 1e-6), optimizer, **kw))
            if not below <= 1.0 + 1e-9 <= above + 2e-9:
                raise RuntimeError(f"spectral radius does not cross 1 at eta={root:g}; refine the scan")
            return root
        prev = eta
    raise RuntimeError("no mean-square instability found below 4·x_limit/λ_max; check the inputs")

