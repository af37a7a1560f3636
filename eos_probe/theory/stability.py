"""Linear (mean-square) stability of ZO and first-order optimizers on a quadratic — docs/theory.md §2–3.

Everything here is numpy/scipy only and exact for the model ``L = ½ θᵀHθ``.

Notation. ``x_i = η_eff λ_i`` where ``η_eff = η`` for heavy ball (``m ← βm + g, θ ← θ − ηm``) and
``η_eff = η(1−β)`` for EMA momentum (``m ← βm + (1−β)g``), which is heavy ball with ``η' = η(1−β)``.
ZO-GD is heavy ball with ``β = 0``; ZO-Adam with a frozen preconditioner ``P`` is EMA momentum on the
spectrum of ``P⁻¹H`` (exact when ``P`` commutes with ``H``).

For a ZO step with ``q`` queries the estimate on a quadratic is ``g = Z∇L`` with ``Z = (1/q)Σ u_k u_kᵀ`` and
``E[ZAZ] − A = (1/q)(a·A + b·tr(A) I)``; Gaussian directions give ``a = b = 1`` (from
``E[u uᵀ A u uᵀ] = 2A + tr(A) I``), directions uniform on the sphere of radius √d give
``a = 2κ − 1, b = κ`` with ``κ = d/(d+2)``. Rademacher directions are not rotation invariant
(``E[u uᵀ A u uᵀ] = 2A + tr(A) I − 2 diag(A)``); the spectral formulas then borrow the sphere coefficients
(both have ``‖u‖² = d``), which the dense operator shows to be within ~0.5% of the exact η* when H's
eigenvectors are delocalised and up to ~6% conservative (d ≥ 8) when they are coordinate axes; a warning
says the result is approximate.

The mean-square condition (all modes stable and a rank-one coupling) is

    S(η) = Σ_i (b x_i / q) / D_i < 1,   D_i = (1−β)(2 + 2β − x_i)/(1+β) − a x_i / q > 0,

which for Gaussian directions is docs/theory.md §2 verbatim.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import brentq

from ..errors import UserError

ZO_OPTIMIZERS = ("zo-gd", "zo-gdm", "zo-adam")
FO_OPTIMIZERS = ("gd", "gdm", "adam")
OPTIMIZERS = ZO_OPTIMIZERS + FO_OPTIMIZERS
DIRECTIONS = ("gaussian", "sphere", "rademacher")
MOMENTUM_STYLES = ("heavy_ball", "ema")

#: momentum used when the caller passes ``momentum=None``
DEFAULT_MOMENTUM = {"zo-gd": 0.0, "gd": 0.0, "zo-gdm": 0.9, "gdm": 0.9, "zo-adam": 0.9, "adam": 0.9}

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
    """Validated optimizer hyper-parameters as the formulas need them (see :func:`resolve`)."""

    optimizer: str
    queries: int
    momentum: float
    momentum_style: str
    directions: str
    dim: int | None

    @property
    def zeroth_order(self) -> bool:
        return self.optimizer in ZO_OPTIMIZERS

    @property
    def preconditioned(self) -> bool:
        return self.optimizer.endswith("adam")

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
        if self.optimizer in ("gd", "zo-gd"):
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


def resolve(optimizer: str, queries: int = 1, momentum: float | None = None,
            momentum_style: str | None = None, directions: str = "gaussian",
            dim: int | None = None) -> Setting:
    """Validate hyper-parameters and fill preset defaults; every mistake is one :class:`UserError` line.

    ``momentum=None`` takes the preset default (0 for gd, 0.9 for gdm and Adam's β1);
    ``momentum_style=None`` means heavy ball for gdm and EMA for Adam (Adam admits only EMA).
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if directions not in DIRECTIONS:
        raise UserError(f"unknown directions {directions!r}; choose one of {', '.join(DIRECTIONS)}")
    if isinstance(queries, bool) or not isinstance(queries, (int, np.integer)) or queries < 1:
        raise UserError(f"queries must be a positive integer, got {queries!r}")
    beta = DEFAULT_MOMENTUM[optimizer] if momentum is None else float(momentum)
    if not (math.isfinite(beta) and 0.0 <= beta < 1.0):
        raise UserError(f"momentum must lie in [0, 1), got {momentum!r}")
    base = optimizer.removeprefix("zo-")
    if base == "gd" and beta != 0.0:
        raise UserError(f"{optimizer} has no momentum (got {beta:g}); use {optimizer}m for momentum")
    if momentum_style is None:
        momentum_style = "ema" if base == "adam" else "heavy_ball"
    if momentum_style not in MOMENTUM_STYLES:
        raise UserError(f"unknown momentum style {momentum_style!r}; choose heavy_ball or ema")
    if base == "adam" and momentum_style != "ema":
        raise UserError(f"{optimizer} uses EMA momentum (m <- b1 m + (1-b1) g); drop momentum_style=heavy_ball")
    if directions == "sphere" and optimizer in ZO_OPTIMIZERS and dim is None:
        raise UserError("sphere directions need the dimension d for the d/(d+2) factor; pass dim (CLI: --dim)")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1):
        raise UserError(f"dim must be a positive integer, got {dim!r}")
    return Setting(optimizer, int(queries), beta, momentum_style, directions,
                   None if dim is None else int(dim))


