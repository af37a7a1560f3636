"""Edge against the horizon and the law of the blow-up time, from first-passage times on an η grid.

Input everywhere: η (K,) ascending and τ (K, n) blow-up times of n seeds (inf = survived the horizon).
``half_time`` (the step by which more than half of the seeds blew up) is what the blow-up protocol sees.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .edge_network import half_time


def edge_at_horizon(etas: np.ndarray, t_half: np.ndarray, h: float) -> dict[str, Any]:
    """The protocol's edge at horizon h: bracket [largest η stable below the smallest unstable one, smallest
    unstable η] on the grid, and the point where log half_time(η) crosses log h (interpolated in log η)."""
    etas, t_half = np.asarray(etas, float), np.asarray(t_half, float)
    unstable = np.nonzero(t_half <= h)[0]
    if unstable.size == 0:
        return {"horizon": h, "edge": None, "lo": float(etas[-1]), "hi": None, "note": "no eta blew up"}
    i = int(unstable[0])
    if i == 0:
        return {"horizon": h, "edge": None, "lo": None, "hi": float(etas[0]), "note": "every eta blew up"}
    lo, hi = float(etas[i - 1]), float(etas[i])
    edge = math.sqrt(lo * hi)
    if math.isfinite(t_half[i - 1]) and t_half[i - 1] > t_half[i] > 0:
        x0, x1 = math.log(lo), math.log(hi)
        y0, y1 = math.log(t_half[i - 1]), math.log(t_half[i])
        edge = math.exp(x0 + (x1 - x0) * (math.log(h) - y0) / (y1 - y0))
    return {"horizon": h, "edge": edge, "lo": lo, "hi": hi}


def edge_vs_horizon(etas: np.ndarray, taus: np.ndarray, horizons: list[int]) -> list[dict[str, Any]]:
    """:func:`edge_at_horizon` at every horizon (seeds pooled as the protocol pools them)."""
    th = half_time(taus)
    return [edge_at_horizon(etas, th, h) for h in horizons]


def _lsq(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ coef
    return coef, float(r @ r)


def fit_power(eta: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """τ = A η^(−p): least squares on log τ."""
    X = np.column_stack([np.ones_like(eta), -np.log(eta)])
    (a, p), rss = _lsq(X, np.log(t))
    return {"A": math.exp(a), "p": float(p), "rss": rss, "k": 2}


def fit_arrhenius(eta: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """τ = A exp(B/η): least squares on log τ."""
    X = np.column_stack([np.ones_like(eta), 1.0 / eta])
    (a, b), rss = _lsq(X, np.log(t))
    return {"A": math.exp(a), "B": float(b), "rss": rss, "k": 2}


def fit_threshold(eta: np.ndarray, t: np.ndarray, n_grid: int = 400) -> dict[str, float]:
    """τ = A (η − η_c)^(−ν), η_c ∈ [0, min η): profile least squares over a grid of η_c (ν, A linear in log)."""
    best = None
    for c in np.concatenate([[0.0], float(eta.min()) * (1 - np.geomspace(1.0, 1e-4, n_grid))[1:]]):
        X = np.column_stack([np.ones_like(eta), -np.log(eta - c)])
        (a, nu), rss = _lsq(X, np.log(t))
        if best is None or rss < best["rss"]:
            best = {"A": math.exp(a), "nu": float(nu), "eta_c": float(c), "rss": rss, "k": 3}
    return best  # type: ignore[return-value]


def _aic(fit: dict[str, float], n: int) -> float:
    return n * math.log(max(fit["rss"], 1e-300) / n) + 2 * fit["k"]


def _fits(eta: np.ndarray, t: np.ndarray) -> dict[str, dict[str, float]]:
    out = {"power": fit_power(eta, t), "arrhenius": fit_arrhenius(eta, t), "threshold": fit_threshold(eta, t)}
    for f in out.values():
        f["aic"] = _aic(f, eta.size)
    return out


def predicted_tau(name: str, fit: dict[str, float], eta: np.ndarray) -> np.ndarray:
    """A fitted law's τ at η (inf at or below a threshold)."""
    eta = np.asarray(eta, dtype=float)
    if name == "power":
        return fit["A"] * eta ** (-fit["p"])
    if name == "arrhenius":
        return fit["A"] * np.exp(fit["B"] / eta)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(eta > fit["eta_c"], fit["A"] * (eta - fit["eta_c"]) ** (-fit["nu"]), np.inf)


