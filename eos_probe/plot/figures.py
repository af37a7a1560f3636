"""Paper-style figures from run files: measured curvature against the predicted stability bands.

Every function reads `Run`s (`eos_probe.load`) and never trains. `make_figure(runs, kind, out)` draws one
kind (`bands`, `lambda`, `loss`, `spectrum`, `commutator`) or a multi-panel `all` figure and writes a PNG
(300 dpi), PDF or SVG (vector) chosen by the extension of `out`. The `draw_*` functions draw one panel on a
given matplotlib axis, for custom layouts in a notebook (they live in `panels`, shared helpers in `style`;
both are re-exported here).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..run import Run
from .panels import (density_grid, draw_bands, draw_commutator, draw_lambda, draw_loss,  # noqa: F401 - re-exported
                     draw_margin, draw_spectrum)
from .style import (COMMUTATOR_REFERENCE, FORMATS, PALETTE, STYLE, _band_label, _by_lr,  # noqa: F401 - re-exported
                    _integer_steps, _key, _log_ticks, _plt, load_runs, pretty, run_colors)


KINDS = ("bands", "lambda", "loss", "margin", "spectrum", "commutator", "entk", "cocd-edge", "tasks", "forgetting",
         "all", "paper")


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
    return out + [f"Note: {pretty(w)}." for w in warns] + _verdict_notes(runs)


def _verdict_notes(runs: Sequence[Run]) -> list[str]:
    """What the verdicts shown do not say (the notes of `Run.verdicts`), once each."""
    seen: dict[tuple[str, str], None] = {}
    for r in _by_lr(runs):
        if not len(r.probe):
            continue
        v = r.verdicts()
        for label, note in zip(v["verdict"], v["note"]):
            if label and note:
                seen.setdefault((label, note), None)
    return [f"Verdict {pretty(label)}: {pretty(note)}." for label, note in seen]


def _footnote(fig, notes: list[str], width: int = 150) -> None:
    import textwrap

    if not notes:
        return
    text = "\n".join(textwrap.fill(n, width, subsequent_indent="    ") for n in notes)
    fig.text(0.0, 0.0, text, ha="left", va="top", fontsize=8, color="0.25", transform=fig.transFigure)


def _default_out(runs: Sequence[Run], kind: str, fmt: str = ".png") -> Path:
    """figures/<run>-<kind>.png beside the (first) run file, wherever the command is run from."""
    stem = runs[0].path.stem + (f"+{len(runs) - 1}" if len(runs) > 1 else "")
    return runs[0].path.parent / "figures" / f"{stem}-{kind}{fmt}"


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
    """Draw `kind` (one of KINDS) for `runs` and write it to `out` (default figures/<run>-<kind>.png in the
    first run file's directory)."""
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
        if kind == "tasks":  # two panels: the accuracy table and each task's accuracy over the boundaries
            from .tasks import tasks_figure

            return _titled(tasks_figure(runs), title)
        if kind == "paper":  # the gallery's single-column figure (figures/)
            from .paper import paper_figure

            return _titled(paper_figure(runs), title)
        if kind == "forgetting":
            from .forgetting import forgetting_figure

            return _titled(forgetting_figure(runs), title)
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
        elif kind == "margin":
            _footnote(fig, _verdict_notes(runs), width=110)
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
        handles.append(Line2D([], [], color=colors[_key(r)], label=label))
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 3))
    if any(k == "bands" for k, _ in panels):
        _footnote(fig, _notes(probed), width=190)
    return fig
