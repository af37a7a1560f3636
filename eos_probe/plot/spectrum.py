"""The spectral density panel: SLQ densities over training as a heat map (step × eigenvalue)."""
from __future__ import annotations

import numpy as np

from ..curvature.quadrature import gaussian_density
from ..errors import UserError
from ..run import Run
from .style import _edges


def density_grid(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-broadened SLQ density on `grid` for each probe step: (n_steps_logged, len(grid)).

    nodes/weights: (n, p, k); the weights of each probe vector are normalised to 1, probes averaged.
    """
    nodes = np.asarray(nodes, float)
    weights = np.nan_to_num(np.asarray(weights, float), nan=0.0)
    nodes = np.where(np.isfinite(nodes), nodes, 0.0)
    tot = weights.sum(-1, keepdims=True)
    w = np.divide(weights, tot, out=np.zeros_like(weights), where=tot > 0)
    return gaussian_density(nodes, w, np.asarray(grid, float), sigma).mean(1)


def draw_spectrum(ax, run: Run, name: str | None = None, colorbar: bool = True) -> None:
    """SLQ spectral density over training as a heat map (step × eigenvalue, log₁₀ density), with λ_max."""
    if len(run.probe) == 0 and not run.spectra_names:
        raise UserError(f"{run.path}: no probe data to plot --kind spectrum; train with --probe density")
    name = name or ("precond_density" if run.preconditioned and "precond_density" in run.spectra_names
                    else "density")
    if name not in run.spectra_names:
        raise UserError(f"{run.path}: no spectral density logged for --kind spectrum; train with --probe "
                        f"{'precond_density' if run.preconditioned else 'density'}")
    sp = run.spectra(name)
    steps, nodes, weights = sp["step"], sp["nodes"], sp["weights"]
    if len(steps) == 0:
        raise UserError(f"{run.path}: the spectrum {name!r} has no rows yet")
    valid = nodes[np.isfinite(nodes) & (np.nan_to_num(weights) > 0)]
    lo, hi = float(valid.min()), float(valid.max())
    pad = 0.05 * (hi - lo if hi > lo else max(abs(hi), 1.0))
    grid = np.linspace(lo - pad, hi + pad, 400)
    sigma = (grid[-1] - grid[0]) / 150.0
    dens = density_grid(nodes, weights, grid, sigma)
    logd = np.log10(np.maximum(dens, 1e-300))
    vmax = float(np.max(logd))
    vmin = vmax - 6.0
    edges = _edges(np.asarray(steps, float))
    mesh = ax.pcolormesh(edges, _edges(grid), np.clip(logd, vmin, vmax).T, cmap="magma", vmin=vmin, vmax=vmax,
                         shading="flat", rasterized=True)
    lam_col = "precond_lambda_max" if name.startswith("precond") else "lambda_max"
    if lam_col in run.probe:
        ax.plot(run.probe["step"], run.probe[lam_col], color="white", ls="--", lw=1.0,
                label=r"$\lambda_{\max}$ (Lanczos)")
        ax.legend(loc="lower right", labelcolor="white", frameon=True, facecolor="black", framealpha=0.5,
                  edgecolor="none")
    quantity = "P^{-1}H" if name.startswith("precond") else "H"
    ax.set_xlabel("step (updates)")
    ax.set_ylabel(f"eigenvalue of ${quantity}$")
    ax.set_title(f"spectral density of ${quantity}$ (SLQ) — {run.label()}")
    ax.grid(False)
    if colorbar:
        cb = ax.figure.colorbar(mesh, ax=ax, pad=0.02)
        cb.set_label(r"$\log_{10}$ density")