def _check_lr(lr: float) -> float:
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise UserError(f"learning rate must be a number, got {lr!r}") from None
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"learning rate must be positive and finite, got {lr!r}")
    return lr


def _spectrum(spectrum: Sequence[float] | np.ndarray, weights=None, negative: str = "unstable"
              ) -> tuple[np.ndarray, np.ndarray]:
    lam = np.asarray(spectrum, dtype=float).ravel()
    if lam.size == 0:
        raise UserError("the spectrum is empty; pass the eigenvalues of H (or of P^-1 H for Adam)")
    if not np.all(np.isfinite(lam)):
        raise UserError("the spectrum contains NaN or inf; pass finite eigenvalues")
    w = np.ones_like(lam) if weights is None else np.asarray(weights, dtype=float).ravel()
    if w.shape != lam.shape:
        raise UserError(f"weights have {w.size} entries but the spectrum has {lam.size}")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
        raise UserError("weights must be finite and non-negative (SLQ weights scaled to sum to d)")
    if negative not in ("unstable", "ignore"):
        raise UserError(f"negative must be 'unstable' or 'ignore', got {negative!r}")
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


def ms_terms(eigenvalues: np.ndarray | float, lr: float, optimizer: str, queries: int = 1,
             momentum: float | None = None, momentum_style: str | None = None,
             directions: str = "gaussian", dim: int | None = None) -> np.ndarray:
    """Per-mode terms f(λ) of S(η) = Σ_i f(λ_i) = Tr f(H); inf where a mode is unstable on its own.

    Zeroth order: ``f(λ) = (b x/q) / D(x)`` with ``x = η_eff λ`` and
    ``D(x) = (1−β)(2+2β−x)/(1+β) − a x/q``; ``f = inf`` when ``x < 0``, ``D ≤ 0`` or ``x ≥ 2(1+β)``.
    First order (no noise, no coupling): ``f(λ) = x / (2(1+β))`` while ``0 ≤ x < 2(1+β)``, else inf,
    so that ``max_i f(λ_i) < 1`` is the classical condition.

    Vectorised over ``eigenvalues``: the function SLQ needs for ``Tr f(H)``.

    Theory: [docs/theory.md#ms-sum][ms-sum].
    """
    s = resolve(optimizer, queries, momentum, momentum_style, directions, dim)
    _warn(s)
    return _terms(np.asarray(eigenvalues, dtype=float), _check_lr(lr), s)


