"""A free curvature monitor from the ZO step itself (docs/theory.md §4, `zo_trace`).

With the central difference and the loss at θ,

    (L(θ+μu) + L(θ−μu) − 2L(θ)) / μ² = uᵀHu + O(μ²),

and E[uᵀHu] = Tr H for every direction law of the two-point source (Gaussian, sphere of radius √d,
Rademacher: all have E[u uᵀ] = I). So every step whose loss at θ is known gives one unbiased Hutchinson
sample of Tr H (q samples for q queries, averaged) at no cost beyond the step's own forwards. The trainer
evaluates L(θ) on every logged step (every `log_every`), so the monitor samples exactly there: free on
those steps, and `--log-every 1` samples every step for one extra forward each.

The directions are isotropic in θ-space for every ZO rule, so under ZO-Adam this is Tr H of the plain
Hessian, not Tr(P⁻¹H).

Per logged step the run file gets `/train/zo_trace_raw` (the step's sample), and over the last `window`
finite samples `/train/zo_trace` (their mean) and `/train/zo_trace_err` (standard error of that mean,
s/√n: the spread of the directions only, treating the window's samples as independent — the drift of
Tr H across the window is not in it). Rows without a sample (the final step, which takes no ZO step, and
forward differences, which have no symmetric pair) hold NaN in `zo_trace_raw`.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
from torch import Tensor

#: default number of logged samples in the window (50 samples = 500 steps at the ZO default log_every 10)
DEFAULT_WINDOW = 50

COLUMNS = ("zo_trace", "zo_trace_err", "zo_trace_raw")

DESCRIPTIONS = {
    "zo_trace": "Tr(H) from the ZO step's own queries: mean of the last `window` finite zo_trace_raw samples",
    "zo_trace_err": "standard error of zo_trace (sample std / sqrt(n) over the window; NaN for n < 2)",
    "zo_trace_raw": "this step's sample: mean over queries of (L(θ+μu)+L(θ−μu)−2L(θ))/μ², in float64; "
                    "E = u^T H u averaged = Tr(H) + O(μ²); NaN where the step took no central-difference query",
}


def curvature_sample(lp: Tensor, lm: Tensor, loss0: Tensor, mu: float) -> Tensor:
    """One sample of Tr H per copy: mean over the q queries of (L₊ + L₋ − 2L₀)/μ².

    `lp`, `lm`: (q, *lead) losses at θ ± μu_k; `loss0`: (*lead) loss at θ. The combination is formed in
    float64 so no rounding is added to the float32 losses' own (that one is unavoidable: a relative loss
    error δ becomes ≈ 4δL/μ² here).

    Theory: [docs/theory.md#zo-trace][zo-trace].
    """
    s = lp.double() + lm.double() - 2.0 * loss0.double()
    return s.mean(0) / (mu * mu)


class ZOTraceMonitor:
    """Windowed mean and standard error of the per-step `zo_trace` samples, one window per copy.

    Theory: [docs/theory.md#zo-trace][zo-trace].
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = int(window)
        self._samples: dict[int, deque] = {}

    def restore(self, copy: int, raw: np.ndarray) -> None:
        """Refill a copy's window from the raw samples already in its file (a resumed run)."""
        finite = [float(x) for x in np.asarray(raw, dtype=np.float64) if math.isfinite(x)]
        self._samples[copy] = deque(finite[-self.window:], maxlen=self.window)

    def update(self, copy: int, sample: float) -> dict[str, float]:
        """Add a copy's sample (NaN = none this step) and return its row: zo_trace, zo_trace_err, zo_trace_raw."""
        d = self._samples.setdefault(copy, deque(maxlen=self.window))
        if math.isfinite(sample):
            d.append(float(sample))
        n = len(d)
        a = np.fromiter(d, dtype=np.float64, count=n)
        mean = float(a.mean()) if n else math.nan
        err = float(a.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
        return {"zo_trace": mean, "zo_trace_err": err, "zo_trace_raw": float(sample)}
