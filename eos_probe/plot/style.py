"""What every figure shares: style, colours, run ordering and labels, and the axis helpers of the panels.

Private to `eos_probe.plot` (the panels in `panels`, the figures in `figures`); `run_colors`, `load_runs`,
`pretty` and the constants are public.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError
from ..run import Run


FORMATS = (".png", ".pdf", ".svg")


#: Okabe–Ito colour-blind-safe palette (black last: reserved for references)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


#: the commutator ratio level the reference work observes under ZO-Adam (a reference line, not a threshold)
COMMUTATOR_REFERENCE = 0.05


STYLE = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5, "lines.linewidth": 1.4,
    "legend.frameon": False, "figure.dpi": 100, "savefig.dpi": 300, "savefig.bbox": "tight",
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "axes.formatter.limits": (-3, 4),
    "axes.formatter.use_mathtext": True, "mathtext.default": "regular",
}


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo") and not _interactive():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interactive() -> bool:
    import sys

    return "ipykernel" in sys.modules


def load_runs(paths: Iterable[str | Path | Run]) -> list[Run]:
    """Runs from paths (or Runs passed through), in the given order."""
    from ..run import Run as _Run

    out = [p if isinstance(p, _Run) else _Run.from_file(p) for p in paths]
    if not out:
        raise UserError("no run files given; pass one or more RUN.h5")
    return out


def _key(run: Run) -> str:
    return str(run.path)


def run_colors(runs: Sequence[Run]) -> dict[str, str]:
    """One colour per run (sorted by optimizer and η), shared by every panel of a figure."""
    return {_key(r): PALETTE[i % len(PALETTE)] for i, r in enumerate(_by_lr(runs))}


def _by_lr(runs: Sequence[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: (r.optimizer, r.lr))


def _tex_quantity(q: str) -> str:
    """'Tr(P^-1 H)' → mathtext."""
    m = q.replace("lambda_max", r"\lambda_{\max}").replace("Tr", r"\mathrm{Tr}").replace("P^-1", "P^{-1}")
    return f"${m}$"


def _band_label(run: Run, band) -> str:
    parts = [f"{run.optimizer}", f"η={run.lr:g}"]
    if band.momentum:
        parts.append(("β₁" if run.preconditioned else "β") + f"={band.momentum:g}")
    if run.optimizer.startswith("zo-"):
        parts.append(f"q={band.queries}")
    label = ", ".join(parts) + f"  (T={_threshold_text(band)})"
    return label + _last_verdict(run) + _diverged_note(run)


#: the marker of each verdict state at every probe (filled or open): the figures state the verdict of
#: `Run.verdicts` (eos_probe.theory.states.classify) probe by probe
VERDICT_MARKERS = {"stable": ("o", True), "edge": ("D", True), "unstable": ("X", True), "indefinite": ("o", False),
                   "band": ("s", False)}


def _last_verdict(run: Run) -> str:
    """'; step 50: at the edge' for a legend label: the run's verdict at its last probe with one."""
    v = run.verdicts() if len(run.probe) else None
    if v is None:
        return ""
    done = v[v["state"] != ""]
    if not len(done):
        return ""
    row = done.iloc[-1]
    return f"; step {int(row['step'])}: {row['verdict']}"


def _verdict_marks(ax, run: Run, y: np.ndarray, color: str) -> None:
    """One marker per probe at (step, y) in the shape of its verdict state (VERDICT_MARKERS).

    y has one value per probe row; +inf (S = ∞) is drawn at the top of the axis, so call this after the
    limits are set. Each state is one line with gid 'verdict|<run path>|<state>'."""
    v = run.verdicts()
    steps = v["step"].to_numpy()
    y = np.asarray(y, float)
    top = ax.get_ylim()[1]
    y = np.where(np.isposinf(y), top, y)
    for state, (marker, filled) in VERDICT_MARKERS.items():
        sel = (v["state"] == state).to_numpy() & np.isfinite(y)
        if sel.any():
            ax.plot(steps[sel], y[sel], ls="none", marker=marker, ms=4.5 if marker != "X" else 5.5,
                    mfc=color if filled else "white", mec=color, mew=1.0, zorder=3, clip_on=False,
                    gid=f"verdict|{_key(run)}|{state}")