def _terms(lam: np.ndarray, lr: float, s: Setting) -> np.ndarray:
    beta = s.momentum
    x = lr * s.lr_factor * lam
    with np.errstate(divide="ignore", invalid="ignore"):
        if s.zeroth_order:
            a, b = s.noise_coefficients
            d0 = (1.0 - beta) * (2.0 + 2.0 * beta - x) / (1.0 + beta)
            d = d0 - a * x / s.queries
            out = (b * x / s.queries) / d
            bad = (x < 0) | (d <= 0) | (d0 <= 0)
        else:
            out = x / (2.0 * (1.0 + beta))
            bad = (x < 0) | (out >= 1.0)
    return np.where(bad, np.inf, out)


def ms_sum(spectrum: Sequence[float] | np.ndarray, lr: float, optimizer: str, queries: int = 1,
           momentum: float | None = None, momentum_style: str | None = None, *,
           directions: str = "gaussian", dim: int | None = None, weights=None,
           negative: str = "unstable") -> float:
    """The exact mean-square stability sum S(η) (docs/theory.md §2); the iterates are stable iff S < 1.

    Zeroth order (Gaussian directions, heavy ball; ZO-GD is β = 0)::

        S(η) = Σ_i (η λ_i / q) / D_i,   D_i = (1−β)(2 + 2β − ηλ_i)/(1+β) − ηλ_i/q

    EMA momentum replaces η by η(1−β). ``zo-adam`` reads ``spectrum`` as the eigenvalues of ``P⁻¹H``
    (EMA convention with β = β1, exact when P commutes with H). Sphere directions use
    ``a = (d−2)/(d+2), b = d/(d+2)`` in ``S = Σ (b x_i/q)/(D⁰_i − a x_i/q)``; ``dim`` defaults to the
    number of eigenvalues (or the sum of ``weights``).

    Returns ``inf`` whenever some ``D_i ≤ 0`` or a mode is unstable on its own (``ηλ`` outside the
    admissible range), because there the finite sum is meaningless (it can drop below 1 while a mode
    diverges). Zero eigenvalues contribute 0 (their θ-component is a neutral random walk).
    First-order presets return ``η_eff λ_max / (2(1+β))`` (inf once ≥ 1): the classical edge,
    ``λ_max < 2/η`` (GD), ``2(1+β)/η`` (heavy ball), ``2(1+β)/((1−β)η)`` (EMA, Adam on ``P⁻¹H``).

    ``weights`` turns the sum into a quadrature ``Σ w_i f(λ_i)`` (SLQ nodes with weights summing to d).
    ``negative='ignore'`` drops negative eigenvalues (descent directions of an indefinite Hessian)
    instead of declaring the iterates unstable.

    Theory: [docs/theory.md#ms-sum][ms-sum].
    """
    lam, w = _spectrum(spectrum, weights, negative)
    s = _setting_for_spectrum(optimizer, queries, momentum, momentum_style, directions, dim, lam, w)
    _warn(s)
    return _sum(lam, w, _check_lr(lr), s)


def _sum(lam: np.ndarray, w: np.ndarray, lr: float, s: Setting) -> float:
    t = _terms(lam, lr, s)
    if np.any(np.isinf(t) & (w > 0)):
        return math.inf
    t = np.where(w > 0, t, 0.0)
    return float(np.max(t, initial=0.0)) if not s.zeroth_order else float(np.dot(w, t))


def critical_lr(spectrum: Sequence[float] | np.ndarray, optimizer: str, queries: int = 1,
                momentum: float | None = None, momentum_style: str | None = None, *,
                directions: str = "gaussian", dim: int | None = None, weights=None,
                negative: str = "unstable") -> float:
    """The largest stable step size η* = sup{η : S(η) < 1} (``inf`` if the spectrum has no positive part).

    Zeroth order: S is increasing on the admissible range ``η_eff λ_max ∈ (0, x₀)``,
    ``x₀ = 2(1−β)/((1−β)/(1+β) + a/q)`` (Gaussian, q = 1: ``x₀ = 1 − β²``; β = 0: ``2q/(q+1)``),
    and ``S → ∞`` at its right end, so η* is the unique root of ``S(η) = 1`` there (scipy ``brentq``).
    First order: ``η* = 2(1+β) / (λ_max · η_eff/η)``. A negative eigenvalue gives ``η* = 0`` unless
    ``negative='ignore'``.

    Theory: [docs/theory.md#ms-sum][ms-sum].
    """
    lam, w = _spectrum(spectrum, weights, negative)
    s = _setting_for_spectrum(optimizer, queries, momentum, momentum_style, directions, dim, lam, w)
    _warn(s)
    return _critical(lam, w, s)


