"""Shaping moments of the ZO estimator Z g, Z = (1/q) Σ_k u_k u_kᵀ (docs/theory.md §5).

For symmetric A: E[Z A Z] = ((q+1)/q)·A + (1/q)·Tr(A)·I for Gaussian u (exact); the sphere of radius √d
multiplies the fourth-moment part by d/(d+2); Rademacher subtracts (2/q)·diag(A). The norm inflation
κ = E‖Zg‖²/‖g‖² is what a norm-matched step divides by (as √κ) so that E‖v‖² = ‖g‖².
"""
from __future__ import annotations

from ..errors import InvalidValueError

#: direction laws with a closed-form κ (none depends on g: Rademacher's −(2/q)diag(ggᵀ) has trace −(2/q)‖g‖²)
NORM_MATCH_DIRECTIONS = ("gaussian", "sphere", "rademacher")


def norm_inflation(q: int, d: int, directions: str = "gaussian") -> float:
    """κ = E‖Zg‖²/‖g‖² for q queries in dimension d: (q+d+1)/q (Gaussian), (q+d−1)/q (sphere of radius √d
    and Rademacher, whose directions all have ‖u‖² = d).

    Raises:
        InvalidValueError: q or d < 1, or an unknown law.
    """
    if q < 1 or d < 1:
        raise InvalidValueError(f"norm inflation needs q >= 1 and d >= 1, got q={q}, d={d}")
    if directions == "gaussian":
        return (q + d + 1) / q
    if directions in ("sphere", "rademacher"):
        # one query: E‖u uᵀg‖² = E[‖u‖²(uᵀg)²] = d‖g‖² when ‖u‖² = d always (sphere, Rademacher)
        return (q - 1 + d) / q
    raise InvalidValueError(f"unknown direction distribution {directions!r}; choose one of "
                            f"{', '.join(NORM_MATCH_DIRECTIONS)}")


def shaping_tau(q: int, d: int) -> float:
    """τ = d/(q+d+1): E[Z H Z]/κ = (1−τ)·H + τ·λ̄·I for Gaussian directions (docs/theory.md §5a)."""
    if q < 1 or d < 1:
        raise InvalidValueError(f"shaping tau needs q >= 1 and d >= 1, got q={q}, d={d}")
    return d / (q + d + 1)


# ------------------------------------------------------------------------------------------------ moments
#: the direction laws with a closed-form E[Z A Z]
SHAPING_DIRECTIONS = ("gaussian", "sphere", "rademacher")


def _check_qd(q: int, d: int) -> None:
    if q < 1 or d < 1:
        raise InvalidValueError(f"shaping moments need q >= 1 and d >= 1, got q={q}, d={d}")


def _fourth(d: int, directions: str) -> float:
    """c in the single-query moment E[u uᵀ A u uᵀ] = c·(2A + Tr(A)·I) (Rademacher also − 2 diag(A))."""
    if directions not in SHAPING_DIRECTIONS:
        raise InvalidValueError(f"unknown direction distribution {directions!r}; "
                                f"choose one of {', '.join(SHAPING_DIRECTIONS)}")
    # the sphere of radius √d has E‖u‖⁴ = d², not d(d+2): its fourth moment is the Gaussian one × d/(d+2)
    return d / (d + 2) if directions == "sphere" else 1.0


def shaping_moment(A, q: int, directions: str = "gaussian"):
    """E[Z A Z] for a symmetric matrix A (numpy), Z = (1/q) Σ_k u_k u_kᵀ, exact for the three laws.

    Gaussian: ((q+1)/q)·A + (1/q)·Tr(A)·I; sphere of radius √d: the single-query part 2A + Tr(A)·I times
    d/(d+2); Rademacher: the Gaussian value minus (2/q)·diag(A) (docs/theory.md §5, shaping moments).

    Theory: [docs/theory.md#shaping-moments][shaping-moments].
    """
    import numpy as np

    A = np.asarray(A, dtype=float)
    d = A.shape[0]
    _check_qd(q, d)
    c = _fourth(d, directions)
    out = ((q - 1) / q) * A + (c / q) * (2 * A + np.trace(A) * np.eye(d))
    if directions == "rademacher":
        out = out - (2.0 / q) * np.diag(np.diag(A))
    return out


