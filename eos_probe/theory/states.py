"""One stability verdict per measurement: :func:`classify` (docs/theory.md §2, "One verdict per probe").

`classify` is the single place that turns what was measured at one probe (S(η) ± s.e. from the probe metric
``ms_margin``, its negative-curvature mass, Tr and λ_max) into a state and the evidence it rests on.
`Run.verdicts`, `eos-probe inspect`, `eos-probe bands`, the figures and `eos_probe.ms_margin` all call it,
so they cannot disagree.

States, in the order they are decided:

* With S(η) measured (basis ``"S"``; first-order runs: ``"lambda_max"``, S = λ_max/T, the classical edge):
  ``unstable`` when S = ∞ or S − 2 s.e. > 1; ``indefinite`` (zeroth order only) when the negative-curvature
  mass is comparable to the positive part (see :func:`is_indefinite`); ``edge`` when |S − 1| ≤ 2 s.e.;
  ``stable`` when S + 2 s.e. < 1.
* Without S (basis ``"bounds"``, docs/theory.md §2 "Bounds"): ``unstable`` when the necessary bound fails
  (Tr ≥ T, or λ_max beyond the per-mode limit); ``indefinite`` when Tr is below λ_max by more than 2 s.e.;
  ``stable`` when the sufficient bound Tr + c·λ_max < T holds; else ``band`` (necessary bound only).
* Nothing measured: state ``""``.

An instability verdict stands on an indefinite Hessian (Tr = Tr₊ − Tr₋ ≤ Tr₊, and negative modes only add
instability on the quadratic model); a stability verdict does not, hence the order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..presets import PRESETS

if TYPE_CHECKING:  # annotations only: stability imports this module's labels
    from .stability import Band

#: |S − 1| within this many standard errors: at the edge
EDGE_SE = 2.0
#: indefinite when S_neg ≥ this × S (and S_neg is more than 2 s.e. above 0)
NEGATIVE_MASS_RATIO = 0.5
#: an S standard error above this makes a 2-s.e. interval wider than ±0.5: say so beside the verdict
WIDE_SE = 0.25

#: the words each (state, basis) is shown with; the state alone is the machine-readable token
LABELS = {
    ("stable", "S"): "stable", ("edge", "S"): "at the edge", ("unstable", "S"): "unstable",
    ("indefinite", "S"): "indefinite",
    ("stable", "lambda_max"): "stable", ("edge", "lambda_max"): "at the edge",
    ("unstable", "lambda_max"): "unstable",
    ("stable", "bounds"): "stable (sufficient bound)", ("band", "bounds"): "band: necessary bound only",
    ("unstable", "bounds"): "unstable (necessary bound violated)", ("indefinite", "bounds"): "indefinite",
    ("", ""): "",
}

INDEFINITE_NOTE = ("indefinite Hessian: Tr(H) nets out the negative eigenvalues, so here the band can still "
                   "prove instability (Tr >= T) but never stability, and S covers only the positive-curvature "
                   "modes (on the quadratic model the negative ones escape at every step size)")
SUFFICIENT_NOTE = "the bounds assume no negative eigenvalue; the exact test is S(lr) (probe ms_margin)"
BAND_NOTE = ("Tr < T is necessary only: Tr and lambda_max alone cannot decide here; S(lr) (probe ms_margin) "
             "does")
WIDE_NOTE = "wide error bar: more ms_margin probes (n_probes, n_steps) narrow it"
STAND_IN_NOTE = ("the classical GD line lambda_max < 2/lr stands in: this optimizer has no single spectral band "
                 "(see the band's warning)")


@dataclass(frozen=True)
class StabilityVerdict:
    """The state of one measurement and what it rests on (see the module docstring for the rules).

    ``state``: ``"stable" | "edge" | "unstable" | "indefinite" | "band" | ""``; ``basis``: ``"S"``,
    ``"lambda_max"`` (first order), ``"bounds"`` (Tr and λ_max only) or ``""``; ``verdict``: the words
    shown (e.g. "stable (sufficient bound)"); ``evidence``: the numbers; ``note``: what the verdict does
    not say, or ``""``. Margins are those of the bounds (positive: the bound holds; nan when not measured).
    """

    state: str
    basis: str
    verdict: str
    evidence: str
    note: str = ""
    s: float = math.nan
    s_err: float = math.nan
    s_neg: float = math.nan
    s_neg_err: float = math.nan
    necessary_margin: float = math.nan
    sufficient_margin: float = math.nan
    lambda_max_margin: float = math.nan

    def text(self) -> str:
        """One line: 'verdict: evidence; note'."""
        if not self.state:
            return "not measured"
        return f"{self.verdict}: {self.evidence}" + (f"; {self.note}" if self.note else "")

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "state": self.state, "basis": self.basis, "evidence": self.evidence,
                "note": self.note, "S": self.s, "S_err": self.s_err, "S_neg": self.s_neg,
                "S_neg_err": self.s_neg_err, "necessary_margin": self.necessary_margin,
                "sufficient_margin": self.sufficient_margin, "lambda_max_margin": self.lambda_max_margin}


def _num(x: Any) -> float:
    """A float, nan for None or anything that is not a number."""
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan


def _g(x: float, digits: int = 3) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if 1e3 <= abs(x) < 1e7:  # thresholds and traces in the thousands: whole numbers, not 2e+04
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def _pm(x: float, e: float, digits: int = 3) -> str:
    return f"{_g(x, digits)} ± {_g(e, 2)}" if math.isfinite(e) and e > 0 else _g(x, digits)


def is_indefinite(*, s: float = math.nan, s_neg: float = math.nan, s_neg_err: float = math.nan,
                  trace: float = math.nan, trace_err: float = math.nan, lambda_max: float = math.nan) -> bool:
    """Whether the negative-curvature mass is comparable to the positive part, from what the probe logs.

    With ``ms_margin_neg`` logged (S_neg = Σ_{λ<0}|λ|/T, from the shared Lanczos run's Gauss rule): S_neg is
    more than 2 s.e. above 0 and S_neg ≥ ½·S. Since S ≥ Σ_{λ>0}λ/T, S_neg/S is a lower bound on Tr₋/Tr₊: the test
    errs towards not calling a Hessian indefinite. Without it: Tr + 2 s.e. < λ_max, which only negative
    eigenvalues outweighing every positive one but the top can cause.

    Theory: [docs/theory.md#verdicts][verdicts].
    """
    s, s_neg, s_neg_err = _num(s), _num(s_neg), _num(s_neg_err)
    if math.isfinite(s_neg):
        err = s_neg_err if math.isfinite(s_neg_err) else 0.0
        return s_neg > 2.0 * err and not math.isinf(s) and s_neg >= NEGATIVE_MASS_RATIO * s
    trace, trace_err, lambda_max = _num(trace), _num(trace_err), _num(lambda_max)
    if math.isfinite(trace) and math.isfinite(lambda_max):
        return trace + 2.0 * (trace_err if math.isfinite(trace_err) else 0.0) < lambda_max
    return False


def _margins(band: Band, trace: float, lambda_max: float) -> tuple[float, float, float]:
    """(necessary, sufficient, per-mode) margins of the bounds; nan where not measured."""
    if not math.isfinite(lambda_max):
        return math.nan, math.nan, math.nan
    lam = band.lambda_max_limit - lambda_max
    if band.kind == "classical":
        return math.nan, lam, lam
    if not math.isfinite(trace):
        return math.nan, math.nan, lam
    return band.threshold - trace, band.threshold - (trace + band.c * lambda_max), lam


def classify(band: Band, *, s: float | None = None, s_err: float | None = None, s_neg: float | None = None,
             s_neg_err: float | None = None, trace: float | None = None, trace_err: float | None = None,
             lambda_max: float | None = None, lambda_max_err: float | None = None) -> StabilityVerdict:
    """The one stability verdict of a measurement against ``band`` (see the module docstring).

    Args:
        band: the run's :class:`~eos_probe.theory.stability.Band` (T, c, per-mode limit).
        s, s_err: S(η) and its standard error (probe columns ``ms_margin``, ``ms_margin_err``); an exact S
            has ``s_err`` 0 or None.
        s_neg, s_neg_err: the negative-curvature mass Σ_{λ<0}|λ|/T (``ms_margin_neg``, ``ms_margin_neg_err``).
        trace, trace_err, lambda_max, lambda_max_err: Tr and λ_max of the operator the band is about
            (P⁻¹H for Adam).
        None, nan and inf where not measured (S = +inf is a measurement: a mode beyond its limit).

    Returns:
        A :class:`StabilityVerdict`; state ``""`` when nothing usable was measured.

    Theory: [docs/theory.md#verdicts][verdicts].
    """
    s, s_err, s_neg, s_neg_err = _num(s), _num(s_err), _num(s_neg), _num(s_neg_err)
    trace, trace_err, lambda_max, lambda_max_err = _num(trace), _num(trace_err), _num(lambda_max), _num(lambda_max_err)
    nec, suf, lam = _margins(band, trace, lambda_max)
    common = dict(s_neg=s_neg, s_neg_err=s_neg_err, necessary_margin=nec, sufficient_margin=suf,
                  lambda_max_margin=lam)
    T = band.threshold
    classical = band.kind == "classical"
    if classical and math.isnan(s) and math.isfinite(lambda_max):
        # first order: S = λ_max/T is the classical edge, exact up to the Ritz residual
        s = lambda_max / T
        s_err = (lambda_max_err if math.isfinite(lambda_max_err) else 0.0) / T
    if not math.isnan(s):
        return _from_s(band, s, 0.0 if not math.isfinite(s_err) else s_err, lambda_max, common)
    if classical or not (math.isfinite(trace) and math.isfinite(lambda_max)):
        return StabilityVerdict("", "", "", "", **common)
    q, lq = band.quantity, band.lambda_max_quantity
    if nec <= 0 or lam <= 0:
        ev = (f"{q} = {_pm(trace, trace_err, 4)} >= T = {_g(T, 4)}" if nec <= 0 else
              f"{lq} = {_g(lambda_max, 4)} >= per-mode limit {_g(band.lambda_max_limit, 4)}")
        return StabilityVerdict("unstable", "bounds", LABELS["unstable", "bounds"], ev, **common)
    if is_indefinite(trace=trace, trace_err=trace_err, lambda_max=lambda_max):
        by = " by more than 2 s.e." if math.isfinite(trace_err) and trace_err > 0 else ""
        ev = f"{q} = {_pm(trace, trace_err, 4)} is below {lq} = {_g(lambda_max, 4)}{by}"
        return StabilityVerdict("indefinite", "bounds", LABELS["indefinite", "bounds"], ev, INDEFINITE_NOTE,
                                **common)
    upper = f"{q} + c*{lq} = {_g(trace + band.c * lambda_max, 4)}"
    # a trace below λ_max that is not significantly so: not called indefinite, but said
    hint = (f"; {q} = {_pm(trace, trace_err, 4)} < {lq} = {_g(lambda_max, 4)}, a sign of negative "
            "eigenvalues (within 2 s.e.)" if trace < lambda_max else "")
    if suf > 0:
        ev = f"{upper} < T = {_g(T, 4)} (c = {band.c:.3g}){hint}"
        return StabilityVerdict("stable", "bounds", LABELS["stable", "bounds"], ev, SUFFICIENT_NOTE, **common)
    ev = f"{q} = {_pm(trace, trace_err, 4)} < T = {_g(T, 4)}, but {upper} >= T{hint}"
    return StabilityVerdict("band", "bounds", LABELS["band", "bounds"], ev, BAND_NOTE, **common)


def _from_s(band: Band, s: float, err: float, lambda_max: float, common: dict) -> StabilityVerdict:
    classical = band.kind == "classical"
    basis = "lambda_max" if classical else "S"
    name = f"{band.quantity}/T" if classical else "S"
    p = PRESETS.get(band.optimizer)
    if classical and p is not None and not p.has_band:
        note = STAND_IN_NOTE
    else:
        note = WIDE_NOTE if err > WIDE_SE and not classical else ""
    kw = dict(s=s, s_err=err, **common)
    if math.isinf(s):
        limit = _g(band.lambda_max_limit, 4)
        ev = (f"{name} = inf: {band.lambda_max_quantity} = {_g(lambda_max, 4)} is beyond its own limit {limit}"
              if lambda_max >= band.lambda_max_limit else
              f"{name} = inf: some mode is unstable on its own (beyond the per-mode limit {limit}, or of negative "
              "curvature counted as unstable)")
        return StabilityVerdict("unstable", basis, LABELS["unstable", basis], ev, note, **kw)
    measured = f"{name} = {_pm(s, err)}"
    if s - EDGE_SE * err > 1.0:
        side = "above 1" if not err else "more than 2 s.e. above 1"
        return StabilityVerdict("unstable", basis, LABELS["unstable", basis], f"{measured}, {side}", note, **kw)
    if not classical and is_indefinite(s=s, s_neg=common["s_neg"], s_neg_err=common["s_neg_err"]):
        ev = f"S_neg = {_pm(common['s_neg'], common['s_neg_err'])} >= S/2, {measured}"
        return StabilityVerdict("indefinite", basis, LABELS["indefinite", basis], ev, INDEFINITE_NOTE, **kw)
    if abs(s - 1.0) <= EDGE_SE * err:
        side = "= 1" if not err else "within 2 s.e. of 1"
        return StabilityVerdict("edge", basis, LABELS["edge", basis], f"{measured}, {side}", note, **kw)
    side = "below 1" if not err else "more than 2 s.e. below 1"
    return StabilityVerdict("stable", basis, LABELS["stable", basis], f"{measured}, {side}", note, **kw)


def classify_row(band: Band, row: Any, prefix: str = "") -> StabilityVerdict:
    """:func:`classify` on one probe row (a mapping or pandas Series with the probe's column names).

    ``prefix`` is ``"precond_"`` for Adam runs, whose trace and λ_max are those of P⁻¹H.
    """
    def get(name: str) -> float:
        try:
            return _num(row[name]) if name in row else math.nan
        except (KeyError, TypeError):
            return math.nan

    return classify(band, s=get("ms_margin"), s_err=get("ms_margin_err"), s_neg=get("ms_margin_neg"),
                    s_neg_err=get("ms_margin_neg_err"), trace=get(prefix + "trace"),
                    trace_err=get(prefix + "trace_err"), lambda_max=get(prefix + "lambda_max"),
                    lambda_max_err=get(prefix + "lambda_max_err"))
