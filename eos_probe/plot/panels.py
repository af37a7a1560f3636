"""The panels of a figure, each drawn on a given matplotlib axis (for custom layouts in a notebook).

`draw_bands` (measured curvature against the predicted stability bands), `draw_lambda`, `draw_loss`,
`draw_margin` and `draw_commutator`; the spectral density panel is `eos_probe.plot.spectrum`.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..events import catapults
from ..presets import preset
from ..run import Run
from ..theory import band_for
from .style import (COMMUTATOR_REFERENCE, _band_label, _by_lr, _clip_y, _diverged_note, _finite_pos,
                    _integer_steps, _key, _last_verdict, _legend, _log_if_wide, _log_ticks, _lower, _mark_divergence,
                    _negative_note, _require, _shade, _steps, _tex_quantity, _threshold_text, _verdict_handles,
                    _verdict_marks, run_colors)


# ---------------------------------------------------------------------------------------------------------
# panels


def draw_bands(ax, runs: Sequence[Run], normalize: bool = False, *, colors: dict[str, str] | None = None,
               legend: str = "outside") -> None:
    """Tr(H_t) (solid, ±1 s.e. shaded) and Tr(H_t) + c·λ_max(H_t) (dash-dot) per run, with the run's
    threshold T as a dashed line in the same colour; Adam runs use P⁻¹H. `normalize` divides by T.

    Every probe carries a marker in the shape of its verdict (`Run.verdicts`); a trace that is negative
    somewhere (an indefinite H) is drawn on a linear or symmetric log axis, with a note in the panel."""
    runs = _by_lr(runs)
    _require(runs, "bands", lambda r: r.curvature()["lambda_max"].notna().any()
             and (r.band().kind == "classical" or r.curvature()["trace"].notna().any()),
             "lambda_max,trace" + (",precond_lambda_max,precond_trace" if any(r.preconditioned for r in runs) else ""))
    colors = colors or run_colors(runs)
    acc = SimpleNamespace(plotted=[], thresholds=[], handles=[], quantities=set(), classical_only=True,
                          zo_drawn=False, marks=[], shades=[], traces=[], monitors=[])
    for r in runs:
        _draw_run_band(ax, r, colors[_key(r)], normalize, acc)
    plotted, thresholds, handles, quantities = acc.plotted, acc.thresholds, acc.handles, acc.quantities
    classical_only, zo_drawn, marks, shades = acc.classical_only, acc.zo_drawn, acc.marks, acc.shades
    traces, monitors = acc.traces, acc.monitors
    q = " / ".join(sorted(_tex_quantity(x) for x in quantities))
    style = _bands_style(runs, q, classical_only, zo_drawn, normalize)
    ax.set_xlabel("step (updates)")
    ax.set_ylabel(f"{q} / T" if normalize else (q if len(quantities) == 1 else "curvature"))
    # linear axes show the approach to T best; an η sweep spans several T's, and curvature far below T
    # would sit flat on the axis: log axes then (symmetric log where a trace is negative: never dropped)
    # the scale follows the probe's curves: the free monitor's noise (a value ≤ 0 where its window is short)
    # must not turn a positive, certified trace's panel into a symmetric log axis
    probed = [p for p in plotted if not any(p is m for m in monitors)]
    log = (_log_if_wide(ax, [np.array(thresholds)], ratio=3.0, data=probed)
           or _log_if_wide(ax, probed + [np.array(thresholds)], ratio=30.0, data=probed))
    _clip_y(ax, probed if log is True else plotted, thresholds, log)
    for sh in shades:
        _shade(ax, *sh, log=log)
    _negative_note(ax, [("Tr" if not normalize else "Tr/T", _cat(traces), "probe"),
                        ("zo_trace", _cat(monitors), "logged step")], log)
    for r, y, col in marks:
        _verdict_marks(ax, r, y, col)
    _integer_steps(ax)
    _legend(ax, legend, handles, style)
    ax.set_title("measured curvature vs mean-square stability band" if not classical_only
                 else "measured curvature vs classical stability threshold")


def _draw_run_band(ax, r: Run, col: str, normalize: bool, acc: SimpleNamespace) -> None:
    """One run's curves in `draw_bands` (λ_max, or Tr and Tr + c·λ_max, the ZO monitor, T); what the panel
    draws once every run is in (shades, marks, the axis scale) is collected in `acc`."""
    from matplotlib.lines import Line2D

    b, cur = r.band(), r.curvature()
    s = cur["step"].to_numpy()
    scale = 1.0 / b.threshold if normalize else 1.0
    if b.kind == "classical":
        y = cur["lambda_max"].to_numpy() * scale
        ax.plot(s, y, color=col)
        acc.plotted.append(y)
        acc.marks.append((r, y, col))
    else:
        acc.classical_only = False
        tr, tre = cur["trace"].to_numpy() * scale, cur["trace_err"].to_numpy() * scale
        upper = tr + b.c * cur["lambda_max"].to_numpy() * scale
        ax.plot(s, tr, color=col)
        acc.shades.append((s, tr, tre, col))  # drawn once the y scale is known: symlog shows the true lower edge
        ax.plot(s, upper, color=col, ls="-.", lw=1.1, alpha=0.9)
        acc.plotted += [tr, upper, _lower(tr, tre)]
        acc.traces.append(tr)
        acc.marks.append((r, tr, col))
        zt = _draw_zo_trace(ax, r, scale, col)
        if zt is not None:
            acc.zo_drawn = True
            acc.monitors.append(zt)
            acc.plotted.append(zt)
    acc.quantities.add(b.quantity)
    T = 1.0 if normalize else b.threshold
    acc.thresholds.append(T)
    ax.axhline(T, color=col, ls="--", lw=1.0)
    acc.handles.append(Line2D([], [], color=col, label=_band_label(r, b)))
    _mark_divergence(ax, r, col)


def _bands_style(runs: Sequence[Run], q: str, classical_only: bool, zo_drawn: bool, normalize: bool) -> list:
    """The legend's style entries of `draw_bands` (line kinds, then the verdict markers)."""
    from matplotlib.lines import Line2D

    lam = " / ".join(sorted({_tex_quantity(b.lambda_max_quantity) for b in (r.band() for r in runs)
                             if b.kind != "classical"})) or r"$\lambda_{\max}$"
    cs = {round(r.band().c, 6) for r in runs if r.band().kind != "classical"}
    style = [Line2D([], [], color="0.3", label=q + (" (±1 s.e.)" if not classical_only else ""))]
    if not classical_only:
        c_text = f"c={next(iter(cs)):.3g}" if len(cs) == 1 else "c per run"
        style.append(Line2D([], [], color="0.3", ls="-.", label=f"{q} + c·{lam}  ({c_text})"))
    if zo_drawn:
        style.append(Line2D([], [], color="0.3", lw=0.7, alpha=0.6,
                            label=r"Tr(H) from the ZO steps (zo_trace ± s.e., free monitor)"))
    style.append(Line2D([], [], color="0.3", ls="--", label="threshold T" + (" (= 1)" if normalize else "")))
    if any(r.status == "diverged" for r in runs):
        style.append(Line2D([], [], color="0.3", ls=":", lw=0.9, label="run diverged"))
    return style + _verdict_handles(runs)


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, float).ravel() for a in arrays]) if arrays else np.zeros(0)


