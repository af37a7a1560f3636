"""Bounds on S(η) from λ_max and the trace alone (docs/theory.md §2, "tractable bounds"), as an interval.

S(η) = Σ_{λ_i > 0} f(λ_i) with f convex and increasing on [0, pole), f(0) = 0 (`ms_term_function`). Given only
that the largest eigenvalue lies in [λ_lo, λ_hi] and the positive mass Tr H₊ = Σ_{λ>0} λ in [t_lo, t_hi]:

* lower: f(λ) ≥ f'(0)·λ for every mode, so S ≥ f(λ_max) + f'(0)(Tr H₊ − λ_max); that grows with λ_max
  (f' ≥ f'(0)), so S ≥ f(λ_lo) + f'(0)·max(0, t_lo − λ_lo) — the mass spread thin under one top mode;
* upper: f(λ)/λ grows with λ, so f(λ_i) ≤ λ_i·f(λ_max)/λ_max and S ≤ Tr H₊·f(λ_max)/λ_max
  ≤ t_hi·f(λ_hi)/λ_hi — the mass piled at the top (∞ once λ_hi reaches the per-mode limit).

The bracket is as good as its inputs: with a plain trace Tr H on an indefinite Hessian the positive mass
must be corrected by the negative one (Tr H₊ = Tr H + Σ|λ_{<0}|), which the caller supplies.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["s_bracket"]


def s_bracket(f: Callable[[np.ndarray], np.ndarray], lam_lo: float, lam_hi: float, tr_lo: float,
              tr_hi: float) -> tuple[float, float]:
    """[S_lo, S_hi] for any positive spectrum with λ_max ∈ [lam_lo, lam_hi] and Tr H₊ ∈ [tr_lo, tr_hi].

    Args:
        f: the per-mode term λ ↦ f(λ) (vectorised; 0 for λ ≤ 0, inf beyond the per-mode limit).
        lam_lo, lam_hi: bounds on the largest eigenvalue (lam_hi may be inf).
        tr_lo, tr_hi: bounds on the positive mass (tr_hi may be inf or NaN: then S_hi is inf).

    Returns:
        (S_lo, S_hi); NaN for a NaN λ bound.
    """
    if not (math.isfinite(lam_lo) and lam_hi == lam_hi):
        return math.nan, math.nan
    lam_lo = max(lam_lo, 0.0)
    h = 1e-9 * max(lam_hi if math.isfinite(lam_hi) else lam_lo, 1e-12)
    slope0 = float(f(np.array([h]))[0]) / h  # f'(0) (f convex: f(h)/h ≥ f'(0) by O(h))
    rest = max(0.0, tr_lo - lam_lo) if math.isfinite(tr_lo) else 0.0
    lo = float(f(np.array([lam_lo]))[0]) + slope0 * rest
    if not (math.isfinite(lam_hi) and math.isfinite(tr_hi)) or lam_hi <= 0:
        return lo, (math.inf if lam_hi > 0 or not math.isfinite(lam_hi) else 0.0)
    top = float(f(np.array([lam_hi]))[0])
    hi = max(tr_hi, lam_hi) * top / lam_hi if math.isfinite(top) else math.inf
    return lo, max(hi, lo)
