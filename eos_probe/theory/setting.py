"""Optimizer settings as the stability formulas need them: `Setting`, `resolve` and input checks.

Which optimizers the theory covers, their default momentum and conventions come from the presets
(`eos_probe.presets`); this module only validates and fills them in. Numpy only.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InvalidValueError
from ..presets import DEFAULT_DIRECTIONS, OPTIONS, PRESETS, default

#: the presets with a spectral band (docs/theory.md §2–3): zeroth order first, as error messages list them.
#: Norm-matched presets are not listed: their band is their base preset's at η/√κ (`Setting.from_config`)
ZO_OPTIMIZERS = tuple(n for n, p in PRESETS.items() if p.has_band and p.zeroth_order and p.base is None)
FO_OPTIMIZERS = tuple(n for n, p in PRESETS.items() if p.has_band and not p.zeroth_order and p.base is None)
OPTIMIZERS = ZO_OPTIMIZERS + FO_OPTIMIZERS


RADEMACHER_WARNING = (
    "Rademacher directions: E[u u^T A u u^T] = 2A + tr(A) I - 2 diag(A) is not rotation invariant, so this "
    "band is approximate (it uses the sphere formula, or the Gaussian one when d is unknown; exact only for "
    "Gaussian or sphere directions)"
)
COMMUTING_WARNING = (
    "ZO-Adam band assumes the frozen preconditioner P commutes with H; when they do not, the commuting "
    "formula over-estimates lr* (docs/theory.md §3; docs/validation.md measured ~0.1% at commutator ratio "
    "r=0.03, 1.3-1.7% at r=0.13-0.15, 6.5-10% at r=0.25-0.32 on random problems; the size depends on the "
    "problem) - compare with the logged commutator_ratio"
)


class ApproximationWarning(UserWarning):
    """A stability formula was applied outside the setting where it is exact."""


@dataclass(frozen=True)
class Setting:
    """Validated optimizer hyper-parameters as the formulas need them (see :func:`resolve`).

    Attributes: `optimizer` (a preset with a band: `OPTIMIZERS`), `queries`, `momentum` (β, β1 for Adam),
    `momentum_style`, `directions`, `dim` (None when unknown) and `lr` (NaN unless built from a run config).
    """

    optimizer: str
    queries: int
    momentum: float
    momentum_style: str
    directions: str
    dim: int | None
    lr: float = math.nan

    @classmethod
    def from_config(cls, config: Mapping[str, Any], dim: int | None = None) -> "Setting":
        """The setting of a run's config (a `TrainConfig.to_dict()`, as stored in the run file).

        Adam runs use the EMA convention (the only one that applies to them); presets without momentum
        ignore a stored one; CoCD presets, which have no spectral band, stand in as gd (their classical
        λ_max line; see `band_for`). A missing lr is the preset's default.

        Args:
            config: the run's settings (``optimizer``, ``lr``, ``queries``, ``momentum``, ...).
            dim: the number of parameters d (needed for sphere directions).

        Returns:
            The validated :class:`Setting`, with ``lr`` set.

        Raises:
            InvalidValueError: settings the theory does not cover (see :func:`resolve`).
        """
        name = config.get("optimizer", "zo-gd")
        p = PRESETS.get(name)
        if p is not None and not p.has_band:  # no spectral band: the classical GD line stands in
            name, p = p.fo_twin, PRESETS[p.fo_twin]
        momentum = config.get("momentum")
        style = config.get("momentum_style") or default("momentum_style")
        if p is not None and not p.takes_momentum:
            momentum, style = None, None
        elif p is not None and p.preconditioned:
            style = None
        lr = config.get("lr")
        if lr is None:  # a config as written, before validation filled the per-optimizer default
            lr = p.lr if p is not None else math.nan
        queries = int(config.get("queries", default("queries")))
        directions = config.get("directions", DEFAULT_DIRECTIONS)
        if p is not None and (p.norm_match or config.get("norm_match")):
            lr = _norm_matched_lr(float(lr), queries, dim, directions)
            name = p.base or name
        s = resolve(name, queries, momentum, style, directions, dim)
        return replace(s, lr=float(lr))

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the theory functions (`band`, `ms_terms`, `verdict`, ...) after lr and
        optimizer: ``queries``, ``momentum``, ``momentum_style``, ``directions``, ``dim``."""
        return {"queries": self.queries, "momentum": self.momentum, "momentum_style": self.momentum_style,
                "directions": self.directions, "dim": self.dim}

    @property
    def zeroth_order(self) -> bool:
        return self.optimizer in ZO_OPTIMIZERS

    @property
    def preconditioned(self) -> bool:
        return PRESETS[self.optimizer].preconditioned

    @property
    def lr_factor(self) -> float:
        """``η_eff / η``: 1 for heavy ball, ``1 − β`` for EMA momentum (and Adam)."""
        return 1.0 - self.momentum if self.momentum_style == "ema" else 1.0

    @property
    def noise_coefficients(self) -> tuple[float, float]:
        """``(a, b)`` with ``E[ZAZ] − A = (a·A + b·tr(A)·I)/q``.

        Rademacher directions (``‖u‖² = d`` exactly, like the sphere) borrow the sphere values when ``dim``
        is known, else the Gaussian ones (the d → ∞ limit); either is an approximation.

        Theory: [docs/theory.md#zo-estimator][zo-estimator].
        """
        if self.directions == "sphere" or (self.directions == "rademacher" and self.dim is not None):
            kappa = self.dim / (self.dim + 2.0)
            return 2.0 * kappa - 1.0, kappa
        return 1.0, 1.0

    @property
    def x_limit(self) -> float:
        """Largest admissible ``x = η_eff λ`` for one mode on its own.

        First order: ``2(1+β)`` (the deterministic heavy-ball mode). Zeroth order: the zero of ``D``,
        ``x₀ = 2(1−β) / ((1−β)/(1+β) + a/q)`` (Gaussian, q = 1: ``1 − β²``), capped by ``2(1+β)``.
        """
        beta = self.momentum
        det = 2.0 * (1.0 + beta)
        if not self.zeroth_order:
            return det
        a, _ = self.noise_coefficients
        slope = (1.0 - beta) / (1.0 + beta) + a / self.queries
        return min(det, 2.0 * (1.0 - beta) / slope) if slope > 0 else det

    @property
    def quantity(self) -> str:
        """The matrix whose spectrum the formulas read."""
        return "P^-1 H" if self.preconditioned else "H"

    @property
    def convention(self) -> str:
        """One line saying which update rule and estimator the numbers are for."""
        beta = self.momentum
        if not PRESETS[self.optimizer].takes_momentum:
            rule = "gradient descent: theta <- theta - lr g"
        elif self.preconditioned:
            rule = (f"Adam as preconditioned EMA momentum with P frozen: m <- b1 m + (1-b1) g, "
                    f"theta <- theta - lr P^-1 m, b1={beta:g}; spectrum of P^-1 H")
        elif self.momentum_style == "ema":
            rule = (f"EMA momentum: m <- beta m + (1-beta) g, theta <- theta - lr m, beta={beta:g} "
                    f"(heavy ball with lr' = lr(1-beta))")
        else:
            rule = (f"heavy ball (torch.optim.SGD): m <- beta m + g, theta <- theta - lr m, beta={beta:g}")
        if not self.zeroth_order:
            return f"first order, {rule}"
        dirs = self.directions + (f" (d={self.dim})" if self.directions != "gaussian" and self.dim else "")
        return f"zeroth order, q={self.queries} two-point queries, {dirs} directions; {rule}"

    def warnings(self) -> tuple[str, ...]:
        out = []
        if self.zeroth_order and self.directions == "rademacher":
            out.append(RADEMACHER_WARNING)
        if self.optimizer == "zo-adam":
            out.append(COMMUTING_WARNING)
        return tuple(out)


