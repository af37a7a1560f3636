"""Both signs of the curvature excess, pooled over a forgetting sweep (docs/continual.md).

    python benchmarks/forgetting_signs.py runs/forgetting-halves [--markdown]

For every run file in the directory: the probes' predicted and measured one-step forgetting gap and its
curvature part (gap minus the exact first-order part; measured with the control-variate ZO mean), pooled per
q and over all runs. Sign agreement is counted separately for e_r > 0 and e_r < 0 at the decided probes
(|predicted| > 2 combined standard errors), with the slope of measured on predicted curvature part, which the
theory puts at 1 for every q (τ(q) = d/(q+d+1) is inside the prediction).
"""
from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import pandas as pd

import eos_probe
from eos_probe.plot.forgetting import gap_agreement


def pooled(directory: str) -> pd.DataFrame:
    """One row per probe with a forgetting value, over every run file in `directory`."""
    frames = []
    for path in sorted(glob.glob(os.path.join(directory, "*.h5"))):
        r = eos_probe.load(path)
        p = r.probe.dropna(subset=["forgetting", "forgetting_pred_gap", "forgetting_curv"])
        frames.append(p.assign(queries=int(r.config.get("queries") or 1), lr=float(r.config["lr"]),
                               run=os.path.basename(path)))
    if not frames:
        raise SystemExit(f"{directory}: no run file with forgetting_curv values (train the forgetting sweep first)")
    return pd.concat(frames, ignore_index=True)


def stats(p: pd.DataFrame) -> dict[str, float]:
    """`gap_agreement` with the curvature part, over the probes of `p`."""
    c = lambda k: p[k].to_numpy()  # noqa: E731
    return gap_agreement(c("forgetting_pred_gap"), c("forgetting_pred_gap_err"), c("forgetting"), c("forgetting_err"),
                         c("forgetting_e_r"), linear=c("forgetting_pred_linear"), curv=c("forgetting_curv"),
                         curv_err=c("forgetting_zo_cv_err"))


def figure(p: pd.DataFrame, out: str) -> None:
    """Predicted against measured, the full gap and its curvature part, coloured by the sign of e_r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eos_probe.plot.forgetting import SIGN_COLORS

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.2), layout="constrained")
    lin = p["forgetting_pred_linear"].to_numpy()
    panels = ((p["forgetting_pred_gap"].to_numpy(), p["forgetting"].to_numpy(), "full gap $F_{FO}-F_{ZO}$"),
              (p["forgetting_pred_gap"].to_numpy() - lin, p["forgetting_curv"].to_numpy(),
               "curvature part (gap $-$ first-order part)"))
    pos = p["forgetting_e_r"].to_numpy() > 0
    for ax, (x, y, title) in zip(axes, panels):
        for side, label in ((True, "$e_r>0$"), (False, "$e_r<0$")):
            m = pos == side
            ax.scatter(x[m], y[m], s=6, color=SIGN_COLORS[side], label=f"{label} ({int(m.sum())} probes)", alpha=0.7)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.axhline(0, color="0.6", lw=0.5)
        ax.axvline(0, color="0.6", lw=0.5)
        ax.set_xlabel("predicted")
        ax.set_ylabel("measured")
        ax.set_title(title, fontsize=10)
        ax.ticklabel_format(style="sci", scilimits=(-2, 2))
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"one-step forgetting on the retention loss: {p['run'].nunique()} runs, {len(p)} probes", fontsize=10)
    fig.savefig(out, dpi=150)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--figure", help="also draw the pooled scatter (full gap | curvature part) to this file")
    args = ap.parse_args()
    p = pooled(args.directory)
    if args.figure:
        figure(p, args.figure)
    rows = [("all", p)] + [(f"q = {q}", g) for q, g in p.groupby("queries")]
    print(f"{len(p)} probes in {p['run'].nunique()} runs; e_r < 0 at {int((p['forgetting_e_r'] < 0).sum())}")
    print("| probes | e_r > 0: curvature part agrees | e_r < 0: curvature part agrees | curvature slope | "
          "e_r > 0: full gap agrees | e_r < 0: full gap agrees | gap r / slope |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, g in rows:
        s = stats(g)

        def side(prefix: str, tag: str) -> str:
            n = s[f"{prefix}n_decided_{tag}"]
            return f"{s[f'{prefix}agree_{tag}']:.1%} of {n}" if n else "none decided"

        print(f"| {name} ({len(g)}) | {side('curv_', 'pos')} | {side('curv_', 'neg')} | "
              f"{s.get('curv_slope', np.nan):.3f} | {side('', 'pos')} | {side('', 'neg')} | {s['pearson_r']:.3f} / {s['slope']:.3f} |")


if __name__ == "__main__":
    main()
