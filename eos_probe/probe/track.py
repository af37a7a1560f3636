"""Tracking between certified probes: a warm λ_max of a few products, the free monitor's trace, and from the
two the bracket [S_lo, S_hi] of docs/theory.md §2's tractable bounds (`eos_probe.theory.bracket`).

The bracket's inputs and what they assume:

* λ_max ∈ [θ₁, θ₁ + r]: the top Ritz value of `TRACK_HVPS` Lanczos steps warm-started from the last top
  eigenvector is a lower bound; θ₁ + r (its residual) bounds λ_max only while the warm start still points at
  the top eigenvector — the certified probe checks that, tracking does not;
* Tr H₊ from the ZO monitor's Tr H (± 2 s.e.) plus the negative mass Σ|λ<0| = T·ms_margin_neg (± 2 s.e.) of the
  last certified probe, assumed to drift slowly between probes. Without a monitor (first-order, forward
  differences, CoCD) or under Adam (the monitor measures H, the band is about P⁻¹H) the trace is unknown:
  S_lo = f(θ₁) and S_hi = ∞ — except for the classical band (first order), where S = λ_max/T exactly.
"""
from __future__ import annotations

import math
from typing import Any

from ..curvature.warm import warm_lambda_max
from ..theory import ms_term_function
from ..theory.bracket import s_bracket
from .schedule import TRACK_HVPS

TRACK_COLUMNS = {
    "step": "training step of the tracking estimate",
    "lambda_max": "top Ritz value of a few warm-started Lanczos steps (a lower bound of lambda_max)",
    "lambda_max_err": "its Ritz residual (lambda_max + err bounds the top eigenvalue while the warm start holds)",
    "trace": "Tr(H) used for the bracket: the ZO monitor's zo_trace at the last logged step (NaN: none)",
    "trace_err": "standard error of trace",
    "s_lo": "lower bound of S(lr) from lambda_max and the positive trace (docs/theory.md section 2)",
    "s_hi": "upper bound of S(lr) from lambda_max + err and the positive trace (inf: trace unknown)",
    "nhvp": "Hessian-vector products spent",
    "seconds": "wall time of the tracking step (s)",
}


def track_row(probe: Any, ctx: Any, monitor: dict[str, float] | None) -> dict[str, Any]:
    """One /track row (all columns but step and seconds) at the context's θ."""
    settings = probe.settings
    band = settings["band"]
    which = "P" if settings.get("preconditioned") else "H"
    op = ctx.operator(which)
    v0 = probe.warm.get(f"track/{which}", probe.warm.get(f"lanczos/{which}"))
    if v0 is None or v0.numel() != op.dim:
        import torch

        v0 = torch.ones(op.dim)
    est = warm_lambda_max(op, v0.to(device=op.device, dtype=op.dtype), TRACK_HVPS,
                          generator=ctx.generator("track"))
    probe.warm[f"track/{which}"] = est.extra["vector"].detach().reshape(-1).to("cpu", copy=True)
    lam_lo, lam_hi = est.extra["lower"], est.extra["upper"]
    T = band.threshold
    tr, tr_err = math.nan, math.nan
    if monitor and which == "H":
        tr, tr_err = float(monitor.get("zo_trace", math.nan)), float(monitor.get("zo_trace_err", math.nan))
    if band.kind == "classical":
        s_lo, s_hi = lam_lo / T, lam_hi / T
    else:
        f = ms_term_function(settings["config"], settings["dim"])
        neg, neg_err = (probe.schedule.last_probe.get(k, math.nan) for k in ("neg", "neg_err"))
        neg = 0.0 if not math.isfinite(neg) else neg * T
        neg_err = 0.0 if not math.isfinite(neg_err) else neg_err * T
        if math.isfinite(tr) and math.isfinite(tr_err):
            t_lo, t_hi = tr - 2 * tr_err + neg - 2 * neg_err, tr + 2 * tr_err + neg + 2 * neg_err
        else:
            t_lo, t_hi = lam_lo, math.inf
        s_lo, s_hi = s_bracket(f, lam_lo, lam_hi, t_lo, t_hi)
    return {"lambda_max": est.value, "lambda_max_err": est.error, "trace": tr, "trace_err": tr_err,
            "s_lo": s_lo, "s_hi": s_hi, "nhvp": int(est.n_hvp)}
