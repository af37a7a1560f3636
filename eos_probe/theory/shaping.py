"""Shaping moments of the ZO estimator Z g, Z = (1/q) Σ_k u_k u_kᵀ (docs/theory.md §5).

For symmetric A: E[Z A Z] = ((q+1)/q)·A + (1/q)·Tr(A)·I for Gaussian u (exact); the sphere of radius √d
multiplies the fourth-moment part by d/(d+2); Rademacher subtracts (2/q)·diag(A). The norm inflation
κ = E‖Zg‖²/‖g‖² is what a norm-matched step divides by (as √κ) so that E‖v‖² = ‖g‖².
"""
from __future__ import annotations

from ..errors import InvalidValueError

#: direction laws whose κ does not depend on g (Rademacher's does: it subtracts (2/q)Σg_i⁴/‖g‖⁴)
NORM_MATCH_DIRECTIONS = ("gaussian", "sphere")


def norm_inflation(q: int, d: int, directions: str = "gaussian") -> float:
    """κ = E‖Zg‖²/‖g‖² for q queries in dimension d: (q+d+1)/q (Gaussian), (q+d−1)/q (sphere of radius √d).

    Raises:
        InvalidValueError: q or d < 1, or a law without a g-independent κ (rademacher).
    """
    if q < 1 or d < 1:
        raise InvalidValueError(f"norm inflation needs q >= 1 and d >= 1, got q={q}, d={d}")
    if directions == "gaussian":
        return (q + d + 1) / q
    if directions == "sphere":
        # sphere fourth moment: d/(d+2)·(2A + Tr(A) I), so the single-query part is d/(d+2)·(2 + d) = d
        return (q - 1 + d) / q
    raise InvalidValueError(f"norm matching needs directions in {', '.join(NORM_MATCH_DIRECTIONS)} "
                            f"(κ of {directions!r} depends on g), got {directions!r}")


def shaping_tau(q: int, d: int) -> float:
    """τ = d/(q+d+1): E[Z H Z]/κ = (1−τ)·H + τ·λ̄·I for Gaussian directions (docs/theory.md §5a)."""
    if q < 1 or d < 1:
        raise InvalidValueError(f"shaping tau needs q >= 1 and d >= 1, got q={q}, d={d}")
    return d / (q + d + 1)