def shaped_quadratic(gHg: float, gg: float, trace: float, q: int, d: int, directions: str = "gaussian",
                     g_diag_g: float | None = None) -> float:
    """gᵀ E[Z H Z] g = E[(Zg)ᵀ H (Zg)] from gᵀHg, ‖g‖², Tr H (and Σ g_i² H_ii for Rademacher).

    Raises:
        InvalidValueError: Rademacher without `g_diag_g`, or a bad q, d or law.

    Theory: [docs/theory.md#shaping-moments][shaping-moments].
    """
    _check_qd(q, d)
    c = _fourth(d, directions)
    out = ((q - 1) / q) * gHg + (c / q) * (2 * gHg + trace * gg)
    if directions == "rademacher":
        if g_diag_g is None:
            raise InvalidValueError("the Rademacher shaping moment needs sum_i g_i^2 H_ii (g_diag_g)")
        out -= (2.0 / q) * g_diag_g
    return out


def inflation(q: int, d: int, directions: str = "gaussian") -> float:
    """κ = E‖Zg‖²/‖g‖² for the three laws: (q+d+1)/q (Gaussian); (q+d−1)/q (sphere and Rademacher: ‖u‖² = d).

    Unlike `norm_inflation` (the norm-matching contract, which refuses Rademacher) this covers every law.

    Theory: [docs/theory.md#shaping-moments][shaping-moments].
    """
    _check_qd(q, d)
    if directions == "rademacher":
        return (q + d - 1) / q
    return norm_inflation(q, d, directions)


def shaped_curvature(H, q: int, directions: str = "gaussian"):
    """E[Z H Z]/κ: the expected Hessian seen by a norm-matched ZO step (Gaussian: (1−τ)H + τ·λ̄·I).

    Theory: [docs/theory.md#rise][rise].
    """
    import numpy as np

    H = np.asarray(H, dtype=float)
    return shaping_moment(H, q, directions) / inflation(q, H.shape[0], directions)


# ------------------------------------------------------------------------------------------------ forgetting
def forgetting_fo(lr: float, gr_dot_g: float, gHg: float) -> float:
    """Predicted one-step forgetting of the FO step −ηg: −η∇L_rᵀg + (η²/2) gᵀH_r g (docs/theory.md §5a).

    Theory: [docs/theory.md#rise][rise].
    """
    return -lr * gr_dot_g + 0.5 * lr * lr * gHg


def forgetting_zo(lr: float, gr_dot_g: float, gHg: float, gg: float, trace: float, q: int, d: int,
                  directions: str = "gaussian", g_diag_g: float | None = None) -> float:
    """Predicted E F of the norm-matched ZO step −η Zg/√κ: −(η/√κ)∇L_rᵀg + (η²/2) gᵀE[ZH_rZ]g/κ.

    Gaussian: the second-order part is (η²/2)[(1−τ)gᵀH_r g + τ λ̄_r ‖g‖²] (docs/theory.md §5a).

    Theory: [docs/theory.md#rise][rise].
    """
    import math

    k = inflation(q, d, directions)
    quad = shaped_quadratic(gHg, gg, trace, q, d, directions, g_diag_g) / k
    return -lr * gr_dot_g / math.sqrt(k) + 0.5 * lr * lr * quad


def forgetting_gap_linear(lr: float, gr_dot_g: float, q: int, d: int, directions: str = "gaussian") -> float:
    """The first-order part of F_FO − E F_ZO (norm-matched): −η ∇L_rᵀg (1 − 1/√κ). Exact given both
    gradients; the rest of the gap is the curvature part whose sign e_r decides (`forgetting_gap`).

    Theory: [docs/theory.md#rise][rise].
    """
    import math

    return -lr * gr_dot_g * (1.0 - 1.0 / math.sqrt(inflation(q, d, directions)))


def forgetting_gap(lr: float, gg: float, rho: float, lam_bar: float, q: int, d: int) -> float:
    """Second-order F_FO − E F_ZO = (η²/2)·τ·‖g‖²·e_r(g), e_r = ρ_r(g) − λ̄_r (Gaussian, norm-matched).

    Theory: [docs/theory.md#rise][rise].
    """
    return 0.5 * lr * lr * shaping_tau(q, d) * gg * (rho - lam_bar)


