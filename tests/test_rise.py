"""Norm-matched two-point estimates and the RISE source against docs/theory.md §5a, by Monte Carlo on
quadratics (exact gradients there), and their stability bands."""
from __future__ import annotations

import math

import pytest
import torch

from eos_probe import optim, presets, theory
from eos_probe.data.quadratic import QuadraticObjective
from eos_probe.errors import InvalidValueError
from eos_probe.optim.sources import RiseSource, TwoPointSource
from eos_probe.theory.shaping import norm_inflation, shaping_tau


def _quadratic(d: int, seed: int = 0) -> tuple[QuadraticObjective, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    lam = torch.linspace(0.2, 3.0, d, dtype=torch.float64)
    return QuadraticObjective(lam, q), torch.randn(d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("directions", ["gaussian", "sphere", "rademacher"])
def test_norm_matched_two_point_estimate_has_the_gradients_squared_norm(directions) -> None:
    """E‖v‖² = ‖g‖²: 40,000 independent estimates (one per stacked row) at one θ of a quadratic, where the
    central difference is exact; the unmatched estimate has κ‖g‖², κ = (q+d+1)/q or (q+d−1)/q."""
    d, q, n = 12, 3, 40_000
    obj, theta = _quadratic(d)
    g = obj.grad(theta)
    src = TwoPointSource(queries=q, directions=directions, seed=5, norm_match=True)
    v, _ = src(obj, theta.expand(n, d).clone(), {}, 0)
    sq = (v * v).sum(-1)
    target = float(g @ g)
    se = float(sq.std()) / math.sqrt(n)
    assert abs(float(sq.mean()) - target) < 4 * se and abs(float(sq.mean()) / target - 1) < 0.03
    raw, _ = TwoPointSource(queries=q, directions=directions, seed=5)(obj, theta.expand(n, d).clone(), {}, 0)
    kappa = norm_inflation(q, d, directions)
    assert torch.allclose(raw / math.sqrt(kappa), v, rtol=1e-12, atol=0)  # same draws, divided by √κ
    assert float(v.mean(0) @ g) / target == pytest.approx(1 / math.sqrt(kappa), rel=0.05)  # E v = g/√κ


def test_norm_match_refuses_non_two_point_presets() -> None:
    with pytest.raises(InvalidValueError, match="two-point ZO optimizers only .*, not gd"):
        optim.make_optimizer("gd", lr=0.1, norm_match=True)
    opt = optim.make_optimizer("zo-gd-nm", lr=0.05)
    assert opt.source.norm_match and opt.config()["norm_match"] is True and opt.zeroth_order


class _FixedGradient:
    """An objective whose exact gradient is g everywhere (RISE only reads the gradient)."""

    def __init__(self, g: torch.Tensor) -> None:
        self.g, self.dim = g, g.numel()

    def value_and_grad(self, theta):
        return torch.zeros(()), torch.zeros(()), self.g.expand_as(theta).clone()


def _rise_draws(g: torch.Tensor, sizes: list[int], q: int, n: int) -> torch.Tensor:
    src = RiseSource(queries=q, sizes=sizes, seed=11)
    obj, theta = _FixedGradient(g), torch.zeros_like(g)
    return torch.stack([src(obj, theta, {}, step)[0] for step in range(n)])


def test_rise_moments_match_the_blockwise_formula() -> None:
    """E v_b = g_b/√κ_b, E[v_b v_bᵀ] = ((q+1)/q g_b g_bᵀ + ‖g_b‖²/q I)/κ_b and the blockwise E[vᵀHv] of
    docs/theory.md §5a (cross-block terms g_bᵀH_bc g_c/√(κ_bκ_c)), from 12,000 seeded steps."""
    sizes, q, n = [3, 6, 2], 2, 12_000
    d = sum(sizes)
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(d, generator=gen, dtype=torch.float64)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    # curvature along g well above the mean eigenvalue (curvature excess e > 0): shaping lowers vᵀHv
    h = a @ a.T / d + torch.diag(torch.linspace(0.1, 2.0, d, dtype=torch.float64)) + 4 * torch.outer(g, g) / (g @ g)
    v = _rise_draws(g, sizes, q, n)
    blocks = optim.shaping.rise_blocks(sizes)
    predicted = 0.0
    for b, (s, e) in enumerate(blocks):
        db, gb = e - s, g[s:e]
        kb, tau = norm_inflation(q, db), shaping_tau(q, db)
        mean = v[:, s:e].mean(0)
        se = v[:, s:e].std(0) / math.sqrt(n)
        assert torch.all((mean - gb / math.sqrt(kb)).abs() < 4.5 * se)
        second = (v[:, s:e].T @ v[:, s:e]) / n
        expected = ((q + 1) / q * torch.outer(gb, gb) + float(gb @ gb) / q * torch.eye(db, dtype=g.dtype)) / kb
        assert float((second - expected).norm() / expected.norm()) < 0.05
        hb = h[s:e, s:e]
        predicted += (1 - tau) * float(gb @ hb @ gb) + tau * float(hb.trace()) / db * float(gb @ gb)
        for c, (s2, e2) in enumerate(blocks):
            if c != b:
                predicted += float(gb @ h[s:e, s2:e2] @ g[s2:e2]) / math.sqrt(kb * norm_inflation(q, e2 - s2))
    quad = torch.einsum("ni,ij,nj->n", v, h, v)
    se = float(quad.std()) / math.sqrt(n)
    assert abs(float(quad.mean()) - predicted) < 4 * se and abs(float(quad.mean()) / predicted - 1) < 0.03
    # and not the unshaped step's curvature gᵀHg (the test can fail)
    assert abs(float(g @ h @ g) - predicted) > 10 * se


def test_rise_draws_depend_on_seed_step_and_block_only() -> None:
    g = torch.ones(8, dtype=torch.float64)
    src = RiseSource(queries=1, blocks=4, seed=3)
    obj, theta = _FixedGradient(g), torch.zeros(8, dtype=torch.float64)
    first = src(obj, theta, {}, 5)[0]
    for step in (0, 1, 9):
        src(obj, theta, {}, step)
    assert torch.equal(src(obj, theta, {}, 5)[0], first)  # no history
    assert not torch.equal(first[:4], first[4:])  # equal blocks draw differently
    assert not torch.equal(src(obj, theta, {}, 6)[0], first)
    assert not torch.equal(RiseSource(queries=1, blocks=4, seed=4)(obj, theta, {}, 5)[0], first)
    # stacked copies (a sweep) are shaped with the same draws as a single run
    stacked = src(obj, theta.expand(2, 8).clone(), {}, 5)[0]
    assert torch.equal(stacked[0], first) and torch.equal(stacked[1], first)


def test_rise_blocks_follow_the_tensors_or_chunks() -> None:
    assert RiseSource(sizes=[3, 4]).block_bounds(7) == [(0, 3), (3, 7)]
    assert RiseSource(blocks=3).block_bounds(7) == [(0, 3), (3, 6), (6, 7)]
    assert RiseSource().block_bounds(5) == [(0, 5)]
    with pytest.raises(InvalidValueError, match="rise blocks must be"):
        RiseSource(blocks="layer")
    with pytest.raises(InvalidValueError, match="sum to 7"):
        RiseSource(sizes=[3, 4]).block_bounds(8)


def test_rise_step_is_gd_on_the_shaped_gradient() -> None:
    obj, theta = _quadratic(6)
    opt = optim.make_optimizer("rise", lr=0.1, queries=2, param_sizes=[2, 4], seed=7)
    v, _ = opt.source(obj, theta, {}, 3)
    before = theta.clone()
    opt.step(obj, theta, opt.init(theta), 3)
    assert torch.equal(theta, torch.add(before, v, alpha=-0.1)) and not opt.zeroth_order


def test_bands_of_the_new_presets() -> None:
    """zo-gd-nm reports ZO-GD's band at η/√κ; rise and the grouped presets have none (GD line + warning)."""
    d, lr = 500, 0.05
    nm = theory.band_for({"optimizer": "zo-gd-nm", "lr": lr, "queries": 2}, d)
    plain = theory.band_for({"optimizer": "zo-gd", "lr": lr / math.sqrt((2 + d + 1) / 2), "queries": 2}, d)
    assert nm.threshold == pytest.approx(plain.threshold, rel=1e-12) and nm.optimizer == "zo-gd-nm"
    gdm = theory.band_for({"optimizer": "zo-gdm", "lr": lr, "norm_match": True, "momentum": 0.9}, d)
    assert gdm.threshold == pytest.approx(
        theory.band_for({"optimizer": "zo-gdm", "lr": lr / math.sqrt(d + 2), "momentum": 0.9}, d).threshold)
    with pytest.raises(InvalidValueError, match="needs the dimension"):
        theory.band_for({"optimizer": "zo-gd-nm", "lr": lr})
    for name in ("rise", "zo-fc", "hybrid"):
        assert not presets.preset(name).has_band
        b = theory.band_for({"optimizer": name, "lr": lr}, d)
        assert b.kind == "classical" and b.optimizer == name and "no single spectral band" in b.warnings[0]
    assert presets.preset("zo-gd-nm").has_band and "zo-gd-nm" not in theory.OPTIMIZERS
