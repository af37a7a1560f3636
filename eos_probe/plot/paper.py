"""The gallery figure (`--kind paper`): one column of panels on a shared step axis, as a paper prints it.

Panels, top to bottom, each where the runs logged it: Tr(H) and Tr(H) + c·λ_max against each run's threshold
(dashed, in the run's colour; λ_max against 2/η for first-order runs; P⁻¹H for Adam), the exact mean-square
sum S(η) against 1, Adam's commutator ratio, and the training loss. One legend below names the runs by what
differs between them (η, β, q, optimizer). Sized for a single column (3.3 in) with every font at 8 pt.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError
from ..run import Run
from ..events import catapults
from .panels import bracket_handle, draw_bands, draw_commutator, draw_loss, draw_margin
from .style import PALETTE, STYLE, _by_lr, _key, _plt, _tex_quantity, _verdict_handles

#: every font at 8 pt: legible at single-column width (3.3 in) without scaling
PAPER_STYLE = {**STYLE, "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 8,
               "xtick.labelsize": 8, "ytick.labelsize": 8, "lines.linewidth": 1.0, "lines.markersize": 2.5,
               "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6}

#: the band of S(η) the gallery counts as "at the edge" (issue goal; figures/README.md)
EDGE_BAND = (0.7, 1.5)

_SHORT = {"lr": "η", "momentum": "β", "queries": "q"}


def short_labels(runs: Sequence[Run]) -> dict[str, str]:
    """Legend labels that name only what differs between the runs (η, β, q, optimizer), plus divergence."""
    def value(r: Run, k: str):
        if k == "lr":
            return r.lr
        if k == "optimizer":
            return r.optimizer
        v = r.config.get(k)
        if k == "momentum" and v is None:
            from ..presets import PRESETS

            p = PRESETS.get(r.optimizer)
            v = p.momentum if p is not None and p.takes_momentum else 0.0
        if k == "queries":
            v = int(v or 1)
        return v

    keys = [k for k in ("optimizer", "lr", "momentum", "queries") if len({str(value(r, k)) for r in runs}) > 1]
    out = {}
    for r in runs:
        parts = []
        for k in keys or ["lr"]:
            v = value(r, k)
            parts.append(str(v) if k == "optimizer" else f"{_SHORT[k]}={v:g}")
        label = ", ".join(parts)
        if r.status == "diverged":
            label += f" (div. {int(r.attrs.get('stop_step', r.steps_done))})"
        out[_key(r)] = label
    return out


def paper_figure(runs: Sequence[Run], width: float = 3.3):
    """The Figure (not saved) for `runs`: curvature against the band, S(η), commutator ratio, loss."""
    from matplotlib.lines import Line2D

    plt = _plt()
    runs = _by_lr(runs)
    # order by what varies, so colours run along the swept value
    colors = {_key(r): PALETTE[i % (len(PALETTE) - 1)] for i, r in enumerate(runs)}
    probed = [r for r in runs if len(r.probe) > 0 and r.curvature()["lambda_max"].notna().any()]
    if not probed:
        raise UserError(f"{runs[0].path}: --kind paper needs probe data (lambda_max, trace); train with probing")
    panels: list[str] = ["bands"]
    if any("ms_margin" in r.probe and r.probe["ms_margin"].notna().any() for r in probed):
        panels.append("margin")
    if any("commutator_ratio" in r.probe for r in probed):
        panels.append("commutator")
    panels.append("loss")
    heights = {"bands": 1.6, "margin": 1.1, "commutator": 1.0, "loss": 1.0}
    with plt.rc_context(PAPER_STYLE):
        fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(width, sum(heights[p] for p in panels) + 0.9),
                                 gridspec_kw={"height_ratios": [heights[p] for p in panels]}, layout="constrained")
        axes = np.atleast_1d(axes)
        try:
            for ax, kind in zip(axes, panels):
                _draw(ax, kind, probed if kind != "loss" else runs, colors)
                ax.set_title("")
                if ax.get_legend() is not None:
                    ax.get_legend().remove()
                ax.set_xlabel("")
            axes[-1].set_xlabel("step")
            for i, ax in enumerate(axes):
                ax.text(0.01, 0.97, "abcdef"[i], transform=ax.transAxes, fontweight="bold", va="top", ha="left")
            labels = short_labels(runs)
            handles = [Line2D([], [], color=colors[_key(r)], label=labels[_key(r)]) for r in runs]
            styles = _style_handles(probed, "margin" in panels)
            # below the step axis: above the panels it would collide with a suptitle under constrained layout
            fig.legend(handles=handles + styles, loc="outside lower center", ncols=2, handlelength=1.8,
                       columnspacing=0.8, borderaxespad=0.2)
        except BaseException:
            plt.close(fig)
            raise
    return fig


def _draw(ax, kind: str, runs: Sequence[Run], colors: dict[str, str]) -> None:
    kw = {"colors": colors, "legend": "none"}
    if kind == "bands":
        draw_bands(ax, runs, **kw)
        quantities = {r.band().quantity for r in runs}
        ax.set_ylabel(" / ".join(sorted(_tex_quantity(q) for q in quantities)))
    elif kind == "margin":
        draw_margin(ax, [r for r in runs if "ms_margin" in r.probe], **kw)
        ax.axhspan(*EDGE_BAND, color="0.5", alpha=0.12, lw=0)
        ax.set_ylabel(r"$S(\eta)$")
    elif kind == "commutator":
        draw_commutator(ax, [r for r in runs if "commutator_ratio" in r.probe], **kw)
        ax.set_ylabel(r"$\|[P,H]\|_F/\|PH\|_F$")
    else:
        draw_loss(ax, runs, **kw)
        ax.set_ylabel("train loss")


def _style_handles(runs: Sequence[Run], margin: bool) -> list:
    from matplotlib.lines import Line2D

    grey = "0.3"
    out = []
    if all(r.band().kind == "classical" for r in runs):
        out += [Line2D([], [], color=grey, label=r"$\lambda_{\max}$"),
                Line2D([], [], color=grey, ls="--", label="2/η (dashed)")]
    else:
        c = sorted({round(r.band().c, 3) for r in runs if r.band().kind != "classical"})
        ctext = f"{c[0]:g}" if len(c) == 1 else "c"
        q = " / ".join(sorted({_tex_quantity(r.band().quantity) for r in runs if r.band().kind != "classical"}))
        lam = " / ".join(sorted({_tex_quantity(r.band().lambda_max_quantity) for r in runs
                                 if r.band().kind != "classical"}))
        out += [Line2D([], [], color=grey, label=f"{q} (±1 s.e.)"),
                Line2D([], [], color=grey, ls="-.", label=f"{q} + {ctext}·{lam}"),
                Line2D([], [], color=grey, ls="--", label="threshold T")]
        if any("zo_trace" in r.train and not r.preconditioned for r in runs):
            out.append(Line2D([], [], color=grey, lw=0.7, alpha=0.6, label="ZO-step trace monitor"))
    if margin:
        out.append(Line2D([], [], color="0.5", lw=5, alpha=0.3, label=f"S ∈ [{EDGE_BAND[0]:g}, {EDGE_BAND[1]:g}]"))
        if any("ms_margin_neg" in r.probe and (r.probe["ms_margin_neg"] > 0).any() for r in runs):
            out.append(Line2D([], [], color=grey, ls=":", lw=1.0, label="S_neg (negative mass)"))
        if any(r.track is not None and len(r.track) for r in runs):
            out.append(bracket_handle())
    out += _verdict_handles(runs)
    if any(r.status == "diverged" for r in runs):
        out.append(Line2D([], [], color=grey, ls=":", lw=0.9, label="diverged"))
    if any(c["catapult"] for r in runs for c in catapults(r)):
        out.append(Line2D([], [], ls="", marker="o", mfc="none", mec=grey, ms=7, label="catapult (loss spike, then flatter)"))
    return out


__all__ = ["EDGE_BAND", "PAPER_STYLE", "paper_figure", "short_labels"]