def rise_quadratic(block_gHg, block_gg, block_trace, block_dims, cross_scaled: float, q: int) -> float:
    """E[vᵀHv] of the RISE step (blockwise norm-matched Gaussian sketch, docs/theory.md §5a):
    Σ_b[(1−τ_b) g_bᵀH_bb g_b + τ_b λ̄_b ‖g_b‖²] + Σ_{b≠c} g_bᵀH_bc g_c/√(κ_bκ_c).

    Args:
        block_gHg, block_gg, block_trace, block_dims: per block b: g_bᵀH_bb g_b, ‖g_b‖², Tr H_bb, d_b.
        cross_scaled: ḡᵀHḡ with ḡ_b = g_b/√κ_b (all blocks; its diagonal blocks are removed here).

    Theory: [docs/theory.md#rise][rise].
    """
    diag, own = 0.0, 0.0
    for h, gg, tr, db in zip(block_gHg, block_gg, block_trace, block_dims):
        k = norm_inflation(q, int(db))
        tau = shaping_tau(q, int(db))
        diag += (1 - tau) * h + tau * (tr / db) * gg
        own += h / k
    return diag + (cross_scaled - own)


def forgetting_rise(lr: float, gr_dot_g_scaled: float, quad: float) -> float:
    """Predicted E F of the RISE step −ηv: −η Σ_b ∇L_r,bᵀg_b/√κ_b + (η²/2) E[vᵀH_r v] (`rise_quadratic`).

    Theory: [docs/theory.md#rise][rise].
    """
    return -lr * gr_dot_g_scaled + 0.5 * lr * lr * quad


# ------------------------------------------------------------------------------------------------ descent, flatness, bands
def zo_descent_lr(gHg: float, gg: float, trace: float, q: int, d: int, directions: str = "gaussian",
                  norm_match: bool = False, g_diag_g: float | None = None) -> float:
    """η_ZO(g): the largest step with expected descent of one ZO-GD step along Zg (Zg/√κ if `norm_match`).

    E[L(θ−ηZg)] − L(θ) = −η‖g‖² + (η²/2) gᵀE[ZHZ]g, so η_ZO = 2‖g‖²/gᵀE[ZHZ]g; Gaussian:
    2q/((q+1)ρ(g) + Tr H). Norm matching scales it by √κ. inf when the shaped curvature is ≤ 0.

    Theory: [docs/theory.md#rise][rise].
    """
    import math

    quad = shaped_quadratic(gHg, gg, trace, q, d, directions, g_diag_g)
    if not quad > 0:
        return math.inf
    out = 2.0 * gg / quad
    return out * math.sqrt(inflation(q, d, directions)) if norm_match else out


def flatness_linf(rho: float, trace: float) -> float:
    """Second-order mean loss increase at a random ℓ∞ corner θ + ρs, s ∈ {±1}^d: (ρ²/2)·Tr H.

    Theory: [docs/theory.md#hybrid-groups][hybrid-groups].
    """
    return 0.5 * rho * rho * trace


def flatness_l2(rho: float, trace: float, d: int) -> float:
    """Second-order mean loss increase at a random point of the ℓ2 sphere of radius ρ: (ρ²/2)·Tr H/d.

    Theory: [docs/theory.md#hybrid-groups][hybrid-groups].
    """
    return 0.5 * rho * rho * trace / d


def flatness_sam(rho: float, g_norm: float, rho_g: float) -> float:
    """Loss increase along the SAM direction θ + ρ g/‖g‖ to second order: ρ‖g‖ + (ρ²/2)·ρ(g).

    Theory: [docs/theory.md#hybrid-groups][hybrid-groups].
    """
    return rho * g_norm + 0.5 * rho * rho * rho_g


def zo_band_limit(lr: float, q: int, momentum: float = 0.0) -> float:
    """The ZO group's bound on Tr(H_ZZ): 2q(1−β)/η (docs/theory.md §5b).

    Theory: [docs/theory.md#hybrid-groups][hybrid-groups].
    """
    return 2.0 * q * (1.0 - momentum) / lr


def fo_band_limit(lr: float, momentum: float = 0.0) -> float:
    """The FO group's bound on λ_max(H_FF): 2(1+β)/η (docs/theory.md §5b).

    Theory: [docs/theory.md#hybrid-groups][hybrid-groups].
    """
    return 2.0 * (1.0 + momentum) / lr
