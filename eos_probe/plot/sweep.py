"""`eos-probe plot DIR --kind sweep`: the summary quantities of a sweep against the step size η.

One panel per quantity (Tr/T, S(η), η·λ_max, final loss, final accuracy; panels without data are left out),
one line per combination of the other swept settings, diverged points drawn as crosses at the last values
they measured. Reference lines at 1 (Tr/T, S(η)) and 2 (η·λ_max, the classical GD edge).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from .style import FORMATS, STYLE, _plt

PANELS = [("trace_over_T", "last Tr/T  (ZO-GD: Tr(H)·η/(2q))", 1.0), ("s_eta", "last S(η)", 1.0),
          ("eta_lambda_max", "last η·λ_max", 2.0), ("final_loss", "final loss", None),
          ("final_accuracy", "final accuracy", None)]


def _groups(df: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    others = [k for k in keys if k != "lr" and df[k].nunique(dropna=False) > 1]
    if not others:
        return [("", df)]
    out = []
    for values, sub in df.groupby(others, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        out.append((", ".join(f"{k}={v}" for k, v in zip(others, values)), sub))
    return out


def sweep_figure(directory: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Draw the sweep summary of `directory` (written by `eos-probe sweep`) to `out`
    (default <directory>/figures/<dir name>-sweep.png, beside the sweep's run files); returns the path."""
    from ..sweep.driver import read_manifest
    from ..sweep.summary import load_sweep

    directory = Path(directory)
    path = Path(out) if out is not None else directory / "figures" / f"{directory.resolve().name}-sweep.png"
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"--out {path}: unknown figure format {path.suffix or '(none)'!r}; use {', '.join(FORMATS)}")
    if out is not None and not path.parent.is_dir():
        raise UserError(f"--out {path}: directory {path.parent} does not exist")
    keys = list(read_manifest(directory).get("sweep", {}))
    df = load_sweep(directory)
    df = df[df["status"].isin(["finished", "diverged", "interrupted"])]
    if df.empty:
        raise UserError(f"{directory}: no point of the sweep has a run file with data yet")
    panels = [p for p in PANELS if np.isfinite(df[p[0]].to_numpy(dtype=float)).any()]
    plt = _plt()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.0), squeeze=False,
                                 layout="constrained")
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        groups = _groups(df, keys)
        for ax, (col, label, ref) in zip(axes[0], panels):
            for g, (name, sub) in enumerate(groups):
                sub = sub.sort_values("eta")
                c = colors[g % len(colors)]
                ok = sub["status"] != "diverged"
                ax.plot(sub["eta"][ok], sub[col][ok], "o-", color=c, ms=3.5, label=name or None)
                if (~ok).any():
                    ax.plot(sub["eta"][~ok], sub[col][~ok], "x", color=c, ms=7, mew=1.6,
                            label="diverged" if g == 0 else None)
            if ref is not None and col != "final_loss":
                ax.axhline(ref, color="0.3", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_xlabel("η")
            ax.set_title(label)
            if col == "final_loss":
                ax.set_yscale("log")
        handles, labels = axes[0][0].get_legend_handles_labels()
        if labels:
            fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5))
        if title:
            fig.suptitle(title)
        if out is None:
            path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=300, bbox_inches="tight",
                    metadata={"Description": f"eos-probe --kind sweep: {directory}"} if path.suffix != ".pdf" else None)
        plt.close(fig)
    return path
