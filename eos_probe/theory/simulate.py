"""Monte-Carlo check of the stability theory with the project's own optimizers on quadratics.

The optimizers are built by :func:`eos_probe.optim.make_optimizer` and stepped on
:class:`eos_probe.data.quadratic.QuadraticObjective` exactly as the trainer steps them; all seeds and all
step sizes run as one stacked ``θ`` of shape ``(K·S, d)`` with a per-row step size, so a check costs a
few hundred small tensor operations. On a quadratic the central two-point estimate equals ``u uᵀ∇L``
(μ drops out), so the measured growth of ``E‖θ_t‖²`` is the spectral radius of the mean-square
operator, up to Monte-Carlo error.

Caveat on the estimator: the sample mean of ``‖θ_t‖²`` over S seeds is dominated by rare seeds once the
per-step multiplicative noise has compounded (``E log ≤ log E``), so the measured rate is biased low;
the bias grows with the number of steps and shrinks with the dimension. Keep ``d ≳ 20`` and a few hundred
steps when comparing rates quantitatively.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InvalidValueError
from ..presets import DEFAULT_DIRECTIONS, PRESETS
from .moments import exact_critical_lr, moment_operator, ms_spectral_radius, spectral_radius
from .setting import resolve
from .stability import critical_lr

#: second moments simulate_growth can follow: E‖θ‖², E[θᵀHθ], E[θᵀH₊θ]
MOMENTS = ("norm", "loss", "positive")

#: largest d for which the dense moment operator ((2d)² × (2d)²) gives the prediction
DENSE_MAX_DIM = 12


@dataclass(frozen=True)
class GrowthRun:
    """Measured growth of ``E‖θ_t‖²`` at one step size.

    ``rate`` is the least-squares slope of ``log mean_s ‖θ_t‖²`` per step over the fit window,
    ``stderr`` the spread of that slope over disjoint groups of seeds (divided by √groups), and
    ``predicted_rate = log ρ`` of the mean-square operator (``predicted_by`` says from which formula;
    None when no exact prediction is available).
    """

    lr: float
    rate: float
    stderr: float
    log_second_moment: np.ndarray
    fit_start: int
    predicted_rate: float | None
    predicted_by: str | None


def _predict(eigs: np.ndarray, lr: float, s, basis, preconditioner, momentum_style) -> tuple[float | None, str | None]:
    """log ρ of the mean-square operator: spectral closed form where exact, else the dense operator."""
    commuting = preconditioner is None or basis is None or np.ptp(preconditioner) == 0
    rotation_free = s.directions in ("gaussian", "sphere")
    if not s.zeroth_order or (commuting and rotation_free):
        spec = eigs if preconditioner is None else eigs / preconditioner
        rho = ms_spectral_radius(spec, lr, s.optimizer, s.queries, s.momentum, momentum_style,
                                 directions=s.directions, dim=eigs.size)
        return math.log(rho), "spectral closed form"
    if eigs.size <= DENSE_MAX_DIM:
        H = np.diag(eigs) if basis is None else basis @ np.diag(eigs) @ basis.T
        op = moment_operator(H, lr, s.optimizer, s.queries, s.momentum, momentum_style,
                             directions=s.directions, preconditioner=preconditioner)
        return math.log(spectral_radius(op)), "dense moment operator"
    return None, None


def _stationary_start(theta, state: dict, eigs: np.ndarray, Q, P, lrs: list[float], s, gen) -> None:
    """Overwrite θ (and the momentum m of the update rule) with draws from the Perron eigen-covariance."""
    import torch

    d = eigs.size
    K, S = len(lrs), theta.shape[0] // len(lrs)
    H = np.diag(eigs) if Q is None else Q @ np.diag(eigs) @ Q.T
    m = state.get("rule", {}).get("m") if isinstance(state.get("rule"), dict) else None
    if s.momentum and m is None:
        raise InvalidValueError("start='stationary' needs the momentum buffer state['rule']['m'] of the optimizer")
    for k, lr in enumerate(lrs):
        op = moment_operator(H, lr, s.optimizer, s.queries, s.momentum, s.momentum_style,
                             directions=s.directions, preconditioner=P)
        vals, vecs = np.linalg.eig(op)
        top = vecs[:, np.argmax(vals.real)].real.reshape(2 * d, 2 * d)
        cov = (top + top.T) / 2
        cov = cov if np.trace(cov) > 0 else -cov
        w, V = np.linalg.eigh(cov)
        root = V * np.sqrt(np.clip(w, 0, None))
        z = torch.randn(S, 2 * d, generator=gen, dtype=torch.float64) @ torch.as_tensor(root.T)
        z *= math.sqrt(d / float(np.trace(cov[:d, :d])))  # E‖θ₀‖² = d, like the isotropic start
        rows = slice(k * S, (k + 1) * S)
        theta[rows] = z[:, :d]
        if m is not None:
            m[rows] = z[:, d:]


def _edge_profile_start(theta, state: dict, eigs: np.ndarray, lrs: list[float], s, gen) -> None:
    """Overwrite (θ, m) with draws from each mode's stationary covariance per unit shared noise, (I − K_i)⁻¹e_ξ
    of the per-mode second-moment map: the Perron vector of the mean-square operator at S = 1. Near the edge
    E[θᵀHθ]_t then follows ρ^t from the first step; an isotropic start carries the slow decay of the small
    eigenvalues (rate ≈ 2ηλ) for thousands of steps when η* is small, and biases a short fit low. Modes with
    λ ≤ 0, or no valid covariance, keep unit variance."""
    import torch

    from .moments import _mode_blocks

    d, S = eigs.size, theta.shape[0] // len(lrs)
    m = state.get("rule", {}).get("m") if isinstance(state.get("rule"), dict) else None
    for k, lr in enumerate(lrs):
        K, e, _ = _mode_blocks(eigs, lr, s)
        cov = np.tile(np.eye(2) * [1.0, 0.0], (d, 1, 1))
        ok = eigs > 1e-9 * float(np.max(np.abs(eigs)))  # near-zero modes: (I − K) is singular in floats
        with np.errstate(all="ignore"):
            sol = np.linalg.solve(np.eye(4)[None] - K[ok], np.broadcast_to(e, (int(ok.sum()), 4))[..., None])[..., 0]
        c = sol.reshape(-1, 2, 2)
        c = 0.5 * (c + c.transpose(0, 2, 1))
        valid = np.all(np.isfinite(c), axis=(1, 2)) & (np.linalg.eigvalsh(np.nan_to_num(c))[:, 0] >= 0) & (c[:, 0, 0] > 0)
        idx = np.nonzero(ok)[0][valid]
        cov[idx] = c[valid] * (float(valid.sum()) / float(c[valid, 0, 0].sum()))  # mean x-variance 1, as the rest
        w, V = np.linalg.eigh(cov)
        root = V * np.sqrt(np.clip(w, 0, None))[:, None, :]  # (d, 2, 2): cov = root rootᵀ
        z = torch.randn(S, d, 2, generator=gen, dtype=torch.float64)
        xm = torch.einsum("dij,sdj->sdi", torch.as_tensor(root), z)
        xm *= math.sqrt(d / float(cov[:, 0, 0].sum()))  # E‖θ₀‖² = d, like the isotropic start
        rows = slice(k * S, (k + 1) * S)
        theta[rows] = xm[..., 0]
        if m is not None:
            m[rows] = xm[..., 1]


def _rescale(state: dict, shape, rows: slice, factor: float) -> None:
    """Multiply every θ-shaped tensor of an optimizer state (moments) by `factor` on `rows` — valid
    because the update is linear in (θ, m) on a quadratic with a frozen preconditioner."""
    for value in state.values():
        if isinstance(value, dict):
            _rescale(value, shape, rows, factor)
        elif hasattr(value, "shape") and tuple(value.shape) == tuple(shape):
            value[rows] *= factor


def simulate_growth(eigenvalues: Sequence[float] | np.ndarray, lrs: Sequence[float], optimizer: str, *,
                    queries: int = 1, momentum: float | None = None, momentum_style: str | None = None,
                    directions: str = DEFAULT_DIRECTIONS, preconditioner: Sequence[float] | np.ndarray | None = None,
                    basis: np.ndarray | None = None, seeds: int = 2000, steps: int = 400,
                    fit_from: float = 0.5, groups: int = 8, seed: int = 0, mu: float = 1e-3,
                    start: str = "isotropic", threads: int | None = 1, moment: str = "norm",
                    estimator: str = "mean") -> list[GrowthRun]:
    """Run the project's optimizer on ``L = ½θᵀHθ`` from ``seeds`` Gaussian starts per step size and
    measure the growth rate of ``E‖θ_t‖²`` (one :class:`GrowthRun` per entry of ``lrs``).

    ``H = Q diag(eigenvalues) Qᵀ`` with ``Q = basis`` (identity if None). For Adam pass the frozen diagonal
    ``preconditioner`` P (θ ← θ − η m/P); it commutes with H iff ``basis`` is None or P is constant.
    ``start``: ``"isotropic"`` draws θ₀ ~ N(0, I) with zero momentum; ``"stationary"`` draws (θ₀, m₀) from
    the Perron eigen-covariance of the dense moment operator (d ≤ 12), so that
    ``E‖θ_t‖² = ρ^t E‖θ₀‖²`` holds from the first step and a short run (``fit_from=0``) suffices — fewer
    steps also mean less of the heavy-tail bias described in the module docstring. ``"edge-profile"`` (diagonal
    spectra of any size) draws each mode from its stationary covariance per unit shared noise — the Perron vector
    at S = 1 — so that near η* the measured rate has no slow transient of the small eigenvalues.
    ``threads`` pins torch's intra-op threads during the run (tiny tensors: extra threads only contend);
    None leaves the setting alone. Everything runs in float64 on the CPU.

    ``moment="loss"`` measures the growth of ``E[θᵀHθ]`` (twice the loss) instead of ``E‖θ‖²``: the same
    stability boundary for λ > 0, but near-zero eigenvalues (modes with ρ ≈ 1 at every η, whose slow
    transients bias a finite-horizon ``E‖θ‖²`` rate) drop out.

    ``estimator="resampled"`` replaces the plain mean over seeds by a sequential Monte Carlo estimate of the
    same expectation: after every step each seed group's mean moment is recorded, its seeds are resampled in
    proportion to their moment and rescaled to unit moment (valid: the map is linear in (θ, m)). The product
    of the recorded means is unbiased for E[moment_t]; unlike the plain mean it does not collapse onto the
    typical seed when the multiplicative noise is strong (a few large outliers with ηλ near the limit), where
    the plain mean measures the almost-sure (Lyapunov) rate instead of the mean-square one. ``moment="positive"`` measures
    ``E[θᵀH₊θ]`` (weights max(λ, 0)): the positive-curvature second moment of an indefinite H, whose
    negative modes then enter only through the noise they feed into the positive block.

    Theory: [docs/theory.md#ms-sum][ms-sum].
    """
    eigs = np.asarray(eigenvalues, dtype=float).ravel()
    s, lrs, P, Q = _check_growth_inputs(eigs, lrs, optimizer, queries, momentum, momentum_style, directions,
                                        preconditioner, basis, seeds, groups, moment, start, steps, fit_from)
    if estimator not in ("mean", "resampled"):
        raise InvalidValueError(f"estimator must be 'mean' or 'resampled', got {estimator!r}")
    logs = _simulate_log_moments(eigs, lrs, s, P, Q, seeds=seeds, steps=steps, groups=groups, seed=seed, mu=mu,
                                 start=start, threads=threads, moment=moment, estimator=estimator)
    fit_start = int(fit_from * steps)
    tt = np.arange(fit_start, steps + 1)
    runs = []
    for k, lr in enumerate(lrs):
        # the overall mean is the mean of equal-sized group means; combine in log space stably
        m = logs[:, k, :].max(axis=1, keepdims=True)
        total = np.log(np.mean(np.exp(logs[:, k, :] - m), axis=1)) + m[:, 0]
        rate = float(np.polyfit(tt, total[fit_start:], 1)[0])
        per_group = np.polyfit(tt, logs[fit_start:, k, :], 1)[0]
        stderr = float(np.std(per_group, ddof=1) / math.sqrt(groups))
        pred, how = _predict(eigs, lr, s, Q, P, s.momentum_style)
        runs.append(GrowthRun(lr, rate, stderr, total, fit_start, pred, how))
    return runs


def _check_growth_inputs(eigs, lrs, optimizer, queries, momentum, momentum_style, directions, preconditioner,
                         basis, seeds, groups, moment, start, steps, fit_from):
    """(setting, step sizes, frozen P or None, basis Q or None) of :func:`simulate_growth`, validated."""
    d = eigs.size
    s = resolve(optimizer, queries, momentum, momentum_style, directions, d)
    lrs = [float(x) for x in np.atleast_1d(np.asarray(lrs, dtype=float))]
    if not lrs or not all(math.isfinite(x) and x > 0 for x in lrs):
        raise InvalidValueError("lrs must be a non-empty list of positive finite step sizes")
    if seeds < 2 * groups or seeds % groups:
        raise InvalidValueError(f"seeds ({seeds}) must be a multiple of groups ({groups}) and at least 2·groups")
    if moment not in MOMENTS:
        raise InvalidValueError(f"moment must be one of {', '.join(MOMENTS)}, got {moment!r}")
    if start not in ("isotropic", "stationary", "edge-profile"):
        raise InvalidValueError(f"start must be 'isotropic', 'stationary' or 'edge-profile', got {start!r}")
    if start == "edge-profile" and (basis is not None or preconditioner is not None):
        raise InvalidValueError("start='edge-profile' is for a diagonal spectrum (no basis, no preconditioner)")
    if start == "stationary" and d > DENSE_MAX_DIM:
        raise InvalidValueError(f"start='stationary' needs the dense moment operator; keep d ≤ {DENSE_MAX_DIM}")
    if steps < 10 or not (0.0 <= fit_from < 0.9):
        raise InvalidValueError("steps must be ≥ 10 and fit_from in [0, 0.9)")
    P = None
    if preconditioner is not None:
        if not s.preconditioned:
            raise InvalidValueError(f"{optimizer} has no preconditioner; pass preconditioner only for adam presets")
        P = np.asarray(preconditioner, dtype=float).ravel()
        if P.shape != (d,) or not np.all(P > 0):
            raise InvalidValueError(f"preconditioner must be {d} positive numbers (Adam's frozen diagonal P)")
    elif s.preconditioned:
        raise InvalidValueError("simulating Adam needs a frozen preconditioner (the live v makes the map nonlinear)")
    Q = None if basis is None else np.asarray(basis, dtype=float)
    return s, lrs, P, Q


def _simulate_log_moments(eigs, lrs, s, P, Q, *, seeds, steps, groups, seed, mu, start, threads,
                          moment, estimator="mean") -> np.ndarray:
    """log of the second moment per step, step size and seed group: shape (steps + 1, K, groups)."""
    import torch

    from ..data.quadratic import QuadraticObjective
    from ..optim import make_optimizer

    d, K, S = eigs.size, len(lrs), seeds
    kw: dict = {"queries": s.queries, "directions": s.directions, "mu": mu, "seed": seed}
    if s.momentum:
        kw["momentum"] = s.momentum
    if PRESETS[s.optimizer].rule == "momentum":
        kw["momentum_style"] = s.momentum_style
    if P is not None:
        kw["frozen_preconditioner"] = torch.as_tensor(P, dtype=torch.float64)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        objective = QuadraticObjective(eigs, Q, dtype=torch.float64)
        weights = {"loss": eigs, "positive": np.maximum(eigs, 0.0), "norm": np.ones(d)}[moment]
        w_moment = torch.as_tensor(weights, dtype=torch.float64)
        lr_rows = torch.as_tensor(np.repeat(lrs, S), dtype=torch.float64)[:, None]
        opt = make_optimizer(s.optimizer, lr=lr_rows, **kw)
        gen = torch.Generator().manual_seed(int(seed) + 7919)
        theta = torch.randn(K * S, d, generator=gen, dtype=torch.float64)
        state = opt.init(theta)
        if start == "stationary":
            _stationary_start(theta, state, eigs, Q, P, lrs, s, gen)
        elif start == "edge-profile":
            _edge_profile_start(theta, state, eigs, lrs, s, gen)
        logs = np.empty((steps + 1, K, groups))
        offset = np.zeros(K)  # log of the factors divided out so far, per step size
        cum = np.zeros((K, groups))  # resampled estimator: cumulative log growth per group
        for t in range(steps + 1):
            if t:
                opt.step(objective, theta, state, t - 1)
            if estimator == "resampled":
                _record_resampled(logs, t, theta, state, Q, w_moment, cum, (K, groups, S // groups), gen)
            else:
                _record(logs, t, theta, state, Q, w_moment, offset, K, groups, S, d)
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)
    return logs


def _record(logs, t, theta, state, Q, w_moment, offset, K, groups, S, d) -> None:
    """Log the second moment of step t per group; keep ‖θ‖ moderate by rescaling a step size's rows
    (the finite differences cancel at large ‖θ‖/μ); the factors divided out accumulate in `offset`."""
    import torch

    proj = theta if Q is None else theta @ torch.as_tensor(Q)
    sq = ((proj * proj * w_moment).sum(-1)).view(K, groups, S // groups).mean(-1)
    logs[t] = np.log(sq.numpy()) + offset[:, None]
    lo, hi = math.log(1e-6 * d), math.log(1e6 * d)
    for k in range(K):
        mean = float(sq[k].mean())
        if not (math.isfinite(mean) and mean > 0):
            continue
        level = math.log(mean)
        if level > hi or level < lo:
            factor = math.exp(-0.5 * (level - math.log(d)))
            rows = slice(k * S, (k + 1) * S)
            theta[rows] *= factor
            _rescale(state, theta.shape, rows, factor)
            offset[k] -= 2 * math.log(factor)


def _record_resampled(logs, t, theta, state, Q, w_moment, cum, shape, gen) -> None:
    """Sequential Monte Carlo step: record log(mean moment) per group (cumulative in `cum`, shape (K, groups)),
    then resample each group's seeds in proportion to their moment and rescale every seed to unit moment."""
    import torch

    K, G, n = shape
    proj = theta if Q is None else theta @ torch.as_tensor(Q)
    x = (proj * proj * w_moment).sum(-1).view(K * G, n)
    mean = x.mean(-1)
    cum[:] = (0.0 if t == 0 else cum) + np.log(mean.numpy()).reshape(cum.shape)
    logs[t] = cum
    ok = torch.isfinite(x).all(-1) & (x > 0).all(-1)
    w = torch.where(ok[:, None], x, torch.ones_like(x))
    pick = torch.multinomial(w, n, replacement=True, generator=gen)  # (K·G, n) indices inside each group
    index = (pick + torch.arange(K * G)[:, None] * n).reshape(-1)
    scale = 1.0 / torch.sqrt(w.reshape(-1)[index])
    theta.copy_(theta[index] * scale[:, None])
    _gather(state, theta.shape, index, scale)


def _gather(state: dict, shape, index, scale) -> None:
    """Apply the resampling (row `index`, per-row `scale`) to every θ-shaped tensor of an optimizer state."""
    for value in state.values():
        if isinstance(value, dict):
            _gather(value, shape, index, scale)
        elif hasattr(value, "shape") and tuple(value.shape) == tuple(shape):
            value.copy_(value[index] * scale[:, None])


@dataclass(frozen=True)
class CommutingGap:
    """How far the commuting ZO-Adam prediction is from the exact η* for a non-commuting frozen P.

    ``ratio`` is docs/theory.md §3's ``r = ‖PH − HP‖_F/‖PH‖_F``; ``lr_commuting`` applies the spectral
    formula to the eigenvalues of ``P⁻¹H``; ``lr_exact`` is the first crossing of the dense moment
    operator; ``overestimate = lr_commuting/lr_exact − 1``.
    """

    ratio: float
    lr_commuting: float
    lr_exact: float
    overestimate: float


def commuting_gap(hessian: np.ndarray, preconditioner: Sequence[float] | np.ndarray, queries: int = 1,
                  momentum: float | None = None) -> CommutingGap:
    """Measure the commuting-assumption error of the ZO-Adam band on a small dense problem (d ≤ 12).

    Theory: [docs/theory.md#commutator-ratio][commutator-ratio].
    """
    H = np.asarray(hessian, dtype=float)
    p = np.asarray(preconditioner, dtype=float).ravel()
    if H.shape[0] > DENSE_MAX_DIM:
        raise InvalidValueError(f"commuting_gap builds a dense (2d)²×(2d)² operator; keep d ≤ {DENSE_MAX_DIM}")
    PH = p[:, None] * H
    ratio = float(np.linalg.norm(PH - PH.T) / np.linalg.norm(PH))  # HP = (PH)ᵀ for symmetric H, diagonal P
    spec = np.linalg.eigvalsh(H / np.sqrt(p)[:, None] / np.sqrt(p)[None, :])
    lc = critical_lr(spec, "zo-adam", queries, momentum)
    le = exact_critical_lr(H, "zo-adam", queries, momentum, preconditioner=p)
    return CommutingGap(ratio, lc, le, lc / le - 1.0)
