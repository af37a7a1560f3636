"""Stability theory of ZO and first-order optimizers on quadratics (docs/theory.md §2–3), numpy only.

The Monte-Carlo validation against the project's own optimizers lives in :mod:`eos_probe.theory.simulate`
(imported on demand: it needs torch).
"""
from __future__ import annotations

from .stability import (
    DIRECTIONS,
    OPTIMIZERS,
    ApproximationWarning,
    Band,
    Setting,
    Verdict,
    band,
    band_for,
    critical_lr,
    critical_lr_bounds,
    exact_critical_lr,
    moment_operator,
    ms_spectral_radius,
    ms_sum,
    ms_term_function,
    ms_terms,
    resolve,
    spectral_radius,
    verdict,
)
from .states import StabilityVerdict, classify, classify_row, is_indefinite

__all__ = [
    "DIRECTIONS", "OPTIMIZERS", "ApproximationWarning", "Band", "Setting", "Verdict", "band", "band_for",
    "critical_lr", "critical_lr_bounds", "exact_critical_lr", "moment_operator", "ms_spectral_radius", "ms_sum",
    "ms_term_function", "ms_terms", "resolve", "spectral_radius", "verdict", "StabilityVerdict", "classify",
    "classify_row", "is_indefinite",
]
