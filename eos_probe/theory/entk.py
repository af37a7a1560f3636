"""Zeroth-order empirical NTK (docs/theory.md §5c), numpy only.

With logits Jacobians A = J(x_o) (rows: outputs of the observed examples) and B = J(x_u), a ZO step with P
directions U = [u_1..u_P] moves the logits through K_ZO = (1/P)(AU)(BU)ᵀ instead of K = ABᵀ; E[K_ZO] = K
for E[uuᵀ] = I. Exact second moments of the error, per direction law:

    Gaussian:    E‖K_ZO − K‖_F² = (‖ABᵀ‖_F² + ‖A‖_F²‖B‖_F²)/P
    Rademacher:  the same minus (2/P) Σ_k (Σ_i A_ik²)(Σ_j B_jk²)
    sphere √d:   (1/P)[(d/(d+2))(2‖ABᵀ‖_F² + ‖A‖_F²‖B‖_F²) − ‖ABᵀ‖_F²]

On a probe batch (A = B = J, K = JJᵀ) the Gaussian relative MSE is (1 + r_eff)/P, r_eff = (Tr K)²/‖K‖_F².
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidValueError
from ..presets import DEFAULT_DIRECTIONS, DIRECTIONS

LAWS = DIRECTIONS  # the two-point directions of the optimizers


def effective_rank(K: np.ndarray) -> float:
    """r_eff = (Tr K)² / ‖K‖_F².

    Theory: [docs/theory.md#zo-entk][zo-entk].
    """
    K = np.asarray(K, dtype=float)
    return float(np.trace(K) ** 2 / np.sum(K * K))


def zo_kernel_mse(A: np.ndarray, B: np.ndarray, P: int, law: str = DEFAULT_DIRECTIONS) -> float:
    """Exact E‖K_ZO − K‖_F² for K = ABᵀ and K_ZO = (1/P)(AU)(BU)ᵀ, U with P i.i.d. columns of the law.

    One direction: E‖Auuᵀ Bᵀ‖_F² = E[(uᵀMu)(uᵀNu)] with M = AᵀA, N = BᵀB, minus ‖K‖_F² (the mean);
    P independent directions divide the variance by P. Gaussian: E[(uᵀMu)(uᵀNu)] = TrM·TrN + 2Tr(MN);
    Rademacher: minus 2 Σ_k M_kk N_kk; sphere of radius √d: d/(d+2) times the Gaussian value.

    Theory: [docs/theory.md#zo-entk][zo-entk].
    """
    if law not in LAWS:
        raise InvalidValueError(f"unknown direction law {law!r}; choose one of {', '.join(LAWS)}")
    A, B = np.asarray(A, dtype=float), np.asarray(B, dtype=float)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise InvalidValueError(f"A and B must be matrices with the same number of columns, got {A.shape} and {B.shape}")
    d = A.shape[1]
    K = A @ B.T
    kk = float(np.sum(K * K))  # ‖ABᵀ‖_F² = Tr(MN)
    fourth = float(np.sum(A * A)) * float(np.sum(B * B)) + 2.0 * kk
    if law == "rademacher":
        fourth -= 2.0 * float(np.dot(np.sum(A * A, axis=0), np.sum(B * B, axis=0)))
    elif law == "sphere":
        fourth *= d / (d + 2.0)
    return (fourth - kk) / P


def relative_mse(J: np.ndarray, P: int, law: str = DEFAULT_DIRECTIONS) -> float:
    """E‖K_ZO − K‖_F²/‖K‖_F² on a probe batch (A = B = J, K = JJᵀ). Gaussian: (1 + r_eff)/P.

    Theory: [docs/theory.md#zo-entk][zo-entk].
    """
    J = np.asarray(J, dtype=float)
    K = J @ J.T
    return zo_kernel_mse(J, J, P, law) / float(np.sum(K * K))
