"""Events in a run file that figures and summaries name: catapults, and what the probe grid could see.

A **catapult** (Lewkowycz et al. 2020) is a loss spike that the run survives by moving to flatter ground: the
loss rises `SPIKE` or more above its running minimum, comes back below that level, and the curvature measured
after the spike (λ_max or Tr(H), from a certified probe or a tracking step) is at least `DROP` below the last
value measured before it. A spike without a measurement on both sides is reported as such, not as a catapult.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

#: a loss spike: the logged loss this fraction or more above its running minimum
SPIKE = 0.5
#: a catapult: λ_max or Tr after the spike at least this fraction below the last value before it
DROP = 0.1


def _curvature_series(run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, λ_max, Tr) from the certified probes and the tracking rows, merged by step."""
    parts = []
    cur = run.curvature() if len(run.probe) else None
    if cur is not None and len(cur):
        parts.append((cur["step"].to_numpy(), cur["lambda_max"].to_numpy(), cur["trace"].to_numpy()))
    tr = getattr(run, "track", None)
    if tr is not None and len(tr):
        parts.append((tr["step"].to_numpy(), tr["lambda_max"].to_numpy(), tr["trace"].to_numpy()))
    if not parts:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    s = np.concatenate([p[0] for p in parts])
    order = np.argsort(s, kind="stable")
    return s[order], np.concatenate([p[1] for p in parts])[order], np.concatenate([p[2] for p in parts])[order]


def loss_spikes(steps: np.ndarray, loss: np.ndarray, spike: float = SPIKE) -> list[tuple[int, int, int]]:
    """(start, peak, end) steps of each stretch where the loss lies `spike` or more above its running minimum
    (end: the first step back below that level; -1 if it never came back)."""
    out, i, n = [], 0, len(loss)
    run_min = math.inf
    while i < n:
        if not math.isfinite(loss[i]):
            break
        if loss[i] > (1.0 + spike) * run_min:
            level, j = (1.0 + spike) * run_min, i
            while j < n and math.isfinite(loss[j]) and loss[j] > level:
                j += 1
            peak = i + int(np.argmax(np.where(np.isfinite(loss[i:j]), loss[i:j], -np.inf)))
            back = j < n and math.isfinite(loss[j])
            out.append((int(steps[i]), int(steps[peak]), int(steps[j]) if back else -1))
            if not back:
                break
            i = j
            continue
        run_min = min(run_min, float(loss[i]))
        i += 1
    return out


def catapults(run, spike: float = SPIKE, drop: float = DROP) -> list[dict[str, Any]]:
    """Every loss spike of a run with what the curvature did around it (module docstring).

    Returns one dict per spike: `start`, `peak`, `end` (steps; end -1 = never recovered), `loss_before`,
    `loss_peak`, `catapult` (True / False / None = curvature not measured on both sides), and the curvature
    values compared (`lambda_before`, `lambda_after`, `trace_before`, `trace_after`, steps `measured_before`,
    `measured_after`)."""
    if not len(run.train):
        return []
    steps, loss = run.train["step"].to_numpy(), run.train["loss"].to_numpy()
    cs, lam, tr = _curvature_series(run)
    out = []
    for start, peak, end in loss_spikes(steps, loss, spike):
        i0 = int(np.searchsorted(steps, start))
        e = {"start": start, "peak": peak, "end": end, "loss_before": float(np.nanmin(loss[: i0 + 1][:-1]))
             if i0 > 0 else math.nan, "loss_peak": float(loss[np.searchsorted(steps, peak)]), "catapult": None}
        before = np.nonzero(cs < start)[0]
        after = np.nonzero(cs >= end)[0] if end >= 0 else np.zeros(0, int)
        if before.size and after.size:
            b, a = before[-1], after[0]
            e.update(measured_before=int(cs[b]), measured_after=int(cs[a]), lambda_before=float(lam[b]),
                     lambda_after=float(lam[a]), trace_before=float(tr[b]), trace_after=float(tr[a]))
            fell = [x1 < (1.0 - drop) * x0 for x0, x1 in ((lam[b], lam[a]), (tr[b], tr[a]))
                    if math.isfinite(x0) and math.isfinite(x1) and x0 > 0]
            e["catapult"] = bool(any(fell)) if fell else None
        out.append(e)
    return out


def probe_grid(run) -> dict[str, Any]:
    """What the probe grid of a run could see: the certified probes' count, steps and largest gap, and (for a
    diverged run) the last probe before the blow-up step."""
    ps = run.probe["step"].to_numpy() if len(run.probe) else np.zeros(0, int)
    out: dict[str, Any] = {"probes": int(ps.size)}
    if ps.size:
        gaps = np.diff(ps)
        out.update(first=int(ps[0]), last=int(ps[-1]), max_gap=int(gaps.max()) if gaps.size else 0,
                   median_gap=float(np.median(gaps)) if gaps.size else 0.0)
    tr = getattr(run, "track", None)
    out["tracks"] = int(len(tr)) if tr is not None else 0
    if run.status == "diverged":
        d = int(run.attrs.get("stop_step", run.steps_done))
        before = ps[ps < d]
        out["last_probe_before_divergence"] = int(before[-1]) if before.size else None
    return out