def _verdict_handles(runs: Sequence[Run]) -> list:
    """Legend keys for the verdict markers that occur in `runs` (one per verdict wording)."""
    from matplotlib.lines import Line2D

    seen: dict[str, str] = {}
    for r in runs:
        if not len(r.probe):
            continue
        v = r.verdicts()
        for state, label in zip(v["state"], v["verdict"]):
            if state:
                seen.setdefault(label, state)
    order = list(VERDICT_MARKERS)
    out = []
    for label, state in sorted(seen.items(), key=lambda kv: (order.index(kv[1]), kv[0])):
        marker, filled = VERDICT_MARKERS[state]
        out.append(Line2D([], [], ls="none", marker=marker, ms=4.5, mfc="0.3" if filled else "white", mec="0.3",
                          label=f"verdict: {label}"))
    return out


def _diverged_note(run: Run) -> str:
    return f", diverged at step {run.attrs.get('stop_step')}" if run.status == "diverged" else ""


def _threshold_text(band) -> str:
    """The threshold as a formula of η and its value, e.g. '2/η = 200'."""
    lr, beta, q = band.lr, band.momentum, band.queries
    if band.kind == "classical":
        k = band.threshold * lr
        return f"{k:.3g}/η = {band.threshold:.4g}"
    k = band.threshold * lr
    if band.directions != "sphere" and abs(k - round(k)) < 1e-9:
        return f"{int(round(k))}/η = {band.threshold:.4g}"
    return f"{k:.3g}/η = {band.threshold:.4g}"


def _steps(run: Run) -> np.ndarray:
    return run.probe["step"].to_numpy()


def _require(runs: Sequence[Run], kind: str, check, what: str) -> None:
    for r in runs:
        if len(r.probe) == 0:
            raise UserError(f"{r.path}: no probe data to plot --kind {kind} (trained with --probe none, or stopped "
                            f"before the first probe); train with --probe {what}")
        if not check(r):
            raise UserError(f"{r.path}: no {what} in the probe data needed for --kind {kind}; "
                            f"train with --probe {what}")


def _finite_pos(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, float)
    return a[np.isfinite(a) & (a > 0)]


def _log_if_wide(ax, values: Iterable[float], ratio: float = 8.0, data: Iterable[np.ndarray] | None = None) -> bool | str:
    """A log y axis when the positive `values` span more than `ratio`; a symmetric log axis instead when any
    finite value of `data` (default: `values`) is ≤ 0, so that a negative or sign-changing series is drawn
    rather than dropped. Returns False (linear), True (log) or "symlog"."""
    values = list(values)
    v = np.concatenate([_finite_pos(np.atleast_1d(x)) for x in values]) if values else np.zeros(0)
    if not (v.size and v.max() / v.min() > ratio):
        return False
    signed = _finite(values if data is None else list(data))
    if (signed <= 0).any():
        nonzero = np.abs(signed[signed != 0])
        big = max(float(np.abs(signed).max(initial=0.0)), float(v.max()))
        small = float(nonzero.min()) if nonzero.size else big * 1e-3
        # linear within ±linthresh: a decade below the smallest magnitude drawn, so every value lies in the
        # logarithmic part on its own side of zero
        linthresh = 10.0 ** np.floor(np.log10(max(small, big * 1e-6)))
        ax.set_yscale("symlog", linthresh=linthresh, linscale=0.5)
        return "symlog"
    ax.set_yscale("log")
    return True


def _finite(arrays: Iterable[np.ndarray]) -> np.ndarray:
    arrays = [np.asarray(a, float).ravel() for a in arrays]
    a = np.concatenate(arrays) if arrays else np.zeros(0)
    return a[np.isfinite(a)]