def blowup_law(etas: np.ndarray, taus: np.ndarray, horizon: int, *, n_boot: int = 300,
               seed: int = 0) -> dict[str, Any]:
    """Fit the three laws to half_time(η) where it is finite; bootstrap over seeds for the parameters' 95 %
    intervals; count the censored η (no blow-up within the horizon) each law says should have blown up."""
    etas = np.asarray(etas, dtype=float)
    taus = np.asarray(taus, dtype=float)
    th = half_time(taus)
    ok = np.isfinite(th) & (th > 0)
    if ok.sum() < 4:
        return {"n_points": int(ok.sum()), "note": "fewer than 4 step sizes blew up: no law fitted"}
    fits = _fits(etas[ok], th[ok])
    censored = etas[~ok & (etas < etas[ok].min())]
    for name, f in fits.items():
        f["censored_violations"] = int(np.sum(predicted_tau(name, f, censored) <= horizon)) if censored.size else 0
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {"p": [], "B": [], "eta_c": [], "nu": []}
    for _ in range(n_boot):
        idx = rng.integers(0, taus.shape[1], size=taus.shape)
        tb = half_time(np.take_along_axis(taus, idx, axis=1))
        m = np.isfinite(tb) & (tb > 0)
        if m.sum() < 4:
            continue
        fb = _fits(etas[m], tb[m])
        boot["p"].append(fb["power"]["p"])
        boot["B"].append(fb["arrhenius"]["B"])
        boot["eta_c"].append(fb["threshold"]["eta_c"])
        boot["nu"].append(fb["threshold"]["nu"])
    ci = {k: ([float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None) for k, v in boot.items()}
    fits["power"]["p_ci"] = ci["p"]
    fits["arrhenius"]["B_ci"] = ci["B"]
    fits["threshold"]["eta_c_ci"] = ci["eta_c"]
    fits["threshold"]["nu_ci"] = ci["nu"]
    best = min(fits, key=lambda k: fits[k]["aic"])
    return {"n_points": int(ok.sum()), "etas": etas[ok].tolist(), "half_time": th[ok].tolist(), "fits": fits,
            "best": best, "n_boot": len(boot["p"]), "censored_etas": censored.tolist()}


MIN_LAW_POINTS = 5


def has_horizon_independent_edge(law: dict[str, Any], curve: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The stated answer, from the law when at least MIN_LAW_POINTS step sizes blew up: "yes" when the threshold
    law wins (lowest AIC) with an η_c interval that excludes 0, "no" when a law without threshold wins (a
    first-passage time with no threshold in the measured range), "undetermined" when the threshold law wins but
    its interval includes 0. With fewer points: "yes" when the protocol's bracket did not move over the last
    doubling of the horizon (every grid η got the same verdict at h/2 and h), else "undetermined"."""
    thr = law.get("fits", {}).get("threshold", {})
    ci = thr.get("eta_c_ci")
    resolved = ci is not None and ci[0] > 0
    if "fits" in law and law["n_points"] >= MIN_LAW_POINTS:
        base = {"eta_c": thr["eta_c"], "eta_c_ci": ci, "best": law["best"], "how": "law"}
        if law["best"] == "threshold":
            return {**base, "answer": "yes" if resolved else "undetermined",
                    "why": f"threshold law has the lowest AIC, eta_c interval {'excludes' if resolved else 'includes'} 0"}
        return {**base, "answer": "no", "why": f"best law: {law['best']} (no threshold); threshold eta_c interval "
                                                 f"{'excludes' if resolved else 'includes'} 0"}
    if curve and len(curve) >= 2:
        a, b = curve[-2], curve[-1]
        if a.get("lo") and b.get("lo") and a.get("hi") and b.get("hi") and (a["lo"], a["hi"]) == (b["lo"], b["hi"]):
            return {"answer": "yes", "edge": b.get("edge"), "lo": b["lo"], "hi": b["hi"], "how": "flat",
                    "why": f"the bracket [{b['lo']:.4g}, {b['hi']:.4g}] did not move from horizon {a['horizon']} "
                           f"to {b['horizon']}"}
    return {"answer": "undetermined", "how": "none",
            "why": f"{law.get('n_points', 0)} step sizes blew up (a law needs {MIN_LAW_POINTS}) and the bracket "
                   "still moved over the last doubling of the horizon"}
