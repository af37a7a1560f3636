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

**Tracking a moving trace.** Tr H drifts while the run sharpens, and one sample is noisy (for Gaussian u its
variance is 2‖H‖_F², of the order of λ_max² at the edge). A fixed-window mean lags the drift by half its
window and its s/√n ignores that lag. The monitor therefore estimates Tr H *at the current step* by a local
linear fit over the last n samples and chooses n by the intersection-of-confidence-intervals rule (Lepski's
method, as in adaptive nonparametric regression): it grows n through 8, 12, 16, 24, … up to `window` while the
interval est_n ± `ICI_WIDTH`·se_n still overlaps every shorter window's interval, and keeps the largest such n.
A steady stretch thus averages over many samples; a sharpening one shrinks the window until the lag is below
the noise. The noise variance comes from successive differences of the samples (von Neumann: half the mean
squared difference), which a slow drift does not inflate, over the last `NOISE_SPAN` samples; that spread is
estimated from more samples than the short windows hold, so a short window's s.e. is not itself drawn from
its own few samples. Before 8 samples the estimate is their mean.

Per logged step the run file gets `/train/zo_trace_raw` (the step's sample), `/train/zo_trace` (the local
estimate), `/train/zo_trace_err` (its standard error: noise only; the window rule keeps the drift bias
below it) and `/train/zo_trace_n` (samples in the chosen window). Rows without a sample (the final step,
which takes no ZO step, and forward differences, which have no symmetric pair) hold NaN in `zo_trace_raw`.
"""
from __future__ import annotations

import math

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

#: default largest window, in logged samples (96 samples = 960 steps at the ZO default log_every 10)
DEFAULT_WINDOW = 96
#: candidate window lengths (samples), each 1.5× the last, up to the largest window
MIN_WINDOW = 8
#: half-width of each window's interval in the ICI rule, in standard errors
ICI_WIDTH = 2.0
#: samples the noise variance is estimated from (successive differences)
NOISE_SPAN = 64
#: significance (in standard errors of a variance estimate) above which residual variance beyond the noise
#: counts as wander of the true trace and widens the error bar
EXCESS = 1.0
#: χ² of a window's four residual quarter-means above which the line does not fit it (99.9 % of χ²₂)
LACK_OF_FIT = 13.8

COLUMNS = ("zo_trace", "zo_trace_err", "zo_trace_raw", "zo_trace_n")

DESCRIPTIONS = {
    "zo_trace": "Tr(H) at this step from the ZO step's own queries: local linear fit of the last zo_trace_n "
                "finite zo_trace_raw samples, window chosen by the intersection-of-confidence-intervals rule",
    "zo_trace_err": "standard error of zo_trace (noise variance from successive differences of the samples; "
                    "NaN for fewer than 3 samples)",
    "zo_trace_raw": "this step's sample: mean over queries of (L(θ+μu)+L(θ−μu)−2L(θ))/μ², in float64; "
                    "E = u^T H u averaged = Tr(H) + O(μ²); NaN where the step took no central-difference query",
    "zo_trace_n": "number of samples in the window zo_trace was fitted on",
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


def windows(largest: int) -> list[int]:
    """Candidate window lengths: 8, 12, 18, … (×1.5) up to and including `largest`."""
    out, n = [], MIN_WINDOW
    while n < largest:
        out.append(n)
        n = int(math.ceil(n * 1.5))
    return out + [largest]


def noise_variance(y: np.ndarray) -> float:
    """Variance of one sample from successive differences (half their mean square): blind to slow drift."""
    if len(y) < 3:
        return math.nan
    d = np.diff(y[-NOISE_SPAN:])
    return float(np.mean(d * d) / 2.0)


def local_estimate(x: np.ndarray, y: np.ndarray, largest: int = DEFAULT_WINDOW) -> tuple[float, float, int]:
    """(estimate at x[-1], standard error, window length) of the samples y taken at steps x.

    Local linear fits over the candidate windows, chosen by the intersection-of-confidence-intervals rule;
    a window whose fit leaves a systematic misfit (a step inside it: the four quarter-means of its residuals,
    χ² over `LACK_OF_FIT` on two degrees of freedom) ends the search too (module docstring). Fewer than
    `MIN_WINDOW` samples: their mean and its s.e.
    """
    n_all = len(y)
    if n_all == 0:
        return math.nan, math.nan, 0
    var = noise_variance(y)
    if n_all < MIN_WINDOW or largest < MIN_WINDOW:
        n = min(n_all, largest)
        return float(np.mean(y[-n:])), math.sqrt(var / n) if var == var else math.nan, n
    m = min(n_all, largest)
    # sums over the last k samples, k = 1..m, from reversed cumulative sums (O(1) per window after this)
    xr, yr = (x[-m:] - x[-1])[::-1], y[-m:][::-1]
    c1 = np.arange(1, m + 1, dtype=np.float64)
    cx, cy, cxx, cxy = np.cumsum(xr), np.cumsum(yr), np.cumsum(xr * xr), np.cumsum(xr * yr)

    def sums(lo: int, hi: int) -> tuple[float, float]:  # Σx, Σy over reversed positions [lo, hi)
        return (cx[hi - 1] - (cx[lo - 1] if lo else 0.0), cy[hi - 1] - (cy[lo - 1] if lo else 0.0))

    lo, hi, best = -math.inf, math.inf, None
    for n in windows(largest):
        if n > n_all:
            break
        k = n - 1
        xm, ym = cx[k] / n, cy[k] / n
        sxx = cxx[k] - n * xm * xm
        slope = (cxy[k] - n * xm * ym) / sxx if sxx > 0 else 0.0
        est = ym - slope * xm  # the fitted line at x[-1] (x = 0 there)
        se = math.sqrt(var * (1.0 / n + (xm * xm / sxx if sxx > 0 else 0.0)))
        lo, hi = max(lo, est - ICI_WIDTH * se), min(hi, est + ICI_WIDTH * se)
        q, chi2 = n // 4, 0.0
        for j in range(4):  # residual mean of each quarter, in units of its standard error
            a, b = j * q, (j + 1) * q if j < 3 else n
            sx, sy = sums(a, b)
            chi2 += (sy - (b - a) * est - slope * sx) ** 2 / ((b - a) * var)
        if best is not None and (lo > hi or chi2 > LACK_OF_FIT):
            break
        best = (float(est), se, n, slope)
    est, se, n, slope = best
    if n > 2 and EXCESS:
        # the true trace's own wander about the fitted line: residual variance beyond the sample noise, when
        # significant against the residuals' own spread (their squares' standard error, which heavy tails of
        # uᵀHu widen); it is what an instantaneous measurement may differ by, and the line's s.e. omits it
        r2 = (y[-n:] - est - slope * (x[-n:] - x[-1])) ** 2
        excess = r2.sum() / (n - 2) - var - EXCESS * r2.std() / math.sqrt(n)
        se = math.sqrt(se * se + max(0.0, excess))
    return est, se, n


class _Series:
    """The last `cap` (step, sample) pairs of one copy, in two numpy arrays (appended in place, slid when full)."""

    def __init__(self, cap: int) -> None:
        self.cap, self.n = cap, 0
        self.x = np.empty(2 * cap)
        self.y = np.empty(2 * cap)

    def append(self, step: int, value: float) -> None:
        if self.n == len(self.x):  # slide the newest `cap` to the front: amortised O(1) per append
            self.x[: self.cap] = self.x[self.n - self.cap: self.n]
            self.y[: self.cap] = self.y[self.n - self.cap: self.n]
            self.n = self.cap
        self.x[self.n], self.y[self.n] = step, value
        self.n += 1

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        lo = max(0, self.n - self.cap)
        return self.x[lo: self.n], self.y[lo: self.n]


class ZOTraceMonitor:
    """Tracks Tr H from the per-step `zo_trace` samples, one series per copy (module docstring).

    Args:
        window: the largest window, in logged samples.

    Theory: [docs/theory.md#zo-trace][zo-trace].
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = int(window)
        self._samples: dict[int, _Series] = {}

    def _series(self, copy: int) -> _Series:
        if copy not in self._samples:
            self._samples[copy] = _Series(max(self.window, NOISE_SPAN + 1))
        return self._samples[copy]

    def restore(self, copy: int, steps: np.ndarray, raw: np.ndarray) -> None:
        """Refill a copy's series from the steps and raw samples already in its file (a resumed run)."""
        self._samples.pop(copy, None)
        d = self._series(copy)
        for st, x in zip(np.asarray(steps), np.asarray(raw, dtype=np.float64)):
            if math.isfinite(x):
                d.append(int(st), float(x))

    def noise_sd(self, copy: int) -> float:
        """One sample's noise standard deviation for a copy, from successive differences of the samples before
        the latest (so an outlier does not widen its own yardstick); NaN before 4 samples."""
        if copy not in self._samples:
            return math.nan
        return math.sqrt(noise_variance(self._samples[copy].view()[1][:-1]))

    def update(self, copy: int, sample: float, step: int) -> dict[str, float]:
        """Add a copy's sample taken at `step` (NaN = none this step) and return its row:
        zo_trace, zo_trace_err, zo_trace_raw, zo_trace_n."""
        d = self._series(copy)
        if math.isfinite(sample):
            d.append(int(step), float(sample))
        if not d.n:
            return {"zo_trace": math.nan, "zo_trace_err": math.nan, "zo_trace_raw": float(sample),
                    "zo_trace_n": 0.0}
        x, y = d.view()
        est, se, n = local_estimate(x, y, self.window)
        return {"zo_trace": est, "zo_trace_err": se, "zo_trace_raw": float(sample), "zo_trace_n": float(n)}