def _critical(lam: np.ndarray, w: np.ndarray, s: Setting) -> float:
    active = w > 0
    lam, w = lam[active], w[active]
    if np.any(lam < 0):
        return 0.0
    lmax = float(np.max(lam, initial=0.0))
    if lmax == 0.0:
        return math.inf
    upper = s.x_limit / (s.lr_factor * lmax)  # S = inf from here on
    if not s.zeroth_order:
        return upper

    def h(eta: float) -> float:
        # S/(1+S) − ½ is finite on the closed interval (S = inf maps to ½) and has the same root as S − 1
        if eta >= upper:
            return 0.5
        val = _sum(lam, w, eta, s)
        return 0.5 if math.isinf(val) else val / (1.0 + val) - 0.5

    return brentq(h, 0.0, upper, xtol=1e-15 * upper, rtol=4 * np.finfo(float).eps, maxiter=500)


@dataclass(frozen=True)
class Band:
    """Thresholds to draw against measured curvature for one optimizer and step size.

    Zeroth order (``kind='mean-square'``), with ``T = threshold`` and ``c``:
    necessary ``Tr(·) < T``; sufficient ``Tr(·) + c·λ_max(·) < T``; and, per mode,
    ``λ_max(·) < lambda_max_limit``. ``T = 2q(1−β)/(b·η_eff)`` and
    ``c = (q(1−β)/(1+β) + a)/b``, i.e. Gaussian heavy ball ``T = 2q(1−β)/η``,
    ``c = 1 + q(1−β)/(1+β)``; EMA and ZO-Adam ``T = 2q/η`` with the same c (β = β1).
    First order (``kind='classical'``): ``λ_max(·) < T`` and ``c is None``.
    ``quantity`` names what T bounds, e.g. ``"Tr(H)"``, ``"Tr(P^-1 H)"``, ``"lambda_max(H)"``.
    """

    optimizer: str
    lr: float
    kind: str
    threshold: float
    c: float | None
    lambda_max_limit: float
    quantity: str
    lambda_max_quantity: str
    convention: str
    queries: int
    momentum: float
    momentum_style: str
    directions: str
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def necessary(self, trace: float) -> bool:
        """Whether the necessary bound ``Tr < T`` holds (first order: always True; use ``sufficient``)."""
        return self.kind == "classical" or trace < self.threshold

    def sufficient(self, trace: float, lambda_max: float) -> bool:
        """Whether the sufficient bound holds (``Tr + cλ_max < T``; first order: ``λ_max < T``)."""
        if self.kind == "classical":
            return lambda_max < self.threshold
        return trace + self.c * lambda_max < self.threshold and lambda_max < self.lambda_max_limit

    def as_dict(self) -> dict:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d