def _norm_matched_lr(lr: float, queries: int, dim: int | None, directions: str) -> float:
    """η/√κ: a norm-matched ZO step v = g_ZO/√κ is the plain ZO step at this effective step size."""
    from .shaping import norm_inflation

    if dim is None:
        raise InvalidValueError("a norm-matched optimizer's band needs the dimension d (kappa = (q+d+1)/q); pass dim")
    return lr / math.sqrt(norm_inflation(queries, dim, directions))


def resolve(optimizer: str, queries: int = 1, momentum: float | None = None,
            momentum_style: str | None = None, directions: str = DEFAULT_DIRECTIONS,
            dim: int | None = None) -> Setting:
    """Validate hyper-parameters and fill preset defaults; every mistake is one :class:`InvalidValueError` line.

    ``momentum=None`` takes the preset default (0 for gd, 0.9 for gdm and Adam's β1);
    ``momentum_style=None`` means heavy ball for gdm and EMA for Adam (Adam admits only EMA).
    """
    if optimizer not in OPTIMIZERS:
        raise InvalidValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    p = PRESETS[optimizer]
    OPTIONS["directions"].check(directions)
    OPTIONS["queries"].check(int(queries) if isinstance(queries, np.integer) else queries)
    beta = p.momentum if momentum is None else OPTIONS["momentum"].check(float(momentum))
    if not p.takes_momentum and beta != 0.0:  # worded for the formulas (the trainer's: Preset.check_momentum)
        raise InvalidValueError(f"{optimizer} has no momentum (got {beta:g}); use {optimizer}m for momentum")
    if momentum_style is None:
        momentum_style = p.momentum_style or default("momentum_style")
    OPTIONS["momentum_style"].check(momentum_style)
    if p.preconditioned and momentum_style != "ema":
        raise InvalidValueError(f"{optimizer} uses EMA momentum (m <- b1 m + (1-b1) g); drop momentum_style=heavy_ball")
    if directions == "sphere" and optimizer in ZO_OPTIMIZERS and dim is None:
        raise InvalidValueError("sphere directions need the dimension d for the d/(d+2) factor; pass dim (CLI: --dim)")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1):
        raise InvalidValueError(f"dim must be a positive integer, got {dim!r}")
    return Setting(optimizer, int(queries), beta, momentum_style, directions,
                   None if dim is None else int(dim))


