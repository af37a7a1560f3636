"""Monte-Carlo validation of the stability theory with the project's own optimizers (eos_probe.optim) on
quadratics: E‖θ‖² must decay at 0.9·η* and grow at 1.1·η*, at the rate log ρ the theory predicts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from eos_probe import theory as th
from eos_probe.errors import UserError
from eos_probe.theory.simulate import commuting_gap, simulate_growth

D = 20


def _spectrum(seed: int = 0, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 1.0, d)


def _check(runs, lo=0.6, hi=1.4):
    below, above = runs
    assert below.rate < 0 < above.rate, (below.rate, above.rate)
    for r in runs:
        # the sample mean of ‖θ‖² is biased low by rare seeds (E log ≤ log E), hence the loose band
        assert lo <= r.rate / r.predicted_rate <= hi, (r.lr, r.rate, r.predicted_rate)


CASES = [  # optimizer, queries, momentum, momentum style, steps (≈ a few e-folds of growth)
    ("zo-gd", 1, None, None, 200),
    ("zo-gd", 4, None, None, 100),
    ("zo-gdm", 1, 0.5, None, 200),
    ("zo-gdm", 1, 0.9, None, 400),
    ("zo-gdm", 2, 0.7, "ema", 300),
]


@pytest.mark.parametrize("optimizer,q,beta,style,steps", CASES)
def test_second_moment_decays_below_and_grows_above_critical_lr(optimizer, q, beta, style, steps):
    lam = _spectrum()
    kw = dict(queries=q, momentum=beta, momentum_style=style)
    eta = th.critical_lr(lam, optimizer, **kw)
    runs = simulate_growth(lam, [0.9 * eta, 1.1 * eta], optimizer, steps=steps, seeds=2000, **kw)
    assert all(r.predicted_by == "spectral closed form" for r in runs)
    _check(runs)


def test_zo_adam_with_a_commuting_frozen_preconditioner():
    lam = _spectrum(1)
    p = np.random.default_rng(2).uniform(0.5, 2.0, D)  # diagonal P, diagonal H: they commute
    eta = th.critical_lr(lam / p, "zo-adam", momentum=0.9)
    runs = simulate_growth(lam, [0.9 * eta, 1.1 * eta], "zo-adam", momentum=0.9, preconditioner=p,
                           steps=400, seeds=2000)
    _check(runs)


def test_ema_and_heavy_ball_give_the_same_trajectory_at_rescaled_lr():
    # EMA momentum with η is heavy ball with η(1−β): the project's two rules must agree step by step
    lam, beta, eta = _spectrum(3), 0.8, 0.05
    hb = simulate_growth(lam, [eta * (1 - beta)], "zo-gdm", momentum=beta, steps=50, seeds=64)[0]
    ema = simulate_growth(lam, [eta], "zo-gdm", momentum=beta, momentum_style="ema", steps=50, seeds=64)[0]
    np.testing.assert_allclose(hb.log_second_moment, ema.log_second_moment, rtol=1e-10)


@pytest.mark.parametrize("optimizer,beta", [("gd", None), ("gdm", 0.9)])
def test_first_order_edge(optimizer, beta):
    lam = _spectrum(4)
    eta = th.critical_lr(lam, optimizer, momentum=beta)
    runs = simulate_growth(lam, [0.9 * eta, 1.1 * eta], optimizer, momentum=beta, steps=300, seeds=64)
    below, above = runs
    assert below.rate < 0 < above.rate
    # deterministic dynamics: the slope is log ρ(M)² once the top mode dominates
    assert above.rate == pytest.approx(above.predicted_rate, rel=0.05)


def test_sphere_directions_use_the_d_over_d_plus_2_factor():
    d = 10
    lam = _spectrum(5, d)
    eta = th.critical_lr(lam, "zo-gd", directions="sphere")
    assert eta > 1.05 * th.critical_lr(lam, "zo-gd")  # far enough from the Gaussian η* to tell them apart
    runs = simulate_growth(lam, [0.9 * eta, 1.1 * eta], "zo-gd", directions="sphere", steps=150, seeds=4000,
                           start="stationary", fit_from=0.0)
    _check(runs, 0.85, 1.15)  # the stationary start removes the transient: rates match closely


def test_rademacher_follows_the_exact_operator_not_the_band():
    # axis-aligned H: Rademacher noise is 2A + tr(A)I − 2diag(A), which the spectral band only approximates
    d = 10
    lam = _spectrum(6, d)
    with pytest.warns(th.ApproximationWarning):
        band_eta = th.critical_lr(lam, "zo-gd", directions="rademacher")
    exact = th.exact_critical_lr(np.diag(lam), "zo-gd", directions="rademacher")
    runs = simulate_growth(lam, [0.9 * exact, 1.1 * exact], "zo-gd", directions="rademacher", steps=150,
                           seeds=4000, start="stationary", fit_from=0.0)
    assert all(r.predicted_by == "dense moment operator" for r in runs)
    _check(runs, 0.85, 1.15)
    assert 0.85 < band_eta / exact < 1.0  # approximate and on the safe side here


def test_non_commuting_preconditioner_commuting_prediction_is_off():
    """A frozen P that does not commute with H: the dense operator (validated here by simulation)
    gives the true η*, and the commuting formula over-estimates it — at its own η*_c the iterates grow."""
    d, rng = 10, np.random.default_rng(0)
    lam = rng.uniform(0.1, 1.0, d)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    p = np.exp(1.5 * rng.uniform(-1, 1, d))
    H = Q @ np.diag(lam) @ Q.T
    gap = commuting_gap(H, p, momentum=0.9)
    print(f"\ncommutator ratio r = {gap.ratio:.3f}: commuting lr* = {gap.lr_commuting:.5g}, "
          f"exact lr* = {gap.lr_exact:.5g}, over-estimate {100 * gap.overestimate:.1f}%")
    assert gap.ratio > 0.2 and gap.overestimate > 0.03
    spec = np.linalg.eigvals(np.linalg.solve(np.diag(p), H)).real
    # the commuting theory calls η*_c marginal (ρ = 1) ...
    assert th.ms_spectral_radius(spec, gap.lr_commuting, "zo-adam", momentum=0.9) == pytest.approx(1, abs=1e-9)
    runs = simulate_growth(lam, [0.9 * gap.lr_exact, 1.1 * gap.lr_exact, gap.lr_commuting], "zo-adam",
                           momentum=0.9, preconditioner=p, basis=Q, steps=200, seeds=4000,
                           start="stationary", fit_from=0.0)
    _check(runs[:2], 0.7, 1.3)
    at_c = runs[2]
    print(f"growth per step at the commuting lr*: measured {at_c.rate:.4f} ± {at_c.stderr:.4f}, "
          f"exact {at_c.predicted_rate:.4f}, commuting formula 0")
    # ... but the project's Adam grows there, at the rate the exact operator predicts
    assert at_c.rate > 3 * at_c.stderr and 0.5 < at_c.rate / at_c.predicted_rate < 1.5


def test_commuting_gap_vanishes_for_commuting_preconditioner():
    rng = np.random.default_rng(1)
    lam, p = rng.uniform(0.1, 1.0, 6), rng.uniform(0.5, 2.0, 6)
    gap = commuting_gap(np.diag(lam), p)
    assert gap.ratio == 0.0 and abs(gap.overestimate) < 1e-8


def test_simulation_input_errors():
    lam = _spectrum()
    with pytest.raises(UserError, match="frozen preconditioner"):
        simulate_growth(lam, [0.1], "zo-adam")
    with pytest.raises(UserError, match="no preconditioner"):
        simulate_growth(lam, [0.1], "zo-gd", preconditioner=np.ones(D))
    with pytest.raises(UserError, match="lrs"):
        simulate_growth(lam, [-0.1], "zo-gd")
    with pytest.raises(UserError, match="stationary"):
        simulate_growth(lam, [0.1], "zo-gd", start="stationary")  # d = 20 > 12
    assert math.isfinite(simulate_growth(lam, [0.01], "zo-gd", steps=20, seeds=16)[0].rate)


def test_resampled_estimator_measures_the_mean_square_rate_where_the_plain_mean_sees_the_typical_seed():
    """A few outliers near the per-mode limit (x_max ≈ 0.5) make the multiplicative noise heavy-tailed: at 1.1 η*
    the plain mean over 512 seeds grows at the typical (almost-sure) rate, far below the exact mean-square rate
    log ρ; the resampled (sequential Monte Carlo) estimate recovers log ρ."""
    import numpy as np

    from eos_probe.theory import critical_lr
    from eos_probe.theory.simulate import simulate_growth

    rng = np.random.default_rng(0)
    lam = np.concatenate([[52.0, 30.0, 17.0, 12.7, 4.0, 2.5, 1.5], rng.gamma(0.3, 0.3, size=50)])
    eta = critical_lr(lam, "zo-gd")
    kw = dict(seeds=512, groups=4, steps=150, fit_from=0.3, moment="positive", start="edge-profile")
    plain = simulate_growth(lam, [1.1 * eta], "zo-gd", estimator="mean", **kw)[0]
    smc = simulate_growth(lam, [1.1 * eta], "zo-gd", estimator="resampled", **kw)[0]
    assert smc.predicted_rate > 0.04
    assert abs(smc.rate - smc.predicted_rate) < max(3 * smc.stderr, 0.25 * smc.predicted_rate)
    assert plain.rate < 0.3 * plain.predicted_rate


def test_edge_profile_start_draws_the_stationary_profile():
    """ZO-GD: the Perron vector at S = 1 has λ_i² E x_i² ∝ f(λ_i) (docs/theory.md §2, derivation): the start's
    per-mode variance against that closed form."""
    import numpy as np
    import torch

    from eos_probe.theory import ms_terms
    from eos_probe.theory.setting import resolve
    from eos_probe.theory.simulate import _edge_profile_start

    lam = np.array([3.0, 1.0, 0.3, 0.1])
    eta = 0.2
    theta = torch.zeros(20000, 4, dtype=torch.float64)
    _edge_profile_start(theta, {}, lam, [eta], resolve("zo-gd", 1, None, None, "gaussian", 4),
                        torch.Generator().manual_seed(0))
    var = theta.var(0).numpy()
    want = ms_terms(lam, eta, "zo-gd") / lam**2
    np.testing.assert_allclose(var / var.sum(), want / want.sum(), rtol=0.05)
