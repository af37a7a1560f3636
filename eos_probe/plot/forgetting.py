"""The forgetting figure (docs/theory.md §5a): predicted against measured one-step forgetting gap
F_FO − E F_ZO at every probe, coloured by the sign of the curvature excess e_r, and the task accuracy
table a_{t,j} as a heat map when the run trained a task sequence (``/tasks/accuracy``)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import UserError

#: colours of e_r > 0 (ZO should forget less) and e_r ≤ 0
SIGN_COLORS = {True: "#1b7837", False: "#b2182b"}


def gap_agreement(pred: np.ndarray, pred_err: np.ndarray, meas: np.ndarray, meas_err: np.ndarray,
                  e_r: np.ndarray | None = None, k: float = 2.0, linear: np.ndarray | None = None,
                  curv: np.ndarray | None = None, curv_err: np.ndarray | None = None) -> dict[str, float]:
    """How well the predicted gap explains the measured one.

    Probes count as decided where |predicted gap| > k·√(pred_err² + meas_err²). Returns n (probes with
    finite values), n_decided, agree (fraction of decided probes where sign(measured) = sign(e_r), or
    sign(predicted) without e_r), the same per sign of e_r (n_decided_pos / agree_pos for e_r > 0,
    n_decided_neg / agree_neg for e_r < 0: the sign rule is only tested where both occur), pearson_r and
    slope (least squares of measured on predicted), over all finite probes.

    With `linear` (the gap's exact first-order part, `forgetting_pred_linear`), `curv` and `curv_err` (the
    measured curvature part and its error, `forgetting_curv`, `forgetting_zo_cv_err`) the same counts are
    returned with the prefix ``curv_`` for the curvature part (predicted: gap − linear): the part whose sign
    e_r decides (docs/theory.md §5a); the full gap follows e_r only where the linear part is small.
    """
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    se = np.hypot(np.nan_to_num(np.asarray(pred_err, float)), np.nan_to_num(np.asarray(meas_err, float)))
    sign = np.sign(np.asarray(e_r, float)) if e_r is not None else np.sign(pred)
    out = _signs(pred, meas, se, sign, k)
    out.update(pearson_r=math.nan, slope=math.nan)
    ok = np.isfinite(pred) & np.isfinite(meas) & np.isfinite(sign)
    if ok.sum() >= 3 and np.std(pred[ok]) > 0 and np.std(meas[ok]) > 0:
        out["pearson_r"] = float(np.corrcoef(pred[ok], meas[ok])[0, 1])
        out["slope"] = float(np.polyfit(pred[ok], meas[ok], 1)[0])
    if linear is not None and curv is not None:
        cse = np.hypot(np.nan_to_num(np.asarray(pred_err, float)), np.nan_to_num(np.asarray(curv_err, float)))
        cp, cm = pred - np.asarray(linear, float), np.asarray(curv, float)
        out.update({f"curv_{key}": v for key, v in _signs(cp, cm, cse, sign, k).items()})
        ok = np.isfinite(cp) & np.isfinite(cm)
        if ok.sum() >= 3 and np.std(cp[ok]) > 0:
            out["curv_slope"] = float(np.polyfit(cp[ok], cm[ok], 1)[0])
    return out


def _signs(pred: np.ndarray, meas: np.ndarray, se: np.ndarray, sign: np.ndarray, k: float) -> dict[str, float]:
    """n, n_decided, agree, and per sign of `sign` n_decided_pos/neg, agree_pos/neg (see `gap_agreement`)."""
    ok = np.isfinite(pred) & np.isfinite(meas) & np.isfinite(sign)
    decided = ok & (np.abs(pred) > k * se)
    out = {"n": int(ok.sum()), "n_decided": int(decided.sum()),
           "agree": float(np.mean(np.sign(meas[decided]) == sign[decided])) if decided.any() else math.nan}
    for tag, side in (("pos", sign > 0), ("neg", sign < 0)):
        d = decided & side
        out[f"n_decided_{tag}"] = int(d.sum())
        out[f"agree_{tag}"] = float(np.mean(np.sign(meas[d]) == sign[d])) if d.any() else math.nan
    return out


def accuracy_table(path) -> np.ndarray | None:
    """The T×T accuracy table /tasks/accuracy of a run file (after task t, on task j), or None."""
    from ..reading import open_run

    with open_run(path) as f:
        if "tasks" not in f or "accuracy" not in f["tasks"]:
            return None
        return np.asarray(f["tasks"]["accuracy"][()], dtype=float)


def draw_forgetting(ax, runs: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Measured vs predicted gap F_FO − E F_ZO per probe with error bars, y = x dashed, coloured by sign(e_r);
    returns `gap_agreement` per run (also written in the legend)."""
    have = [r for r in runs if "forgetting" in r.probe and r.probe["forgetting"].notna().any()]
    if not have:
        raise UserError(f"{runs[0].path}: no forgetting series with values; train a task sequence with "
                        "--probe forgetting (it is NaN during the first task)")
    stats, lo, hi = {}, math.inf, -math.inf
    for i, r in enumerate(have):
        p = r.probe.dropna(subset=["forgetting", "forgetting_pred_gap"])
        pred, meas = p["forgetting_pred_gap"].to_numpy(), p["forgetting"].to_numpy()
        e = p["forgetting_e_r"].to_numpy()
        curv = {"linear": p["forgetting_pred_linear"].to_numpy(), "curv": p["forgetting_curv"].to_numpy(),
                "curv_err": p["forgetting_zo_cv_err"].to_numpy()} if "forgetting_curv" in p else {}
        s = gap_agreement(pred, p["forgetting_pred_gap_err"].to_numpy(), meas, p["forgetting_err"].to_numpy(), e,
                          **curv)
        stats[r.name] = s
        for positive in (True, False):
            m = (e > 0) == positive
            sign = r"$e_r>0$" if positive else r"$e_r\le0$"
            if m.any():
                ax.errorbar(pred[m], meas[m], xerr=p["forgetting_pred_gap_err"].to_numpy()[m],
                            yerr=p["forgetting_err"].to_numpy()[m], fmt="osD^v"[i % 5], ms=4, lw=0.6,
                            color=SIGN_COLORS[positive],
                            label=f"{_name(r)}: {sign}" if len(have) > 1 else sign)
        lo, hi = min(lo, pred.min(), meas.min()), max(hi, pred.max(), meas.max())
        ax.plot([], [], " ", label=f"{_name(r)}: r={s['pearson_r']:.2f}, slope={s['slope']:.2f}, "
                                   f"sign agrees {s['agree']:.0%} of {s['n_decided']} "
                                   f"({_side(s, 'pos', '>')}, {_side(s, 'neg', '<')})")
        if "curv_n" in s:
            ax.plot([], [], " ", label=f"{_name(r)}: curvature part (gap - linear) sign agrees "
                                       f"{_side(s, 'pos', '>', 'curv_')}, {_side(s, 'neg', '<', 'curv_')}")
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.axhline(0, color="0.6", lw=0.5)
    ax.axvline(0, color="0.6", lw=0.5)
    ax.set_xlabel(r"predicted $F_{FO}-\mathbb{E}F_{ZO}$")
    ax.set_ylabel(r"measured $F_{FO}-\overline{F}_{ZO}$")
    ax.set_title("one-step forgetting gap on the retention loss")
    # below the axes: inside, a dozen runs' lines cover the points they describe
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False)
    return stats