def _draw_zo_trace(ax, run: Run, scale: float, color: str) -> np.ndarray | None:
    """The free Tr(H) monitor of a ZO run (/train/zo_trace) as a thin line beside the probe's trace; returns
    the values drawn (None when nothing was).

    Not drawn for Adam runs: their band is about P⁻¹H, while the ZO directions measure the plain H."""
    if run.preconditioned or "zo_trace" not in run.train:
        return None
    zt = run.train["zo_trace"].to_numpy() * scale
    ok = np.isfinite(zt)
    if not ok.any():
        return None
    steps = run.train["step"].to_numpy()[ok]
    ax.plot(steps, zt[ok], color=color, lw=0.7, alpha=0.6)
    if "zo_trace_err" in run.train:  # its ±1 s.e. band: the monitor is an estimate, not a measurement
        err = run.train["zo_trace_err"].to_numpy()[ok] * scale
        fin = np.isfinite(err)
        ax.fill_between(steps[fin], (zt[ok] - err)[fin], (zt[ok] + err)[fin], color=color, alpha=0.12, lw=0)
    return zt[ok]


def draw_lambda(ax, runs: Sequence[Run], *, colors: dict[str, str] | None = None, legend: str = "outside") -> None:
    """λ_max(H_t) (P⁻¹H for Adam) against the first-order thresholds 2/η, 2(1+β)/η, 2(1+β)/((1−β)η)."""
    from matplotlib.lines import Line2D

    runs = _by_lr(runs)
    _require(runs, "lambda", lambda r: r.curvature()["lambda_max"].notna().any(),
             "precond_lambda_max" if any(r.preconditioned for r in runs) else "lambda_max")
    colors = colors or run_colors(runs)
    handles, plotted, thresholds, quantities, marks = [], [], [], set(), []
    any_zo = False
    for r in runs:
        col = colors[_key(r)]
        cur = r.curvature()
        fo = band_for({**r.config, "optimizer": preset(r.optimizer).fo_twin}, r.attrs.get("n_params"))
        s = cur["step"].to_numpy()
        y, e = cur["lambda_max"].to_numpy(), cur["lambda_max_err"].to_numpy()
        ax.plot(s, y, color=col, marker="o" if r.band().kind != "classical" else None, ms=2.5)
        _shade(ax, s, y, e, col)
        ax.axhline(fo.threshold, color=col, ls="--", lw=1.0)
        if r.band().kind == "classical":  # λ_max/T is a first-order run's verdict: mark it here
            marks.append((r, y, col))
        plotted += [y, _lower(y, e)]
        thresholds.append(fo.threshold)
        quantities.add(fo.quantity)
        label = f"{r.label()}  (first-order edge {_threshold_text(fo)}"
        zo = r.band()
        if zo.kind != "classical" and np.isfinite(zo.lambda_max_limit):
            # the per-mode limit of the ZO run itself (what `eos-probe bands` prints), below 2/η
            ax.axhline(zo.lambda_max_limit, color=col, ls=":", lw=1.2)
            thresholds.append(zo.lambda_max_limit)
            label += f"; ZO per-mode limit {zo.lambda_max_limit:.4g}"
            any_zo = True
        verdict = _last_verdict(r) if zo.kind == "classical" else ""
        handles.append(Line2D([], [], color=col, label=label + ")" + verdict + _diverged_note(r)))
        _mark_divergence(ax, r, col)
    q = " / ".join(sorted(_tex_quantity(x) for x in quantities))
    log = _log_if_wide(ax, plotted + [np.array(thresholds)], ratio=8.0)
    _clip_y(ax, plotted, thresholds, log)
    for r, y, col in marks:
        _verdict_marks(ax, r, y, col)
    ax.set_xlabel("step (updates)")
    ax.set_ylabel(q)
    _integer_steps(ax)
    styles = [Line2D([], [], color="0.3", marker="o", ms=3, label=q + " (± Ritz residual bound)"),
              Line2D([], [], color="0.3", ls="--", label="first-order threshold")]
    if any_zo:
        styles.append(Line2D([], [], color="0.3", ls=":", lw=1.2, label="ZO per-mode limit (mean square)"))
    styles += _verdict_handles([r for r, _, _ in marks])
    _legend(ax, legend, handles, styles)
    ax.set_title("sharpness vs the classical edge of stability" if not any_zo
                 else "sharpness vs the first-order edge and the ZO per-mode limit")


