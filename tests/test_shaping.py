"""Shaping moments and the forgetting-gap predictions of docs/theory.md §5a against Monte Carlo with the
project's own shaping code (`eos_probe.optim.shaping`: the same draws as the RISE source and the forgetting
metric) on random quadratics: ≤ 1 % at 10^5 draws (and within 4 standard errors)."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from eos_probe.errors import InvalidValueError
from eos_probe.optim.shaping import rise_blocks, rise_shape, zo_shape
from eos_probe.theory import shaping as th

DRAWS = 100_000


def _quadratic(d: int, seed: int, spread: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A random symmetric H with an anisotropic spectrum (some negative curvature) and a gradient g."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.linspace(-0.3, spread, d)
    H = (Q * lam) @ Q.T
    g = rng.standard_normal(d) * np.linspace(0.5, 1.5, d)
    return H, g


D = 6
#: one gradient for every ZO test: the draws Zg depend on g (not on H), so they are made once per (q, law)
G = np.random.default_rng(0).standard_normal(D) * np.linspace(0.5, 1.5, D)


@functools.lru_cache(maxsize=None)
def _raw(q: int, law: str) -> np.ndarray:
    """10^5 draws of Zg from the project's `zo_shape` (one generator, as the source draws them)."""
    gen = torch.Generator().manual_seed(q)
    gt = torch.as_tensor(G, dtype=torch.float64)
    return torch.stack([zo_shape(gt, q, gen, law, norm_match=False) for _ in range(DRAWS)]).numpy()


def _draws(q: int, law: str, norm_match: bool = False) -> np.ndarray:
    """Zg (or Zg/√κ, zo_shape's norm matching: the same division) for G."""
    s = _raw(q, law)
    return s / math.sqrt(th.norm_inflation(q, D, law)) if norm_match else s


def _close(samples: np.ndarray, exact: float, rel: float = 0.01) -> None:
    mean, se = float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(samples.size))
    assert abs(mean - exact) < max(4 * se, 1e-12) and abs(mean / exact - 1) < rel, (mean, exact, se)


@pytest.mark.parametrize("law", th.SHAPING_DIRECTIONS)
def test_shaping_moment_matches_monte_carlo_for_each_law(law: str) -> None:
    """E[(Zg)ᵀA(Zg)] = gᵀE[ZAZ]g for a random A, and E[Zg (Zg)ᵀ] = E[Z ggᵀ Z] entrywise."""
    d, q, g = D, 3, G
    H, _ = _quadratic(d, 1)
    H = H + 1.0 * np.eye(d)  # positive mean so a relative error is meaningful
    s = _draws(q, law)
    quad = np.einsum("ni,ij,nj->n", s, H, s)
    exact = g @ th.shaping_moment(H, q, law) @ g
    _close(quad, exact)
    gdg = float(np.sum(g * g * np.diag(H)))
    assert th.shaped_quadratic(g @ H @ g, g @ g, np.trace(H), q, d, law, gdg) == pytest.approx(exact, rel=1e-12)
    prods = np.einsum("ni,nj->nij", s, s)
    M = th.shaping_moment(np.outer(g, g), q, law)
    z = (prods.mean(0) - M) / (prods.std(0, ddof=1) / math.sqrt(s.shape[0]))
    assert np.abs(z).max() < 4.5, z  # every entry within its Monte Carlo error
    # κ: E‖Zg‖² / ‖g‖² (Rademacher and sphere share (q+d−1)/q since ‖u‖² = d exactly)
    _close(np.sum(s * s, axis=1) / (g @ g), th.inflation(q, d, law))


def test_the_three_laws_differ_where_the_formulas_say() -> None:
    H, _ = _quadratic(5, 2)
    G, S, R = (th.shaping_moment(H, 2, law) for law in th.SHAPING_DIRECTIONS)
    assert np.allclose(G, 1.5 * H + 0.5 * np.trace(H) * np.eye(5))
    assert np.allclose(R, G - np.diag(np.diag(H)))
    assert np.allclose(S - 0.5 * H, (5 / 7) * (G - 0.5 * H))
    with pytest.raises(InvalidValueError):
        th.shaping_moment(H, 2, "cauchy")
    with pytest.raises(InvalidValueError):
        th.shaped_quadratic(1.0, 1.0, 1.0, 2, 5, "rademacher")


def test_shaped_curvature_keeps_the_isotropic_floor() -> None:
    """E[ZHZ]/κ = (1−τ)H + τλ̄I (Gaussian): every direction's expected curvature moves towards λ̄."""
    d, q = 7, 2
    H, _ = _quadratic(d, 3)
    tau = th.shaping_tau(q, d)
    assert np.allclose(th.shaped_curvature(H, q), (1 - tau) * H + tau * np.trace(H) / d * np.eye(d))