def _negative_note(ax, items: list[tuple[str, np.ndarray, str]], scale: bool | str) -> bool:
    """Say in the panel which series are negative somewhere, and how they are drawn: `items` are
    (name, values, what one value is, e.g. "probe"), the probe's own value first (below 0 it means an
    indefinite H; the others are noisy estimates). On a log axis (`scale` True, chosen from the probe's
    positive curves) only a noisy estimate such as the free monitor can be ≤ 0: those values are not drawn,
    and the note says so. Returns whether a note was written."""
    log = scale is True
    parts, negative_probe = [], False
    for i, (name, y, unit) in enumerate(items):
        y = np.asarray(y, float)
        k = int(np.sum(np.isfinite(y) & ((y <= 0) if log else (y < 0))))
        if k:
            parts.append(f"{name} {'≤' if log else '<'} 0 at {k} {unit}{'s' if k > 1 else ''}")
            negative_probe |= i == 0
    if not parts:
        return False
    # the first item is the probe's certified value: below 0 it means an indefinite H; the others are noisy
    # estimates, whose values below 0 are noise
    cause = "indefinite H" if negative_probe else "estimate noise"
    how = (f"\n({cause}): not drawn on a log axis" if log else
           f"\n({cause}): " + ("symmetric log axis" if scale == "symlog" else "drawn below 0"))
    # outside the layout: a narrow (paper) panel must not shrink to make room for it. Log axis: bottom right,
    # where a sharpening trace leaves room; linear: top right (clear of the panel letter) when the data sit in
    # the lower half (they start near 0), else bottom left; a light box keeps it legible over a passing curve
    top = False
    if not log:
        lo, hi = ax.get_ylim()
        data = np.concatenate([np.asarray(y, float).ravel() for _, y, _ in items] or [np.zeros(0)])
        data = data[np.isfinite(data)]
        top = bool(data.size) and hi > lo and float(np.median(data)) < (lo + hi) / 2
    ax.text(0.99 if log or top else 0.01, 0.97 if top else 0.02, f"{'; '.join(parts)}{how}", transform=ax.transAxes,
            fontsize=8, color="0.25", ha="right" if log or top else "left", va="top" if top else "bottom",
            gid="negative-note", in_layout=False,
            bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    return True


def _legend(ax, mode: str, runs_handles: list, style_handles: list) -> None:
    """"outside": runs, then line styles, right of the axes (never over the data); "styles": only the line
    styles, inside (a figure-level legend names the runs); "none"."""
    from matplotlib.lines import Line2D

    if mode == "outside":
        spacer = Line2D([], [], color="none", label=" ")
        handles = runs_handles + ([spacer] + style_handles if style_handles else [])
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  handlelength=2.4)
    elif mode == "styles" and style_handles:
        ax.legend(handles=style_handles, loc="best", handlelength=2.4)
    elif mode == "inside":
        ax.legend(handles=runs_handles + style_handles, loc="best", handlelength=2.4)


def _clip_y(ax, plotted: list[np.ndarray], thresholds: list[float], log: bool | str) -> None:
    """Keep the thresholds and the data in view (negative values too), but not a divergence blow-up far
    beyond every T. `log`: what `_log_if_wide` returned."""
    pos = np.concatenate([_finite_pos(p) for p in plotted]) if plotted else np.zeros(0)
    data = _finite(plotted)
    top = max(thresholds) if thresholds else 1.0
    hi = max(top, float(pos.max()) if pos.size else top)
    hi = min(hi, 5.0 * top)
    neg = max(float(data.min()) if data.size else 0.0, -5.0 * top)
    if log == "symlog":  # room below the lowest value for the panel's note on negative values
        ax.set_ylim(min(neg, 0.0) * 4.0, hi * 1.5)
    elif log:
        lo = min(min(thresholds), float(pos.min()) if pos.size else top)
        ax.set_ylim(lo / 1.5, hi * 1.5)
        _log_ticks(ax)
    else:
        ax.set_ylim(min(neg, 0.0) * 1.08 if neg < 0 else 0.0, hi * 1.08)


def _mark_divergence(ax, run: Run, color: str) -> None:
    if run.status == "diverged" and "stop_step" in run.attrs:
        ax.axvline(run.attrs["stop_step"], color=color, ls=":", lw=0.9)


