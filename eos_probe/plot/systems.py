"""Figures of the related systems (docs/theory.md §5c–5d): the ZO-eNTK error law and CoCD's edge over training."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError
from ..run import Run


def draw_entk(ax, runs: Sequence[Run]) -> None:
    """Measured relative Frobenius error of K_ZO against P (log–log) at every probe step, beside the exact
    prediction (dashed) — probe metric `entk_fidelity`."""
    import matplotlib as mpl

    have = [r for r in runs if r.has("entk_fidelity_rel_err")]
    if not have:
        raise UserError(f"{runs[0].path}: no entk_fidelity series; train with --probe entk_fidelity")
    for r in have:
        P = np.asarray(r.series_attrs("entk_fidelity_rel_err").get("P"), dtype=float)
        meas, pred = r.probe_array("entk_fidelity_rel_err"), r.probe_array("entk_fidelity_rel_err_pred")
        steps = r.probe["step"].to_numpy()
        cmap = mpl.colormaps["viridis"]
        for i, s in enumerate(steps):
            c = cmap(i / max(1, len(steps) - 1))
            label = f"{r.name}: step {s}" if len(have) > 1 else f"step {s}"
            ax.loglog(P, meas[i], "o-", color=c, ms=3, label=label)
            ax.loglog(P, pred[i], "--", color=c, lw=0.8)
    ax.set_xlabel("directions P")
    ax.set_ylabel(r"$\|K_{ZO}-K\|_F/\|K\|_F$")
    ax.set_title(r"ZO eNTK: measured (o) vs exact $\sqrt{(1+r_{eff})/P}$ (dashed)")
    ax.legend(fontsize=7)


def draw_cocd_edge(ax, runs: Sequence[Run]) -> None:
    """lr/α*(H_t) over steps (CoCD's own edge at 1), beside lr·λ_max/2 (the B = d, GD edge) — probe metric
    `cocd_edge`."""
    have = [r for r in runs if r.has("cocd_edge_ratio")]
    if not have:
        raise UserError(f"{runs[0].path}: no cocd_edge series; train a cocd/bccd run with --probe cocd_edge")
    for r in have:
        steps = r.probe["step"].to_numpy()
        line, = ax.plot(steps, r.probe["cocd_edge_ratio"], "o-", ms=3, label=f"{r.label()}: lr/α*(H_t)")
        ax.plot(steps, r.lr / r.probe["cocd_edge_gd"], ":", color=line.get_color(), label=f"{r.label()}: lr·λmax/2")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(r"lr / $\alpha^*(H_t)$")
    ax.set_title("CoCD edge: exact monodromy threshold of the local quadratic")
    ax.legend(fontsize=7)