@pytest.mark.parametrize("q", [1, 3])
def test_forgetting_predictions_match_the_mean_over_norm_matched_steps(q: int) -> None:
    """On a quadratic L_r (exact to second order) the predicted FO and ZO forgetting, and their gap
    (η²/2)τ‖g‖²e_r(g), equal the loss changes of the actual steps averaged over 10^5 draws."""
    d, lr, g = D, 0.3, G
    H, _ = _quadratic(d, 4)
    gr = np.random.default_rng(5).standard_normal(d) * 0.1  # retention gradient ≠ 0: the linear terms count

    def F(delta: np.ndarray) -> np.ndarray:
        return delta @ gr + 0.5 * np.einsum("...i,ij,...j->...", delta, H, delta)

    rho, lam = g @ H @ g / (g @ g), np.trace(H) / d
    fo = th.forgetting_fo(lr, gr @ g, g @ H @ g)
    assert fo == pytest.approx(float(F(-lr * g)), rel=1e-12)
    v = _draws(q, "gaussian", norm_match=True)
    zo = th.forgetting_zo(lr, gr @ g, g @ H @ g, g @ g, np.trace(H), q, d)
    _close(F(-lr * v), zo)
    k = th.inflation(q, d)
    gap2 = th.forgetting_gap(lr, g @ g, rho, lam, q, d)
    # the second-order parts differ by exactly the gap; E F_ZO / F_FO = 1 − τ(1 − λ̄/ρ) without linear terms
    assert (fo + lr * gr @ g) - (zo + lr * gr @ g / math.sqrt(k)) == pytest.approx(gap2, rel=1e-10)
    tau = th.shaping_tau(q, d)
    assert (zo + lr * gr @ g / math.sqrt(k)) / (fo + lr * gr @ g) == pytest.approx(1 - tau * (1 - lam / rho), rel=1e-10)


def test_rise_blockwise_prediction_matches_monte_carlo() -> None:
    """E[vᵀHv] and E[F] of RISE's blockwise step (the source's own `rise_shape`, chunks of 4 across tensor
    boundaries) equal `rise_quadratic`, cross-block terms included."""
    sizes, q, lr, spec = [3, 4, 5], 2, 0.2, 4
    d = sum(sizes)
    H, g = _quadratic(d, 6)
    gr = np.random.default_rng(7).standard_normal(d) * 0.1
    blocks = rise_blocks(sizes, spec)
    gt = torch.as_tensor(g)
    n = DRAWS
    gens = [torch.Generator().manual_seed(100 + b) for b in range(len(blocks))]
    v = torch.stack([rise_shape(gt, blocks, q, lambda b: gens[b]) for _ in range(n)]).numpy()
    scale = np.concatenate([np.full(b - a, 1 / math.sqrt(th.norm_inflation(q, b - a))) for a, b in blocks])
    gbar = g * scale
    hb = [g[a:b] @ H[a:b, a:b] @ g[a:b] for a, b in blocks]
    quad = th.rise_quadratic(hb, [g[a:b] @ g[a:b] for a, b in blocks], [np.trace(H[a:b, a:b]) for a, b in blocks],
                             [b - a for a, b in blocks], gbar @ H @ gbar, q)
    _close(np.einsum("ni,ij,nj->n", v, H, v), quad)
    pred = th.forgetting_rise(lr, gr @ gbar, quad)
    _close(-lr * v @ gr + 0.5 * lr * lr * np.einsum("ni,ij,nj->n", v, H, v), pred)


@pytest.mark.parametrize("law,norm_match", [("gaussian", False), ("sphere", False), ("gaussian", True),
                                            ("rademacher", False)])
def test_zo_descent_threshold_is_where_the_expected_step_stops_descending(law: str, norm_match: bool) -> None:
    """At η = η_ZO(g) the mean loss change of a raw (or norm-matched) ZO step on a quadratic is zero, and
    at η_ZO/2 it is −(η‖g‖²)/2 (halfway down the parabola); Gaussian: 2q/((q+1)ρ(g) + Tr H)."""
    d, q, g = D, 3, G
    H, _ = _quadratic(d, 8)
    gdg = float(np.sum(g * g * np.diag(H)))
    eta = th.zo_descent_lr(g @ H @ g, g @ g, np.trace(H), q, d, law, norm_match, gdg)
    if law == "gaussian" and not norm_match:
        assert eta == pytest.approx(2 * q / ((q + 1) * (g @ H @ g) / (g @ g) + np.trace(H)), rel=1e-12)
    s = _draws(q, law, norm_match)
    for frac in (1.0, 0.5):
        lr = frac * eta
        change = -lr * s @ g + 0.5 * lr * lr * np.einsum("ni,ij,nj->n", s, H, s)
        first = lr * (g @ g) / (math.sqrt(th.inflation(q, d, law)) if norm_match else 1.0)
        se = change.std(ddof=1) / math.sqrt(change.size)
        assert abs(change.mean() - (frac - 1) * first) < max(4 * se, 0.01 * first), (frac, change.mean(), se)


def test_flatness_predictions_are_the_mean_quadratic_increase() -> None:
    d, rho = 9, 0.05
    H, g = _quadratic(d, 9)
    rng = np.random.default_rng(0)
    s = rng.choice([-1.0, 1.0], size=(DRAWS, d))
    inc = 0.5 * rho * rho * np.einsum("ni,ij,nj->n", s, H, s)  # even part of a quadratic's increase
    _close(inc, th.flatness_linf(rho, np.trace(H)))
    u = rng.standard_normal((DRAWS, d))
    u *= rho / np.linalg.norm(u, axis=1, keepdims=True)
    _close(0.5 * np.einsum("ni,ij,nj->n", u, H, u), th.flatness_l2(rho, np.trace(H), d))
    n = np.linalg.norm(g)
    e = rho * g / n
    assert th.flatness_sam(rho, n, g @ H @ g / (g @ g)) == pytest.approx(e @ g + 0.5 * e @ H @ e, rel=1e-12)
    assert th.zo_band_limit(0.1, 4, 0.9) == pytest.approx(8.0) and th.fo_band_limit(0.1, 0.9) == pytest.approx(38.0)