def _integer_steps(ax) -> None:
    """Steps are whole updates: no 0.5-step ticks on short runs."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))


def _lower(y: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Lower edge of the error shading where positive (so log-axis limits keep it in view, down to 1/20 of
    the value; below that the shading runs off the axis bottom)."""
    y = np.asarray(y, float)
    lo = y - np.nan_to_num(np.asarray(e, float), nan=0.0)
    return np.where(lo > y / 20, lo, np.nan)


def _shade(ax, s, y, e, color: str, log: bool | str | None = None) -> None:
    """±error band; where the lower edge is not positive on a log axis it runs to the axis bottom instead
    of being cut off at an arbitrary decade.

    `log`: the y scale, as `_log_if_wide` returned it, when the shading is drawn after the scale was chosen
    (on a linear or symlog axis the true lower edge shows, below 0 too); None when the axis may still become
    logarithmic, in which case a positive series gets the log-axis treatment."""
    y, e = np.asarray(y, float), np.nan_to_num(np.asarray(e, float), nan=0.0)
    lo = y - e
    # a positive value far below the data looks the same as a negative one on a linear axis that starts
    # at 0, and reaches the bottom of a log axis
    pos = y[np.isfinite(y) & (y > 0)]
    if pos.size and (log is True or (log is None and not (y[np.isfinite(y)] <= 0).any())):
        lo = np.where((lo > 0) | ~(y > 0), lo, pos.min() * 1e-3)
    ax.fill_between(s, lo, y + e, color=color, alpha=0.18, lw=0)


def _log_ticks(ax, flat_linear: bool = False) -> None:
    """Enough distinct labels on a log y axis: matplotlib's decades over three decades or more; 1-2-5
    mantissas over one to three; within one decade (where a log axis is nearly linear) 4-7 evenly spaced
    round values. Labels get as many digits as it takes to differ. `flat_linear`: a curve spanning less
    than 30% becomes a linear axis (log labels there would repeat after rounding)."""
    from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter,
                                   ScalarFormatter)

    lo, hi = ax.get_ylim()
    if ax.get_yscale() != "log" or not (lo > 0 and hi > lo):
        return
    if flat_linear and hi / lo < 1.3:
        ax.set_yscale("linear")
        ax.set_ylim(lo, hi)
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        return
    if hi / lo >= 1000:
        return
    if hi / lo < 10:
        ticks = [t for t in MaxNLocator(nbins=6).tick_values(lo, hi) if lo <= t <= hi and t > 0]
    else:
        ticks = [t for t in LogLocator(base=10, subs=(1.0, 2.0, 5.0)).tick_values(lo, hi) if lo <= t <= hi]
        if len(ticks) < 4:
            ticks = [t for t in LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0, 7.0)).tick_values(lo, hi)
                     if lo <= t <= hi]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(float(k) for k in range(1, 10))))
    ax.yaxis.set_minor_formatter(NullFormatter())
    digits = 1
    while digits < 8 and len({f"{t:.{digits}g}" for t in ticks}) < len(ticks):
        digits += 1
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda v, _: np.format_float_positional(v, precision=digits, fractional=False, trim="-")))


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around probe steps (midpoints; the outer cells as wide as their neighbour)."""
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])


# ---------------------------------------------------------------------------------------------------------
# figures


def pretty(text: str) -> str:
    """ASCII formulas of the theory module in Unicode: theta <- theta - lr g  →  θ ← θ − η g."""
    import re

    for a, b in (("<-", "←"), ("P^-1/2", "P⁻¹ᐟ²"), ("P^-1", "P⁻¹"), ("x P", "×P")):
        text = text.replace(a, b)
    text = re.sub(r"\btheta\b", "θ", text)
    text = re.sub(r"\blr\b", "η", text)
    text = re.sub(r"\bbeta\b", "β", text)
    text = re.sub(r"\bb1\b", "β₁", text)
    text = text.replace("(1-", "(1−")
    return re.sub(r" - ", " − ", text)