def band(lr: float, optimizer: str, queries: int = 1, momentum: float | None = None,
         momentum_style: str | None = None, *, directions: str = "gaussian",
         dim: int | None = None) -> Band:
    """Threshold T and constant c of the mean-square band (docs/theory.md §2–3) as a frozen :class:`Band`.

    ZO-GD / heavy-ball ZO-GDM: ``T = 2q(1−β)/η``, ``c = 1 + q(1−β)/(1+β)`` (q = 1, β = 0: c = 2).
    EMA momentum and ZO-Adam (on ``P⁻¹H``, β = β1): ``T = 2q/η``, same c. Sphere directions divide T by
    ``b = d/(d+2)`` and use ``c = (q(1−β)/(1+β) + (d−2)/(d+2))/b``. The necessary bound ``Tr < T`` and the
    sufficient bound ``Tr + cλ_max < T`` follow from ``2(1−β) − x_max((1−β)/(1+β) + a/q) ≤ D_i ≤ 2(1−β)``.
    First-order presets return the classical λ_max threshold ``2/η``, ``2(1+β)/η``, ``2(1+β)/((1−β)η)``.

    Theory: [docs/theory.md#ms-bounds][ms-bounds].
    """
    lr = _check_lr(lr)
    s = resolve(optimizer, queries, momentum, momentum_style, directions, dim)
    _warn(s)
    eff = lr * s.lr_factor
    lam_name = f"lambda_max({s.quantity})"
    common = dict(optimizer=s.optimizer, lr=lr, lambda_max_quantity=lam_name, convention=s.convention,
                  queries=s.queries, momentum=s.momentum, momentum_style=s.momentum_style,
                  directions=s.directions, warnings=s.warnings())
    if not s.zeroth_order:
        limit = s.x_limit / eff
        return Band(kind="classical", threshold=limit, c=None, lambda_max_limit=limit, quantity=lam_name,
                    **common)
    beta, q = s.momentum, s.queries
    a, b = s.noise_coefficients
    threshold = 2.0 * q * (1.0 - beta) / (b * eff)
    c = (q * (1.0 - beta) / (1.0 + beta) + a) / b
    return Band(kind="mean-square", threshold=threshold, c=c, lambda_max_limit=s.x_limit / eff,
                quantity=f"Tr({s.quantity})", **common)


def critical_lr_bounds(trace: float, lambda_max: float, optimizer: str, queries: int = 1,
                       momentum: float | None = None, momentum_style: str | None = None, *,
                       directions: str = "gaussian", dim: int | None = None) -> tuple[float, float]:
    """Bounds ``lo ≤ η* ≤ hi`` from Tr and λ_max alone (T ∝ 1/η, so each bound of :func:`band` is a bound on η).

    Zeroth order: ``lo = K/(Tr + cλ_max)`` (sufficient), ``hi = min(K/Tr, x₀/(λ_max η_eff/η))``
    (necessary) with ``K = T·η``. First order: ``lo = hi = η*`` (λ_max decides).

    Theory: [docs/theory.md#ms-bounds][ms-bounds].
    """
    trace, lambda_max = _check_curvature(trace, lambda_max)
    unit = band(1.0, optimizer, queries, momentum, momentum_style, directions=directions, dim=dim)
    if lambda_max <= 0:  # no positive curvature: nothing to become unstable
        return math.inf, math.inf
    if unit.kind == "classical":
        eta = unit.threshold / lambda_max
        return eta, eta
    lo = unit.threshold / (trace + unit.c * lambda_max)
    hi = unit.lambda_max_limit / lambda_max
    if trace > 0:
        hi = min(hi, unit.threshold / trace)
    return min(lo, hi), hi


def _check_curvature(trace: float, lambda_max: float) -> tuple[float, float]:
    try:
        trace, lambda_max = float(trace), float(lambda_max)
    except (TypeError, ValueError):
        raise UserError("trace and lambda_max must be numbers") from None
    if not (math.isfinite(trace) and math.isfinite(lambda_max)):
        raise UserError("trace and lambda_max must be finite")
    return trace, lambda_max


@dataclass(frozen=True)
class Verdict:
    """Where (Tr, λ_max) sits relative to a :class:`Band`.

    ``verdict`` is ``"stable"`` when the sufficient bound holds, ``"unstable"`` when the necessary bound
    (``Tr < T``, or per mode ``λ_max < lambda_max_limit``) fails, else ``"band"`` (undecided by Tr and
    λ_max alone: the exact S(η) needs the spectrum). Margins are ``T − Tr`` (necessary),
    ``T − (Tr + cλ_max)`` (sufficient) and ``lambda_max_limit − λ_max``; positive means the bound holds.
    """

    verdict: str
    necessary_margin: float
    sufficient_margin: float
    lambda_max_margin: float
    band: Band

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "necessary_margin": self.necessary_margin,
                "sufficient_margin": self.sufficient_margin, "lambda_max_margin": self.lambda_max_margin,
                "band": self.band.as_dict()}