def _check_lr(lr: float) -> float:
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise InvalidValueError(f"learning rate must be a number, got {lr!r}") from None
    if not (math.isfinite(lr) and lr > 0):
        raise InvalidValueError(f"learning rate must be positive and finite, got {lr!r}")
    return lr


def _spectrum(spectrum: Sequence[float] | np.ndarray, weights=None, negative: str = "unstable"
              ) -> tuple[np.ndarray, np.ndarray]:
    lam = np.asarray(spectrum, dtype=float).ravel()
    if lam.size == 0:
        raise InvalidValueError("the spectrum is empty; pass the eigenvalues of H (or of P^-1 H for Adam)")
    if not np.all(np.isfinite(lam)):
        raise InvalidValueError("the spectrum contains NaN or inf; pass finite eigenvalues")
    w = np.ones_like(lam) if weights is None else np.asarray(weights, dtype=float).ravel()
    if w.shape != lam.shape:
        raise InvalidValueError(f"weights have {w.size} entries but the spectrum has {lam.size}")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
        raise InvalidValueError("weights must be finite and non-negative (SLQ weights scaled to sum to d)")
    if negative not in ("unstable", "ignore"):
        raise InvalidValueError(f"negative must be 'unstable' or 'ignore', got {negative!r}")
    if negative == "ignore":
        keep = lam >= 0
        lam, w = lam[keep], w[keep]
    return lam, w


def _warn(setting: Setting) -> None:
    if setting.zeroth_order and setting.directions == "rademacher":
        warnings.warn(RADEMACHER_WARNING, ApproximationWarning, stacklevel=3)


def _setting_for_spectrum(optimizer, queries, momentum, momentum_style, directions, dim, lam, w) -> Setting:
    if dim is None and directions in ("sphere", "rademacher"):
        dim = int(round(float(np.sum(w)))) if w.size else None
    return resolve(optimizer, queries, momentum, momentum_style, directions, dim)

