"""`--kind tasks`: a task sequence's accuracy table a[t, j] as a heat map, and each task's accuracy over the
task boundaries (docs/theory.md §5b); several runs share the second panel (one line style per run)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError
from ..run import Run
from .style import PALETTE, _plt

STYLES = ("-", "--", ":", "-.")


def draw_task_table(ax, run: Run) -> None:
    """Heat map of a[t, j] (row: after task t; column: on task j), each cell annotated; NaN cells left blank."""
    df = _tasks(run)
    table = df.pivot(index="after", columns="task", values="accuracy").to_numpy()
    T = table.shape[0]
    im = ax.imshow(np.ma.masked_invalid(table), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.grid(False)
    for t in range(T):
        for j in range(T):
            if np.isfinite(table[t, j]):
                ax.text(j, t, f"{table[t, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if table[t, j] < 0.6 else "black")
    names = [f"{j}: {c}" for j, c in enumerate(df[df["after"] == 0]["classes"])]
    ax.set_xticks(range(T), names, rotation=30 if T > 4 else 0)
    ax.set_yticks(range(T), [str(t) for t in range(T)])
    ax.set_xlabel("evaluated on task (classes)")
    ax.set_ylabel("after training task")
    a = df.attrs
    ax.set_title(f"{run.label()}\navg {a['average_accuracy']:.3f}, last {a['last_accuracy']:.3f}, "
                 f"F {a['forgetting']:.3f}", fontsize=9)
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="test accuracy")


def draw_task_curves(ax, runs: Sequence[Run]) -> None:
    """Each task's test accuracy at every task boundary (x: step); colour = task, line style = run."""
    for k, r in enumerate(runs):
        df = _tasks(r)
        for j, g in df.groupby("task"):
            g = g.dropna(subset=["accuracy"])
            label = f"task {j} ({g['classes'].iloc[0]})" if k == 0 and len(g) else None
            ax.plot(g["step"], g["accuracy"], STYLES[k % len(STYLES)], marker="o", ms=3,
                    color=PALETTE[int(j) % len(PALETTE)], label=label)
        for b in df.attrs["boundaries"][1:-1]:
            ax.axvline(b, color="0.8", lw=0.6, zorder=0)
    if len(runs) > 1:
        for k, r in enumerate(runs):
            ax.plot([], [], STYLES[k % len(STYLES)], color="0.3", label=r.label())
    ax.set_xlabel("step (task boundaries)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("accuracy of each task after each task")
    ax.legend(fontsize=7)


def tasks_figure(runs: Sequence[Run]):
    """Heat map of the first run's accuracy table beside every run's per-task accuracy over the boundaries."""
    for r in runs:
        _tasks(r)
    fig, (left, right) = _plt().subplots(1, 2, figsize=(10.5, 4.0), layout="constrained",
                                         gridspec_kw={"width_ratios": [1, 1.3]})
    draw_task_table(left, runs[0])
    draw_task_curves(right, runs)
    return fig


def _tasks(run: Run):
    df = run.tasks
    if df is None:
        raise UserError(f"{run.path}: no task table; train with --tasks (e.g. --tasks \"0,1;2,3\")")
    return df