def draw_loss(ax, runs: Sequence[Run], *, colors: dict[str, str] | None = None, legend: str = "inside") -> None:
    """Training loss (log scale) against the step; a diverged run ends in ×."""
    runs = _by_lr(runs)
    colors = colors or run_colors(runs)
    any_rows = False
    conventions = set()
    for r in runs:
        if len(r.train) == 0:
            continue
        any_rows = True
        col = colors[_key(r)]
        s, loss = r.train["step"].to_numpy(), r.train["loss"].to_numpy()
        ok = np.isfinite(loss) & (loss > 0)
        ax.plot(s[ok], loss[ok], color=col, label=r.label() + _diverged_note(r), lw=1.2)
        if r.status == "diverged" and ok.any():
            ax.plot(s[ok][-1], loss[ok][-1], marker="x", color=col, ms=6, mew=1.5)
        for c in catapults(r):  # a catapult's peak gets an open circle (eos_probe.events)
            if c["catapult"]:
                i = int(np.searchsorted(s, c["peak"]))
                ax.plot(s[i], loss[i], marker="o", mfc="none", mec=col, ms=7, mew=1.2, gid=f"catapult|{c['peak']}")
        conventions.add(r.config.get("loss", "mse"))
    if not any_rows:
        raise UserError(f"{runs[0].path}: no training rows logged yet; nothing to plot")
    ax.set_yscale("log")
    # a diverged run's last loss (up to 1000× the start, or inf) would flatten every other curve
    finite = np.concatenate([_finite_pos(r.train["loss"].to_numpy()) for r in runs if len(r.train)])
    start = max(float(r.train["loss"].iloc[0]) for r in runs if len(r.train))
    if finite.size and finite.max() > 30 * start:
        ax.set_ylim(finite.min() / 1.5, 30 * start)
        for ln in ax.get_lines():
            ln.set_clip_on(True)
        for r in runs:
            if r.status == "diverged" and len(r.train):
                ax.plot(r.train["step"].iloc[-1], 30 * start, marker="^", color=colors[_key(r)], ms=6,
                        clip_on=False)
    _log_ticks(ax, flat_linear=True)
    _integer_steps(ax)
    ax.set_xlabel("step (updates)")
    name = {"mse": r"train loss  ($\frac{1}{2}\Sigma(f-y)^2$, mean)", "ce": "train loss (cross-entropy)"}
    ax.set_ylabel(name.get(next(iter(conventions)), "train loss") if len(conventions) == 1 else "train loss")
    if legend in ("inside", "outside"):
        ax.legend(loc="best" if legend == "inside" else "upper left",
                  bbox_to_anchor=None if legend == "inside" else (1.01, 1.0))
    ax.set_title("training loss (full batch)")


