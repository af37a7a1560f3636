"""Paper-style figures from run files: measured curvature against the predicted stability bands.

Every function reads `Run`s (`eos_probe.load`) and never trains. `make_figure(runs, kind, out)` draws one
kind (`bands`, `lambda`, `loss`, `spectrum`, `commutator`) or a multi-panel `all` figure and writes a PNG
(300 dpi), PDF or SVG (vector) chosen by the extension of `out`. The `draw_*` functions draw one panel on a
given matplotlib axis, for custom layouts in a notebook.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError
from ..presets import preset
from ..run import Run, band_for

KINDS = ("bands", "lambda", "loss", "margin", "spectrum", "commutator", "entk", "cocd-edge", "all")
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
    return label + _diverged_note(run)


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


def _log_if_wide(ax, values: Iterable[float], ratio: float = 8.0) -> bool:
    v = np.concatenate([_finite_pos(np.atleast_1d(x)) for x in values]) if values else np.zeros(0)
    if v.size and v.max() / v.min() > ratio:
        ax.set_yscale("log")
        return True
    return False


# ---------------------------------------------------------------------------------------------------------
# panels


def draw_bands(ax, runs: Sequence[Run], normalize: bool = False, *, colors: dict[str, str] | None = None,
               legend: str = "outside") -> None:
    """Tr(H_t) (solid, ±1 s.e. shaded) and Tr(H_t) + c·λ_max(H_t) (dash-dot) per run, with the run's
    threshold T as a dashed line in the same colour; Adam runs use P⁻¹H. `normalize` divides by T."""
    from matplotlib.lines import Line2D

    runs = _by_lr(runs)
    _require(runs, "bands", lambda r: r.curvature()["lambda_max"].notna().any()
             and (r.band().kind == "classical" or r.curvature()["trace"].notna().any()),
             "lambda_max,trace" + (",precond_lambda_max,precond_trace" if any(r.preconditioned for r in runs) else ""))
    colors = colors or run_colors(runs)
    plotted: list[np.ndarray] = []
    thresholds = []
    handles = []
    quantities = set()
    classical_only = True
    zo_drawn = False
    for r in runs:
        b = r.band()
        col = colors[_key(r)]
        cur = r.curvature()
        s = cur["step"].to_numpy()
        scale = 1.0 / b.threshold if normalize else 1.0
        if b.kind == "classical":
            y, e = cur["lambda_max"].to_numpy() * scale, cur["lambda_max_err"].to_numpy() * scale
            ax.plot(s, y, color=col, marker="o", ms=2.5)
            plotted.append(y)
        else:
            classical_only = False
            tr, tre = cur["trace"].to_numpy() * scale, cur["trace_err"].to_numpy() * scale
            upper = tr + b.c * cur["lambda_max"].to_numpy() * scale
            ax.plot(s, tr, color=col, marker="o", ms=2.5)
            _shade(ax, s, tr, tre, col)
            ax.plot(s, upper, color=col, ls="-.", lw=1.1, alpha=0.9)
            plotted += [tr, upper, _lower(tr, tre)]
            if _draw_zo_trace(ax, r, scale, col):
                zo_drawn = True
        quantities.add(b.quantity)
        T = 1.0 if normalize else b.threshold
        thresholds.append(T)
        ax.axhline(T, color=col, ls="--", lw=1.0)
        handles.append(Line2D([], [], color=col, marker="o", ms=3, label=_band_label(r, b)))
        _mark_divergence(ax, r, col)
    q = " / ".join(sorted(_tex_quantity(x) for x in quantities))
    lam = " / ".join(sorted({_tex_quantity(b.lambda_max_quantity) for b in (r.band() for r in runs)
                             if b.kind != "classical"})) or r"$\lambda_{\max}$"
    cs = {round(r.band().c, 6) for r in runs if r.band().kind != "classical"}
    style = [Line2D([], [], color="0.3", marker="o", ms=3, label=q + (" (±1 s.e.)" if not classical_only else ""))]
    if not classical_only:
        c_text = f"c={next(iter(cs)):.3g}" if len(cs) == 1 else "c per run"
        style.append(Line2D([], [], color="0.3", ls="-.", label=f"{q} + c·{lam}  ({c_text})"))
    if zo_drawn:
        style.append(Line2D([], [], color="0.3", lw=0.7, alpha=0.6,
                            label=r"Tr(H) from the ZO steps (zo_trace, window mean)"))
    style.append(Line2D([], [], color="0.3", ls="--", label="threshold T" + (" (= 1)" if normalize else "")))
    if any(r.status == "diverged" for r in runs):
        style.append(Line2D([], [], color="0.3", ls=":", lw=0.9, label="run diverged"))
    ax.set_xlabel("step (updates)")
    ax.set_ylabel(f"{q} / T" if normalize else (q if len(quantities) == 1 else "curvature"))
    # linear axes show the approach to T best; an η sweep spans several T's, and curvature far below T
    # would sit flat on the axis: log axes then
    log = _log_if_wide(ax, [np.array(thresholds)], ratio=3.0) or _log_if_wide(ax, plotted + [np.array(thresholds)],
                                                                             ratio=30.0)
    _clip_y(ax, plotted, thresholds, log)
    _integer_steps(ax)
    _legend(ax, legend, handles, style)
    ax.set_title("measured curvature vs mean-square stability band" if not classical_only
                 else "measured curvature vs classical stability threshold")


def _draw_zo_trace(ax, run: Run, scale: float, color: str) -> bool:
    """The free Tr(H) monitor of a ZO run (/train/zo_trace) as a thin line beside the probe's trace.

    Not drawn for Adam runs: their band is about P⁻¹H, while the ZO directions measure the plain H."""
    if run.preconditioned or "zo_trace" not in run.train:
        return False
    zt = run.train["zo_trace"].to_numpy() * scale
    ok = np.isfinite(zt)
    if not ok.any():
        return False
    ax.plot(run.train["step"].to_numpy()[ok], zt[ok], color=color, lw=0.7, alpha=0.6)
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


def _clip_y(ax, plotted: list[np.ndarray], thresholds: list[float], log: bool) -> None:
    """Keep the thresholds and the data in view, but not a divergence blow-up far above every T."""
    data = np.concatenate([_finite_pos(p) for p in plotted]) if plotted else np.zeros(0)
    top = max(thresholds) if thresholds else 1.0
    hi = max(top, float(data.max()) if data.size else top)
    hi = min(hi, 5.0 * top)
    if log:
        lo = min(min(thresholds), float(data.min()) if data.size else top)
        ax.set_ylim(lo / 1.5, hi * 1.5)
        _log_ticks(ax)
    else:
        ax.set_ylim(0.0, hi * 1.08)


def _mark_divergence(ax, run: Run, color: str) -> None:
    if run.status == "diverged" and "stop_step" in run.attrs:
        ax.axvline(run.attrs["stop_step"], color=color, ls=":", lw=0.9)


def draw_lambda(ax, runs: Sequence[Run], *, colors: dict[str, str] | None = None, legend: str = "outside") -> None:
    """λ_max(H_t) (P⁻¹H for Adam) against the first-order thresholds 2/η, 2(1+β)/η, 2(1+β)/((1−β)η)."""
    from matplotlib.lines import Line2D

    runs = _by_lr(runs)
    _require(runs, "lambda", lambda r: r.curvature()["lambda_max"].notna().any(),
             "precond_lambda_max" if any(r.preconditioned for r in runs) else "lambda_max")
    colors = colors or run_colors(runs)
    handles, plotted, thresholds, quantities = [], [], [], set()
    any_zo = False
    for r in runs:
        col = colors[_key(r)]
        cur = r.curvature()
        fo = band_for({**r.config, "optimizer": preset(r.optimizer).fo_twin}, r.attrs.get("n_params"))
        s = cur["step"].to_numpy()
        y, e = cur["lambda_max"].to_numpy(), cur["lambda_max_err"].to_numpy()
        ax.plot(s, y, color=col, marker="o", ms=2.5)
        _shade(ax, s, y, e, col)
        ax.axhline(fo.threshold, color=col, ls="--", lw=1.0)
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
        handles.append(Line2D([], [], color=col, marker="o", ms=3, label=label + ")" + _diverged_note(r)))
        _mark_divergence(ax, r, col)
    q = " / ".join(sorted(_tex_quantity(x) for x in quantities))
    log = _log_if_wide(ax, plotted + [np.array(thresholds)], ratio=8.0)
    _clip_y(ax, plotted, thresholds, log)
    ax.set_xlabel("step (updates)")
    ax.set_ylabel(q)
    _integer_steps(ax)
    styles = [Line2D([], [], color="0.3", marker="o", ms=3, label=q + " (± Ritz residual bound)"),
              Line2D([], [], color="0.3", ls="--", label="first-order threshold")]
    if any_zo:
        styles.append(Line2D([], [], color="0.3", ls=":", lw=1.2, label="ZO per-mode limit (mean square)"))
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


def _shade(ax, s, y, e, color: str, log: bool = False) -> None:
    """±error band; where the lower edge is not positive on a log axis it runs to the axis bottom instead
    of being cut off at an arbitrary decade."""
    y, e = np.asarray(y, float), np.nan_to_num(np.asarray(e, float), nan=0.0)
    lo = y - e
    # the axis may become logarithmic after drawing (`_log_if_wide`); a positive value far below the data
    # looks the same as a negative one on a linear axis that starts at 0, and reaches the bottom of a log axis
    pos = y[np.isfinite(y) & (y > 0)]
    if pos.size:
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


def draw_margin(ax, runs: Sequence[Run], *, colors: dict[str, str] | None = None, legend: str = "outside") -> None:
    """The exact mean-square sum S(η) (probe `ms_margin`, docs/theory.md §2) against the step: stable iff S < 1."""
    from matplotlib.lines import Line2D

    runs = _by_lr(runs)
    _require(runs, "margin", lambda r: "ms_margin" in r.probe, "ms_margin")
    colors = colors or run_colors(runs)
    handles, plotted = [], []
    for r in runs:
        col = colors[_key(r)]
        s = _steps(r)
        y, e = r.probe["ms_margin"].to_numpy(), r.probe["ms_margin_err"].to_numpy()
        ax.plot(s, y, color=col, marker="o", ms=2.5)
        _shade(ax, s, y, e, col)
        plotted += [y, _lower(y, e)]
        handles.append(Line2D([], [], color=col, marker="o", ms=3, label=r.label() + _diverged_note(r)))
        _mark_divergence(ax, r, col)
    ax.axhline(1.0, color="0.2", ls="--", lw=1.0)
    log = _log_if_wide(ax, plotted + [np.array([1.0])], ratio=30.0)
    _clip_y(ax, plotted, [1.0], log)
    _integer_steps(ax)
    ax.set_xlabel("step (updates)")
    ax.set_ylabel(r"$S(\eta)=\mathrm{Tr}\,f(H)$")
    _legend(ax, legend, handles, [Line2D([], [], color="0.3", marker="o", ms=3, label="S(η) (±1 s.e.)"),
                                  Line2D([], [], color="0.2", ls="--", label="S = 1: mean-square edge")])
    ax.set_title("exact mean-square stability sum (stable iff S < 1)")


def density_grid(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-broadened SLQ density on `grid` for each probe step: (n_steps_logged, len(grid)).

    nodes/weights: (n, p, k); the weights of each probe vector are normalised to 1, probes averaged.
    """
    nodes = np.asarray(nodes, float)
    weights = np.nan_to_num(np.asarray(weights, float), nan=0.0)
    nodes = np.where(np.isfinite(nodes), nodes, 0.0)
    tot = weights.sum(-1, keepdims=True)
    w = np.divide(weights, tot, out=np.zeros_like(weights), where=tot > 0)
    z = (grid[None, None, None, :] - nodes[..., None]) / sigma
    dens = (w[..., None] * np.exp(-0.5 * z * z)).sum(2) / (sigma * math.sqrt(2 * math.pi))
    return dens.mean(1)


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


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around probe steps (midpoints; the outer cells as wide as their neighbour)."""
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])


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


def _notes(runs: Sequence[Run]) -> list[str]:
    """Band conventions (once per distinct convention) and approximation warnings (docs/theory.md §1, §3)."""
    groups: dict[str, list[str]] = {}
    warns: list[str] = []
    for r in _by_lr(runs):
        b = r.band()
        groups.setdefault(pretty(b.convention), []).append(f"{r.optimizer} η={r.lr:g}")
        for w in b.warnings:
            if w not in warns:
                warns.append(w)
        if "commutator_ratio" in r.probe and r.probe["commutator_ratio"].notna().any():
            last = r.probe.dropna(subset=["commutator_ratio"]).iloc[-1]
            warns.append(f"{r.label()}: measured commutator ratio r = {last['commutator_ratio']:.3g} "
                         f"at step {int(last['step'])}")
    if len(groups) == 1:
        out = [f"Band convention: {next(iter(groups))}."]
    else:
        out = [f"{', '.join(who)}: {conv}." for conv, who in groups.items()]
    return out + [f"Note: {pretty(w)}." for w in warns]


def _footnote(fig, notes: list[str], width: int = 150) -> None:
    import textwrap

    if not notes:
        return
    text = "\n".join(textwrap.fill(n, width, subsequent_indent="    ") for n in notes)
    fig.text(0.0, 0.0, text, ha="left", va="top", fontsize=6.5, color="0.25", transform=fig.transFigure)


def _default_out(runs: Sequence[Run], kind: str, fmt: str = ".png") -> Path:
    stem = runs[0].path.stem + (f"+{len(runs) - 1}" if len(runs) > 1 else "")
    return Path("figures") / f"{stem}-{kind}{fmt}"


def _save(fig, out: str | Path | None, runs: Sequence[Run], kind: str) -> Path:
    plt = _plt()
    path = Path(out) if out is not None else _default_out(runs, kind)
    if path.suffix.lower() not in FORMATS:
        plt.close(fig)
        raise UserError(f"--out {path}: unknown figure format {path.suffix or '(none)'!r}; use "
                        f"{', '.join(FORMATS)}")
    if out is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        plt.close(fig)
        raise UserError(f"--out {path}: directory {path.parent} does not exist")
    with warnings.catch_warnings(), plt.rc_context(STYLE):
        warnings.simplefilter("ignore", UserWarning)  # tight bbox + rasterized mesh chatter
        fig.savefig(path, metadata=_metadata(path, runs, kind), dpi=300, bbox_inches="tight")
    plt.close(fig)
    return path


def _metadata(path: Path, runs: Sequence[Run], kind: str) -> dict:
    from .. import __version__

    desc = f"eos-probe {__version__} --kind {kind}: " + ", ".join(str(r.path) for r in runs)
    if path.suffix.lower() == ".png":
        return {"Software": f"eos-probe {__version__}", "Description": desc}
    if path.suffix.lower() == ".pdf":
        return {"Creator": f"eos-probe {__version__}", "Subject": desc}
    return {"Description": desc}


def band_figure(runs: Sequence[Run | str | Path], out: str | Path | None = None, *, normalize: bool = False,
                title: str | None = None) -> Path:
    """The paper-style band figure for one or several runs (an η sweep) written to `out`; returns the path."""
    return make_figure(runs, "bands", out, normalize=normalize, title=title)


def make_figure(runs: Sequence[Run | str | Path], kind: str, out: str | Path | None = None, *,
                normalize: bool = False, title: str | None = None) -> Path:
    """Draw `kind` (one of KINDS) for `runs` and write it to `out` (default figures/<run>-<kind>.png)."""
    if out is not None and Path(out).suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: unknown figure format {Path(out).suffix or '(none)'!r}; use {', '.join(FORMATS)}")
    runs = load_runs(runs)
    fig = build_figure(runs, kind, normalize=normalize, title=title)
    return _save(fig, out, runs, kind)


def build_figure(runs: Sequence[Run | str | Path], kind: str, *, normalize: bool = False, title: str | None = None):
    """The matplotlib Figure of `kind` for `runs` (not saved; close it with plt.close when done)."""
    if kind not in KINDS:
        raise UserError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    runs = load_runs(runs)
    plt = _plt()
    with plt.rc_context(STYLE):
        if kind == "all":
            return _titled(_all_figure(runs, normalize), title)
        if kind == "spectrum":
            fig, axes = plt.subplots(len(runs), 1, figsize=(6.4, 3.2 * len(runs)), squeeze=False,
                                     layout="constrained")
        else:
            fig, ax = plt.subplots(figsize=(7.2, 3.8), layout="constrained")
        try:
            if kind == "spectrum":
                for ax, r in zip(axes[:, 0], runs):
                    draw_spectrum(ax, r)
            else:
                {"bands": lambda: draw_bands(ax, runs, normalize), "lambda": lambda: draw_lambda(ax, runs),
                 "margin": lambda: draw_margin(ax, runs),
                 "loss": lambda: draw_loss(ax, runs), "commutator": lambda: draw_commutator(ax, runs),
                 "entk": lambda: _systems().draw_entk(ax, runs),
                 "cocd-edge": lambda: _systems().draw_cocd_edge(ax, runs)}[kind]()
        except BaseException:
            plt.close(fig)
            raise
        if kind == "bands":
            _footnote(fig, _notes(runs), width=110)
        return _titled(fig, title)


def _systems():
    from . import systems

    return systems


def _titled(fig, title: str | None):
    if title:
        fig.suptitle(title)
    return fig


def _all_figure(runs: Sequence[Run], normalize: bool):
    """Every panel the files have data for: loss, bands, lambda, commutator, spectrum (first run with one).

    One legend above the panels names the runs (same colour in every panel); panels keep their line-style keys.
    """
    from matplotlib.lines import Line2D

    plt = _plt()
    colors = run_colors(runs)
    probed = [r for r in runs if len(r.probe) > 0]
    kw = {"colors": colors, "legend": "styles"}
    panels: list[tuple[str, object]] = [("loss", lambda ax: draw_loss(ax, runs, **kw))]
    if probed and all(r.curvature()["lambda_max"].notna().any() for r in probed):
        if any(r.band().kind != "classical" for r in probed) and all(
                r.band().kind == "classical" or r.curvature()["trace"].notna().any() for r in probed):
            panels.append(("bands", lambda ax: draw_bands(ax, probed, normalize, **kw)))
        panels.append(("lambda", lambda ax: draw_lambda(ax, probed, **kw)))
    margin = [r for r in probed if "ms_margin" in r.probe and r.probe["ms_margin"].notna().any()]
    if margin:
        panels.append(("margin", lambda ax: draw_margin(ax, margin, **kw)))
    adam = [r for r in probed if "commutator_ratio" in r.probe]
    if adam:
        panels.append(("commutator", lambda ax: draw_commutator(ax, adam, **kw)))
    dens = [r for r in runs if r.spectra_names]
    if dens:
        panels.append(("spectrum", lambda ax: draw_spectrum(ax, dens[0])))
    if len(panels) == 1 and not probed:
        raise UserError(f"{runs[0].path}: no probe data for --kind all beyond the loss (trained with --probe none?); "
                        f"use --kind loss, or train with probing")
    n = len(panels)
    ncols = 1 if n == 1 else 3 if n in (3, 5, 6) else 2  # no empty quadrant for three panels
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False, layout="constrained")
    for ax, (_, draw) in zip(axes.ravel(), panels):
        draw(ax)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.ravel()[:n]):
        ax.text(-0.1, 1.03, "abcdefgh"[i], transform=ax.transAxes, fontweight="bold", fontsize=11, va="bottom")
    handles = []
    for r in _by_lr(runs):
        label = _band_label(r, r.band()) if r in probed else r.label()
        handles.append(Line2D([], [], color=colors[_key(r)], marker="o", ms=3, label=label))
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 3))
    if any(k == "bands" for k, _ in panels):
        _footnote(fig, _notes(probed), width=190)
    return fig