def verdict(trace: float, lambda_max: float, lr: float, optimizer: str, queries: int = 1,
            momentum: float | None = None, momentum_style: str | None = None, *,
            directions: str = "gaussian", dim: int | None = None) -> Verdict:
    """Classify ``(Tr, λ_max)`` as "stable" / "band" / "unstable" for step size ``lr`` (see :class:`Verdict`).

    Zeroth order: stable iff ``Tr + cλ_max < T`` (and ``λ_max`` below the per-mode limit, implied);
    unstable iff ``Tr ≥ T`` or ``λ_max ≥ lambda_max_limit``. First order: ``λ_max < T`` decides alone
    (the trace margin is reported as ``nan``).

    Theory: [docs/theory.md#ms-bounds][ms-bounds].
    """
    trace, lambda_max = _check_curvature(trace, lambda_max)
    b = band(lr, optimizer, queries, momentum, momentum_style, directions=directions, dim=dim)
    lam_margin = b.lambda_max_limit - lambda_max
    if b.kind == "classical":
        v = "stable" if lam_margin > 0 else "unstable"
        return Verdict(v, math.nan, lam_margin, lam_margin, b)
    nec = b.threshold - trace
    suf = b.threshold - (trace + b.c * lambda_max)
    if nec <= 0 or lam_margin <= 0:
        v = "unstable"
    elif suf > 0:
        v = "stable"
    else:
        v = "band"
    return Verdict(v, nec, suf, lam_margin, b)


# --------------------------------------------------------------------------------------------------
# Growth rate of E‖θ‖² from the per-mode blocks (closed form) and the dense exact operator