def draw_margin(ax, runs: Sequence[Run], *, colors: dict[str, str] | None = None, legend: str = "outside") -> None:
    """The exact mean-square sum S(η) (probe `ms_margin`, docs/theory.md §2) against the step: stable iff S < 1.

    Every probe carries a marker in the shape of its verdict (`Run.verdicts`; S = ∞ at the top of the axis);
    the negative-curvature mass S_neg (`ms_margin_neg`, not part of S) is drawn dotted where it was logged."""
    from matplotlib.lines import Line2D

    runs = _by_lr(runs)
    _require(runs, "margin", lambda r: "ms_margin" in r.probe, "ms_margin")
    colors = colors or run_colors(runs)
    handles, plotted, marks, infinite, shades = [], [], [], [], []
    neg_drawn = False
    for r in runs:
        col = colors[_key(r)]
        s = _steps(r)
        y, e = r.probe["ms_margin"].to_numpy(), r.probe["ms_margin_err"].to_numpy()
        ax.plot(s, y, color=col)
        shades.append((s, y, e, col))
        plotted += [y, _lower(y, e)]
        marks.append((r, y, col))
        infinite.append(y)
        if "ms_margin_neg" in r.probe:
            neg = r.probe["ms_margin_neg"].to_numpy()
            if (np.isfinite(neg) & (neg > 0)).any():
                ax.plot(s, neg, color=col, ls=":", lw=1.0, gid=f"S_neg|{_key(r)}")
                plotted.append(neg)
                neg_drawn = True
        handles.append(Line2D([], [], color=col,
                              label=r.label() + _last_verdict(r) + _diverged_note(r)))
        _mark_divergence(ax, r, col)
    ax.axhline(1.0, color="0.2", ls="--", lw=1.0)
    log = _log_if_wide(ax, plotted + [np.array([1.0])], ratio=30.0)
    _clip_y(ax, plotted, [1.0], log)
    for sh in shades:
        _shade(ax, *sh, log=log)
    tracked = any(_draw_bracket(ax, r, colors[_key(r)]) for r in runs)
    k = int(np.sum(np.isposinf(_cat(infinite))))
    if k:
        ax.text(0.01, 0.98, f"S = inf at {k} probe{'s' if k > 1 else ''}: marked at the top", transform=ax.transAxes,
                fontsize=8, color="0.25", ha="left", va="top", gid="inf-note", in_layout=False)
    for r, y, col in marks:
        _verdict_marks(ax, r, y, col)
    _integer_steps(ax)
    ax.set_xlabel("step (updates)")
    ax.set_ylabel(r"$S(\eta)=\mathrm{Tr}\,f(H)$")
    style = [Line2D([], [], color="0.3", label="S(η) (±1 s.e.)")]
    if neg_drawn:
        style.append(Line2D([], [], color="0.3", ls=":", lw=1.0, label="S_neg = Σ|λ<0|/T (not in S)"))
    style.append(Line2D([], [], color="0.2", ls="--", label="S = 1: mean-square edge"))
    if tracked:
        style.append(bracket_handle())
    _legend(ax, legend, handles, style + _verdict_handles(runs))
    ax.set_title("exact mean-square stability sum (stable iff S < 1)")