def _side(s: dict[str, float], tag: str, op: str, prefix: str = "") -> str:
    """'e_r>0: 97% of 120' for one sign of e_r (or 'none decided')."""
    n = s[f"{prefix}n_decided_{tag}"]
    return f"$e_r{op}0$: " + (f"{s[f'{prefix}agree_{tag}']:.0%} of {n}" if n else "none decided")


def _name(run: Any) -> str:
    """The run's legend label (optimizer, η, q, ...) and seed, falling back to the file name."""
    try:
        return f"{run.label()}, seed {run.config.get('seed', '?')}"
    except Exception:  # a hand-made run object in a notebook
        return run.name


def draw_accuracy(ax, table: np.ndarray, name: str = "") -> None:
    """The accuracy table as a heat map: row t = after task t, column j = task j (values printed)."""
    T = table.shape[0]
    im = ax.imshow(table, vmin=0, vmax=1, cmap="viridis")
    for t in range(T):
        for j in range(table.shape[1]):
            if np.isfinite(table[t, j]):
                ax.text(j, t, f"{table[t, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if table[t, j] < 0.6 else "k")
    ax.set_xticks(range(table.shape[1]))
    ax.set_yticks(range(T))
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after task t")
    ax.set_title(f"accuracy {name}".strip(), fontsize=8)
    ax.figure.colorbar(im, ax=ax, shrink=0.8)


def forgetting_figure(runs: Sequence[Any]):
    """The gap scatter and, for each run with a task sequence, its accuracy table (one row of panels)."""
    from .style import _plt

    plt = _plt()
    tables = [(_name(r), t) for r in runs if (t := accuracy_table(r.path)) is not None]
    n = 1 + len(tables)
    fig, axes = plt.subplots(1, n, figsize=(5.0 + 3.2 * len(tables), 4.0 + 0.16 * 2 * len(runs)), squeeze=False,
                             layout="constrained")
    try:
        draw_forgetting(axes[0, 0], runs)
        for ax, (name, t) in zip(axes[0, 1:], tables):
            draw_accuracy(ax, t, name)
    except BaseException:
        plt.close(fig)
        raise
    return fig
