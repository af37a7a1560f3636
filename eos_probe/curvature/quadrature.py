"""Arithmetic on SLQ quadrature rules (nodes, weights per probe), shared by the curvature code and the plots.

A leaf module (numpy only), so result types (`estimate.Density`) and plots can use it without importing
the Lanczos machinery.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["probe_sums", "gaussian_density"]


def probe_sums(nodes: np.ndarray, weights: np.ndarray, f: Callable[[np.ndarray], np.ndarray],
               scale: float | np.ndarray) -> np.ndarray:
    """Per-probe SLQ estimates of Tr f(A): ``scale · Σ_k w_k f(node_k)`` for each row.

    Args:
        nodes: (p, s) Ritz values of each probe's tridiagonal.
        weights: (p, s) Gauss weights; padding has weight 0 and contributes nothing even where f is not
            finite there.
        f: vectorised over numpy arrays.
        scale: the probe's squared norm: ``dim`` for Rademacher probes, or a (p,) array.

    Returns:
        (p,) float array, one sample per probe.
    """
    with np.errstate(invalid="ignore"):
        vals = np.asarray(f(nodes), dtype=float)
        return scale * np.where(weights > 0, weights * vals, 0.0).sum(axis=1)


def gaussian_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-broadened density of each quadrature rule on ``grid``: Σ_k w_k N(x; node_k, σ²).

    Args:
        nodes: (..., s) Ritz values of each rule (the last axis is summed over).
        weights: (..., s) their Gauss weights.
        grid: (G,) evaluation points.
        sigma: the broadening width (> 0).

    Returns:
        (..., G) densities, one per rule (average over probes yourself).
    """
    kern = np.exp(-0.5 * ((grid - nodes[..., None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return (weights[..., None] * kern).sum(axis=-2)
