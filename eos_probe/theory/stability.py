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
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import brentq

from ..errors import InvalidValueError
from ..presets import DEFAULT_DIRECTIONS, PRESETS
# the settings and the exact operators live in their own modules; their names stay importable from here
from .setting import (  # noqa: F401
    COMMUTING_WARNING,
    DEFAULT_MOMENTUM,
    DIRECTIONS,
    FO_OPTIMIZERS,
    MOMENTUM_STYLES,
    OPTIMIZERS,
    RADEMACHER_WARNING,
    ZO_OPTIMIZERS,
    ApproximationWarning,
    Setting,
    _check_lr,
    _setting_for_spectrum,
    _spectrum,
    _warn,
    resolve,
)
from .moments import exact_critical_lr, moment_operator, ms_spectral_radius, spectral_radius  # noqa: F401


def ms_terms(eigenvalues: np.ndarray | float, lr: float, optimizer: str, queries: int = 1,
             momentum: float | None = None, momentum_style: str | None = None,
             directions: str = DEFAULT_DIRECTIONS, dim: int | None = None) -> np.ndarray:
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
           directions: str = DEFAULT_DIRECTIONS, dim: int | None = None, weights=None,
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
                directions: str = DEFAULT_DIRECTIONS, dim: int | None = None, weights=None,
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
         momentum_style: str | None = None, *, directions: str = DEFAULT_DIRECTIONS,
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
                       directions: str = DEFAULT_DIRECTIONS, dim: int | None = None) -> tuple[float, float]:
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
        raise InvalidValueError("trace and lambda_max must be numbers") from None
    if not (math.isfinite(trace) and math.isfinite(lambda_max)):
        raise InvalidValueError("trace and lambda_max must be finite")
    return trace, lambda_max


@dataclass(frozen=True)
class Verdict:
    """Where (Tr, λ_max) sits relative to a :class:`Band`: the bounds alone, for a positive semi-definite H.

    The verdict to show for a measurement, with S(η) where it was measured and an ``indefinite`` state, is
    :func:`eos_probe.theory.states.classify`. ``verdict`` is ``"stable"`` when the sufficient bound holds, ``"unstable"`` when the necessary bound
    (``Tr < T``, or per mode ``λ_max < lambda_max_limit``) fails, else ``"band"`` (undecided by Tr and
    λ_max alone: the exact S(η) needs the spectrum). Margins are ``T − Tr`` (necessary),
    ``T − (Tr + cλ_max)`` (sufficient) and ``lambda_max_limit − λ_max``; positive means the bound holds.
    """

    verdict: str
    necessary_margin: float
    sufficient_margin: float
    lambda_max_margin: float
    band: Band

    @property
    def label(self) -> str:
        """The words to show, saying what the verdict rests on: "stable (sufficient bound)", "band: necessary
        bound only", "unstable (necessary bound violated)" (first order: "stable" / "unstable", exact)."""
        from .states import LABELS

        return LABELS[self.verdict, "lambda_max" if self.band.kind == "classical" else "bounds"]

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "label": self.label, "necessary_margin": self.necessary_margin,
                "sufficient_margin": self.sufficient_margin, "lambda_max_margin": self.lambda_max_margin,
                "band": self.band.as_dict()}


def verdict(trace: float, lambda_max: float, lr: float, optimizer: str, queries: int = 1,
            momentum: float | None = None, momentum_style: str | None = None, *,
            directions: str = DEFAULT_DIRECTIONS, dim: int | None = None) -> Verdict:
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
# A run's config → its band and its per-mode term (what the probe, the reader and the plots ask)

#: presets without a spectral band: their exact edge needs H's eigenvectors (probe metric cocd_edge)
COCD_BANDLESS = tuple(n for n, p in PRESETS.items() if p.source == "cocd")
#: other presets without a spectral band (RISE, grouped): the classical GD line stands in, with this warning
SHAPED_BAND_WARNING = ("{name}: no single spectral band (docs/theory.md section 5a-5b: RISE shapes each block "
                       "differently; grouped optimizers have one band per group, see the probe metric "
                       "hybrid_bands); the line drawn is the classical GD line lambda_max(H) < 2/lr")
COCD_BAND_WARNING = ("CoCD/BCCD: the line lambda_max(H) < 2/lr drawn here is exact only for B = d (finite-difference "
                     "GD); the exact edge lr*(H, B, gamma) depends on H's eigenvectors (docs/theory.md section 5d) - "
                     "see the probe series cocd_edge")


def band_for(config: Mapping[str, Any], dim: int | None = None) -> Band:
    """The :class:`Band` (T, c, conventions, warnings) of a run's config; warnings are not re-emitted.

    Args:
        config: the run's settings (see :meth:`Setting.from_config`).
        dim: the number of parameters d.

    Returns:
        The band; for CoCD presets the classical GD line, named for the preset and with a warning that
        it is exact only for B = d.

    Raises:
        InvalidValueError: settings the theory does not cover.
    """
    s = Setting.from_config(config, dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # they are kept in Band.warnings and shown beside every band
        b = band(s.lr, s.optimizer, **s.kwargs())
    p = PRESETS.get(config.get("optimizer"))
    if p is not None and not p.has_band and p.source != "cocd":
        b = replace(b, optimizer=p.name, warnings=(SHAPED_BAND_WARNING.format(name=p.name),))
    elif p is not None and (p.norm_match or config.get("norm_match")):
        b = replace(b, optimizer=p.name, convention=f"norm-matched (g / sqrt(kappa)), i.e. at the effective lr "
                    f"{s.lr:.4g}: {b.convention}")
    if config.get("optimizer") in COCD_BANDLESS:
        b = replace(b, optimizer=config["optimizer"], convention=f"{config['optimizer']}: coordinate-wise central "
                    "differences with a decaying buffer, theta <- theta - lr G", warnings=(COCD_BAND_WARNING,))
    return b


def ms_term_function(config: Mapping[str, Any], dim: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """λ ↦ f(λ), the per-mode term of S(η) for a run's settings (:func:`ms_terms`, inf beyond the per-mode
    limit), continued by f = 0 for λ ≤ 0: negative-curvature modes are excluded from S (see the probe's
    MSMargin). The one definition the probe metric `ms_margin` and `eos_probe.ms_margin` use.

    Args:
        config: the run's settings (see :meth:`Setting.from_config`).
        dim: the number of parameters d.

    Returns:
        A vectorised function of the eigenvalues (approximation warnings silenced: the band keeps them).

    Theory: [docs/theory.md#metric-ms_margin][metric-ms_margin].
    """
    s = Setting.from_config(config, dim)
    lr, opt, kw = s.lr, s.optimizer, s.kwargs()

    def f(lam: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the band's approximation warnings are stored under /bands
            return ms_terms(np.maximum(np.asarray(lam, dtype=float), 0.0), lr, opt, **kw)

    return f
