"""Stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017): spectral density and Tr f(H).

For a probe z with ‖z‖² = d, zᵀ f(H) z ≈ d · Σ_k τ_k f(θ_k), where θ_k are the Ritz values of the
n_steps-step Lanczos tridiagonal started at z/‖z‖ and τ_k the squared first components of its eigenvectors
(a Gauss quadrature rule for the spectral measure seen from z). Averaging over Rademacher probes gives an
unbiased-in-the-probe estimate of Tr f(H); its standard error over probes is reported (the quadrature error
is negligible for smooth f once n_steps resolves the spectrum's edges).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from ..errors import InvalidValueError
from ._probes import default_generator, rademacher
from .estimate import Density, Estimate
from .lanczos import lanczos_tridiagonal
from .operators import CurvatureOperator
from .quadrature import gaussian_density, probe_sums

__all__ = ["spectral_density", "trace_fn", "quadrature"]


def quadrature(op: CurvatureOperator, n_probes: int, n_steps: int,
               generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(nodes, weights, n_hvp), both arrays (n_probes, n_steps); rows shorter than n_steps padded with weight 0."""
    if n_probes < 1 or n_steps < 1:
        raise InvalidValueError(f"n_probes and n_steps must be positive, got {n_probes} and {n_steps}")
    gen = default_generator(generator)
    n0 = op.n_hvp
    Z = rademacher(n_probes, op.dim, gen, op.dtype, op.device)
    runs = lanczos_tridiagonal(op, Z, n_steps)
    width = min(n_steps, op.dim)
    nodes, weights = gauss_rules(runs, width)
    return nodes, weights, op.n_hvp - n0


def gauss_rules(runs, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature (nodes, weights) of each Lanczos tridiagonal (a, b), padded to `width` columns.

    The nodes are the Ritz values, the weights the squared first components of their eigenvectors; padding
    repeats the first node with weight 0 (a value every f is defined at)."""
    nodes = np.zeros((len(runs), width))
    weights = np.zeros((len(runs), width))
    for i, (a, b) in enumerate(runs):
        if a.shape[0] == 1:
            theta, S = a.copy(), np.ones((1, 1))
        else:
            theta, S = eigh_tridiagonal(a, b)
        m = theta.shape[0]
        nodes[i, :m] = theta
        nodes[i, m:] = theta[0]
        weights[i, :m] = S[0, :] ** 2
    return nodes, weights


def spectral_density(op: CurvatureOperator, n_probes: int = 4, n_steps: int = 40,
                     generator: torch.Generator | None = None, grid: np.ndarray | int | None = None,
                     sigma: float | None = None) -> Density:
    """SLQ nodes and weights, and a Gaussian-smoothed density on ``grid`` (array, or a number of points).

    Default grid: 512 points spanning the nodes ± 5σ; default σ: 1% of the node range.

    Theory: [docs/theory.md#metric-density][metric-density].
    """
    nodes, weights, n_hvp = quadrature(op, n_probes, n_steps, generator)
    lo, hi = float(nodes.min()), float(nodes.max())
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    sigma = float(sigma) if sigma is not None else 0.01 * span
    if not sigma > 0:
        raise InvalidValueError(f"sigma must be positive, got {sigma}")
    if grid is None or isinstance(grid, (int, np.integer)):
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(grid or 512))
    grid = np.asarray(grid, dtype=float)
    density = gaussian_density(nodes, weights, grid, sigma).mean(axis=0)
    return Density(nodes=nodes, weights=weights, grid=grid, density=density, n_hvp=n_hvp, dim=op.dim, sigma=sigma)


def trace_fn(op: CurvatureOperator, f: Callable[[np.ndarray], np.ndarray], n_probes: int = 8, n_steps: int = 40,
             generator: torch.Generator | None = None) -> Estimate:
    """SLQ estimate of Tr f(op) with its standard error over probes; f must accept numpy arrays.

    ``extra``: "nodes", "weights" (reusable for other f via ``Density.trace_fn``), "samples".

    Theory: [docs/theory.md#metric-density][metric-density].
    """
    if n_probes < 2:
        raise InvalidValueError(f"trace_fn needs at least 2 probes for a standard error, got {n_probes}")
    nodes, weights, n_hvp = quadrature(op, n_probes, n_steps, generator)
    per_probe = probe_sums(nodes, weights, f, op.dim)
    se = float(per_probe.std(ddof=1) / np.sqrt(n_probes))
    return Estimate(value=float(per_probe.mean()), error=se, n_hvp=n_hvp,
                    extra={"nodes": nodes, "weights": weights, "samples": per_probe})