def bracket_handle():
    """The legend entry of the tracking bracket."""
    from matplotlib.patches import Patch

    return Patch(facecolor="0.5", alpha=0.25, hatch="///", edgecolor="0.5", lw=0,
                 label="tracked bracket [S_lo, S_hi] (λ_max, trace bounds)")


def _draw_bracket(ax, run: Run, color: str) -> bool:
    """The tracking bracket [S_lo, S_hi] between certified probes (budget schedules, /track) as a hatched band;
    an unbounded S_hi reaches the top of the axis. True if anything was drawn."""
    tr = run.track
    if tr is None or not len(tr) or "s_lo" not in tr:
        return False
    lo, hi = tr["s_lo"].to_numpy(), tr["s_hi"].to_numpy()
    ok = np.isfinite(lo)
    if not ok.any():
        return False
    top = ax.get_ylim()[1]
    st = tr["step"].to_numpy()[ok]
    ax.fill_between(st, lo[ok], np.minimum(np.where(np.isfinite(hi[ok]), hi[ok], top), top), step="mid",
                    facecolor=color, alpha=0.18, hatch="///", edgecolor=color, lw=0, gid=f"bracket|{_key(run)}")
    ax.set_ylim(top=top)
    return True


def draw_commutator(ax, runs: Sequence[Run], *, colors: dict[str, str] | None = None,
                    legend: str = "inside") -> None:
    """Commutator ratio r = ‖PH − HP‖_F/‖PH‖_F against the step, with the 0.05 reference level."""
    runs = _by_lr(runs)
    _require(runs, "commutator", lambda r: "commutator_ratio" in r.probe, "commutator_ratio (Adam runs only)")
    colors = colors or run_colors(runs)
    for r in runs:
        col = colors[_key(r)]
        s = _steps(r)
        y, e = r.probe["commutator_ratio"].to_numpy(), r.probe["commutator_ratio_err"].to_numpy()
        # r = 0 exactly while P is still its initial constant (before the first update): no point on log axes
        pos = np.isfinite(y) & (y > 0)
        s, y, e = s[pos], y[pos], e[pos]
        ax.plot(s, y, color=col, marker="o", ms=2.5, label=r.label())
        _shade(ax, s, y, e, col, log=True)
        _mark_divergence(ax, r, col)
    ax.axhline(COMMUTATOR_REFERENCE, color="0.2", ls=":", lw=1.0,
               label=f"{COMMUTATOR_REFERENCE:g} (level observed under ZO-Adam; not a threshold)")
    ax.set_yscale("log")
    _log_ticks(ax)
    _integer_steps(ax)
    ax.set_xlabel("step (updates)")
    ax.set_ylabel(r"$\|PH-HP\|_F\,/\,\|PH\|_F$")
    if legend != "none":
        handles, labels = ax.get_legend_handles_labels()
        keep = [(h, l) for h, l in zip(handles, labels) if legend != "styles" or l.startswith(f"{COMMUTATOR_REFERENCE:g}")]
        ax.legend(*zip(*keep), loc="best") if keep else None
    ax.set_title("commutator ratio of Adam's P and H")