def _mode_blocks(lam: np.ndarray, lr: float, s: Setting) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-mode 4×4 second-moment maps of (x, m) without coupling, the noise input and its coefficient.

    Mode update (η_eff absorbed into γ): ``m' = βm + γ(λx + ξ)``, ``x' = x − η m'`` with ``γ = 1`` (heavy
    ball) or ``1−β`` (EMA); ``Var ξ = (a λ² E x² + b Σ_j λ_j² E x_j²)/q``.
    """
    beta = s.momentum
    gamma = 1.0 - beta if s.momentum_style == "ema" else 1.0
    n = lam.size
    F = np.zeros((n, 2, 2))
    F[:, 0, 0] = 1.0 - lr * gamma * lam
    F[:, 0, 1] = -lr * beta
    F[:, 1, 0] = gamma * lam
    F[:, 1, 1] = beta
    K = np.einsum("nij,nkl->nikjl", F, F).reshape(n, 4, 4)
    Bv = np.array([-lr * gamma, gamma])
    e = np.outer(Bv, Bv).ravel()
    if s.zeroth_order:
        a, _ = s.noise_coefficients
        K = K + (a * lam**2 / s.queries)[:, None, None] * np.einsum("i,j->ij", e, np.eye(4)[0])[None]
    return K, e, lam


def ms_spectral_radius(spectrum: Sequence[float] | np.ndarray, lr: float, optimizer: str, queries: int = 1,
                       momentum: float | None = None, momentum_style: str | None = None, *,
                       directions: str = "gaussian", dim: int | None = None) -> float:
    """Spectral radius ρ of the mean-square operator, so that ``E‖θ_t‖² ~ ρ^t`` (growth rate ``log ρ``).

    Exact on the quadratic (Gaussian/sphere directions, commuting P for Adam): each mode's (x, m)
    second moments evolve by a 4×4 map ``G_i`` and the modes couple only through the rank-one noise
    ``(b/q) Σ_j λ_j² E x_j²``, so ρ is the largest root of ``Σ_i (bλ_i²/q) e_xᵀ(ρI − G_i)⁻¹ e_ξ = 1``
    above ``max_i ρ(G_i)`` (or ``max_i ρ(G_i)`` if there is none). For a positive definite spectrum
    ``ρ < 1 ⇔ S(η) < 1``; a zero eigenvalue is a neutral mode and pins ρ ≥ 1.

    Theory: [docs/theory.md#ms-sum][ms-sum].
    """
    lam, w = _spectrum(spectrum, None, "unstable")
    s = _setting_for_spectrum(optimizer, queries, momentum, momentum_style, directions, dim, lam, w)
    _warn(s)
    lr = _check_lr(lr)
    K, e, lam = _mode_blocks(lam, lr, s)
    rho_modes = np.max(np.abs(np.linalg.eigvals(K)), axis=-1)
    rho0 = float(np.max(rho_modes))
    if not s.zeroth_order:
        return rho0
    _, b = s.noise_coefficients
    coef = b * lam**2 / s.queries
    eye = np.eye(4)

    def coupling(rho: float) -> float:
        sol = np.linalg.solve(rho * eye[None] - K, np.broadcast_to(e, (lam.size, 4))[..., None])[..., 0]
        return float(np.dot(coef, sol[:, 0]))

    lo = rho0 * (1 + 1e-12) + 1e-300
    if coupling(lo) <= 1.0:  # the coupling cannot lift ρ above the worst single mode
        return rho0
    hi = max(lo * 2, 2.0)
    while coupling(hi) > 1.0:
        hi *= 2
    return brentq(lambda r: coupling(r) - 1.0, lo, hi, rtol=4 * np.finfo(float).eps, maxiter=500)


def moment_operator(hessian: np.ndarray, lr: float, optimizer: str, queries: int = 1,
                    momentum: float | None = None, momentum_style: str | None = None, *,
                    directions: str = "gaussian", preconditioner: np.ndarray | None = None) -> np.ndarray:
    """Dense linear map ``vec(Σ_t) ↦ vec(Σ_{t+1})`` of the second moment of the state ``z = (θ, m)``.

    Built from first principles for small dense problems (d ≲ 12), independent of the spectral formulas:
    ``m' = βm + γ g``, ``θ' = θ − η P⁻¹ m'`` with ``g = Z H θ`` (ZO, exact on a quadratic) or ``g = Hθ``.
    Writing ``Z = I + Δ``: ``Σ' = M Σ Mᵀ + L E[Δ (RΣRᵀ) Δ] Lᵀ`` with ``E[ΔAΔ] = (E[uuᵀAuuᵀ] − A)/q`` and
    ``E[uuᵀAuuᵀ] = 2A + tr(A)I`` (Gaussian), ``d/(d+2)·(2A + tr(A)I)`` (sphere radius √d) or
    ``2A + tr(A)I − 2diag(A)`` (Rademacher, exact here since the map is in coordinates).
    ``preconditioner``: Adam's frozen P, a positive vector (diagonal) or an SPD matrix; None means I.
    Row-major ``vec``, so ``vec(AΣBᵀ) = (A ⊗ B) vec(Σ)``.

    Theory: [docs/theory.md#zo-estimator][zo-estimator].
    """
    H = np.asarray(hessian, dtype=float)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise UserError(f"hessian must be a square matrix, got shape {H.shape}")
    d = H.shape[0]
    s = resolve(optimizer, queries, momentum, momentum_style, directions, d)
    lr = _check_lr(lr)
    if preconditioner is None:
        Pinv = np.eye(d)
    else:
        if not s.preconditioned:
            raise UserError(f"{optimizer} has no preconditioner; pass preconditioner only for Adam")
        P = np.asarray(preconditioner, dtype=float)
        Pinv = np.diag(1.0 / P) if P.ndim == 1 else np.linalg.inv(P)
    beta = s.momentum
    gamma = 1.0 - beta if s.momentum_style == "ema" else 1.0
    I, O = np.eye(d), np.zeros((d, d))
    M = np.block([[I - lr * gamma * Pinv @ H, -lr * beta * Pinv], [gamma * H, beta * I]])
    op = np.kron(M, M)
    if s.zeroth_order:
        L = np.vstack([-lr * gamma * Pinv, gamma * I])
        R = np.hstack([H, O])
        vi = I.ravel()
        if s.directions == "gaussian":
            quartic = 2 * np.eye(d * d) + np.outer(vi, vi)
        elif s.directions == "sphere":
            quartic = d / (d + 2.0) * (2 * np.eye(d * d) + np.outer(vi, vi))
        else:
            quartic = 2 * np.eye(d * d) + np.outer(vi, vi) - 2 * np.diag(vi)
        noise = (quartic - np.eye(d * d)) / s.queries
        op = op + np.kron(L, L) @ noise @ np.kron(R, R)
    return op


def spectral_radius(matrix: np.ndarray) -> float:
    """Largest |eigenvalue| of a square matrix."""
    return float(np.max(np.abs(np.linalg.eigvals(matrix))))


def exact_critical_lr(hessian: np.ndarray, optimizer: str, queries: int = 1, momentum: float | None = None,
                      momentum_style: str | None = None, *, directions: str = "gaussian",
                      preconditioner: np.ndarray | None = None, rtol: float = 1e-10) -> float:
    """η* from the dense :func:`moment_operator`: the first η where its spectral radius crosses 1.

    Needs a positive definite ``hessian`` (a null mode is a neutral random walk, ρ = 1 for every η).
    Works where the spectral formulas are only approximate: Rademacher directions and a preconditioner
    that does not commute with H. Scans η geometrically for the first sign change of ``det(I − Op)``,
    refines it with ``brentq`` and confirms with the spectral radius.

    Theory: [docs/theory.md#ms-sum][ms-sum].
    """
    H = np.asarray(hessian, dtype=float)
    ev = np.linalg.eigvalsh((H + H.T) / 2)
    if ev[0] <= 0:
        raise UserError("exact_critical_lr needs a positive definite hessian")
    kw = dict(queries=queries, momentum=momentum, momentum_style=momentum_style, directions=directions,
              preconditioner=preconditioner)

    def det_sign(eta: float) -> float:
        # sign(det(I − Op))·|det|^(1/n): continuous in η, positive while ρ < 1 (every real eigenvalue is
        # below the Perron root ρ, complex pairs give |1−μ|² > 0) and it changes sign where ρ crosses 1;
        # an LU factorisation is ~10x cheaper than the eigenvalues
        op = moment_operator(H, eta, optimizer, **kw)
        sign, logdet = np.linalg.slogdet(np.eye(op.shape[0]) - op)
        return float(sign * np.exp(logdet / op.shape[0]))

    if preconditioner is not None:
        P = np.asarray(preconditioner, dtype=float)
        Pm = np.diag(P) if P.ndim == 1 else P
        ev = np.linalg.eigvals(np.linalg.solve(Pm, H)).real
    # x_limit/λ_max bounds η* from above for the spectral formula; scan to 4x that for the first crossing
    s = resolve(optimizer, queries, momentum, momentum_style,
                "gaussian" if directions == "rademacher" else directions, H.shape[0])
    hi = 4 * s.x_limit / (s.lr_factor * float(np.max(ev)))
    grid = hi * np.geomspace(1e-3, 1.0, 120)
    prev = grid[0]
    for eta in grid:
        if det_sign(eta) <= 0:
            root = brentq(det_sign, prev, eta, rtol=rtol, maxiter=500)
            # confirm it is the Perron root that crossed (not an even number of eigenvalues between points)
            below = spectral_radius(moment_operator(H, root * (1 - 1e-6), optimizer, **kw))
            above = spectral_radius(moment_operator(H, root * (1 + 1e-6), optimizer, **kw))
            if not below <= 1.0 + 1e-9 <= above + 2e-9:
                raise RuntimeError(f"spectral radius does not cross 1 at eta={root:g}; refine the scan")
            return root
        prev = eta
    raise RuntimeError("no mean-square instability found below 4·x_limit/λ_max; check the inputs")

