"""Result types shared by every curvature algorithm: a value, its uncertainty and what it cost."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .quadrature import probe_sums


@dataclass(frozen=True)
class Estimate:
    """One curvature estimate.

    ``value`` is a float (λ_max, a trace, a ratio) or an array (top-k eigenvalues, descending).
    ``error`` is the matching uncertainty: a Ritz-residual error bound for eigenvalues, one standard error
    for stochastic estimates. ``n_hvp`` counts the Hessian-vector products spent (the unit in which speed is
    compared with other tools). ``converged`` is False when an iterative method hit its iteration cap
    before reaching the requested tolerance — such a result is never returned silently as converged.
    ``extra`` carries what a caller may reuse: ``"vector"`` / ``"vectors"`` (flat torch tensors, for warm
    starts and deflation), ``"samples"`` (per-probe values), timings and method details.
    """

    value: float | np.ndarray
    error: float | np.ndarray
    n_hvp: int
    converged: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def rel_error(self) -> float | np.ndarray:
        """``error / |value|`` (inf where the value is 0)."""
        v = np.abs(np.asarray(self.value, dtype=float))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(v > 0, np.asarray(self.error, dtype=float) / np.where(v > 0, v, 1.0), np.inf)
        return float(r) if r.ndim == 0 else r

    def __repr__(self) -> str:  # keep tensors in `extra` out of the repr
        keys = ", ".join(sorted(self.extra))
        return (f"Estimate(value={self.value!r}, error={self.error!r}, n_hvp={self.n_hvp}, "
                f"converged={self.converged}, extra=[{keys}])")


@dataclass(frozen=True)
class Density:
    """Stochastic Lanczos quadrature of a spectrum.

    ``nodes`` and ``weights`` have shape (n_probes, n_steps): for each probe, the Ritz values of its
    Lanczos tridiagonal and the squared first components of their eigenvectors (each row sums to 1;
    rows of a Krylov space that closed early are padded with weight 0). ``density`` is the Gaussian-smoothed
    spectral density on ``grid``, normalised to integrate to 1 (multiply by ``dim`` for an eigenvalue
    count density). ``sigma`` is the smoothing width used.
    """

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    n_hvp: int
    dim: int = 0
    sigma: float = 0.0

    def trace_fn(self, f) -> tuple[float, float]:
        """(estimate, standard error) of Tr f(H) from these quadrature rules, f vectorised over arrays."""
        per_probe = probe_sums(self.nodes, self.weights, f, self.dim)
        n = per_probe.shape[0]
        se = float(per_probe.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
        return float(per_probe.mean()), se
