"""Optimizers against independent truth: the ZO estimator's exact moments (THEORY.md §1) and torch.optim."""
from __future__ import annotations

import math

import pytest
import torch

from eos_probe.data.quadratic import QuadraticObjective
from eos_probe.errors import UserError
from eos_probe.optim import make_optimizer
from eos_probe.optim.sources import TwoPointSource, stream_seed


def _quadratic(d: int = 5, seed: int = 0) -> tuple[QuadraticObjective, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    obj = QuadraticObjective(torch.linspace(0.5, 3.0, d, dtype=torch.float64), basis)
    theta = torch.randn(d, generator=g, dtype=torch.float64)
    return obj, theta


def _draws(source: TwoPointSource, obj, theta: torch.Tensor, n: int) -> torch.Tensor:
    """n independent estimates at the same θ: rows of a stacked (n, d) θ draw independent directions."""
    stacked = theta.expand(n, -1).clone()
    g, _ = source(obj, stacked, {}, step=0)
    return g.clone()


@pytest.mark.parametrize("queries", [1, 3])
def test_gaussian_central_estimator_mean_and_covariance(queries: int) -> None:
    obj, theta = _quadratic()
    a = obj.grad(theta)
    g = _draws(TwoPointSource(queries=queries, mu=1e-3), obj, theta, 200_000)
    n, d = g.shape
    # mean: E[g] = ∇L, checked within 4 standard errors per coordinate
    mean = g.mean(0)
    se = g.std(0) / math.sqrt(n)
    assert torch.all((mean - a).abs() < 4 * se), (mean, a, se)
    # covariance: Cov(g) = (1/q)(a aᵀ + ‖a‖² I) (THEORY.md §1), each entry within 5 standard errors
    c = g - a
    prods = c[:, :, None] * c[:, None, :]
    cov, cov_se = prods.mean(0), prods.std(0) / math.sqrt(n)
    exact = (torch.outer(a, a) + a.dot(a) * torch.eye(d, dtype=a.dtype)) / queries
    assert torch.all((cov - exact).abs() < 5 * cov_se), (cov, exact)
    # and the test can fail: the q = 1 covariance is rejected for q = 3 and vice versa
    wrong = exact * (queries if queries > 1 else 0.5)
    assert not torch.all((cov - wrong).abs() < 5 * cov_se)


def test_forward_difference_is_unbiased_on_a_quadratic() -> None:
    obj, theta = _quadratic(seed=1)
    g = _draws(TwoPointSource(difference="forward", mu=1e-2), obj, theta, 100_000)
    se = g.std(0) / math.sqrt(g.shape[0])
    assert torch.all((g.mean(0) - obj.grad(theta)).abs() < 4 * se)


def test_direction_laws() -> None:
    d, n = 7, 50_000
    gen = torch.Generator().manual_seed(3)
    for law in ("gaussian", "sphere", "rademacher"):
        u = TwoPointSource(directions=law).sample(torch.empty(n, d, dtype=torch.float64), gen)
        second = u.T @ u / n  # E[u uᵀ] = I for every law
        assert torch.allclose(second, torch.eye(d, dtype=u.dtype), atol=0.05), law
        if law == "sphere":
            assert torch.allclose(u.norm(dim=1), torch.full((n,), math.sqrt(d), dtype=u.dtype))
        if law == "rademacher":
            assert set(u.unique().tolist()) == {-1.0, 1.0}


def test_theta_is_restored_bitwise_and_directions_depend_only_on_step() -> None:
    obj, theta = _quadratic()
    theta = theta.float()
    obj32 = QuadraticObjective(obj.eigenvalues.float(), obj.basis.float(), dtype=torch.float32)
    before = theta.clone()
    src = TwoPointSource(queries=4, mu=1e-3, seed=11)
    g1 = src(obj32, theta, {}, step=5)[0].clone()
    assert torch.equal(theta, before)  # out-of-place perturbations: no ±μ round-off walk
    src(obj32, theta, {}, step=6)
    g2 = src(obj32, theta, {}, step=5)[0].clone()
    assert torch.equal(g1, g2)  # the step's seed alone fixes its directions
    assert stream_seed(0, 1, 1) != stream_seed(0, 2, 1) != stream_seed(1, 1, 1)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 6)
        self.b = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.gelu(self.a(x)))


def _tiny_objective():
    from eos_probe.objective import Objective

    torch.manual_seed(0)
    model = _Tiny().double()
    x = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return model, Objective(model, x, y, loss="mse", num_classes=3)


@pytest.mark.parametrize("preset,torch_opt", [
    ("gd", lambda p: torch.optim.SGD(p, lr=0.1)),
    ("gdm", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-8)),
])
def test_first_order_rules_match_torch_optim(preset, torch_opt) -> None:
    model, obj = _tiny_objective()
    lr = 0.01 if preset == "adam" else 0.1
    opt = make_optimizer(preset, lr=lr, beta2=0.99)
    theta = obj.initial_theta()
    state = opt.init(theta)
    ref = torch_opt(list(model.parameters()))
    for step in range(25):
        opt.step(obj, theta, state, step)
        ref.zero_grad()
        out = model(obj.x)
        onehot = torch.nn.functional.one_hot(obj.y, 3).double()
        (0.5 * ((out - onehot) ** 2).sum() / obj.x.shape[0]).backward()
        ref.step()
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.allclose(theta, expected, rtol=1e-9, atol=1e-11)


def test_adam_preconditioner_matches_bias_corrected_form() -> None:
    _, obj = _tiny_objective()
    opt = make_optimizer("adam", lr=1e-3, beta2=0.99, eps=1e-8)
    theta = obj.initial_theta()
    state = opt.init(theta)
    grads = []
    for step in range(3):
        grads.append(obj.grad(theta))
        opt.step(obj, theta, state, step)
    v = sum(0.99 ** (2 - i) * 0.01 * g * g for i, g in enumerate(grads))
    P = (1 - 0.9 ** 3) * (torch.sqrt(v / (1 - 0.99 ** 3)) + 1e-8)
    assert torch.allclose(opt.preconditioner(state), P, rtol=1e-10)


def test_ema_momentum_is_heavy_ball_with_scaled_lr() -> None:
    obj, theta0 = _quadratic()
    runs = []
    for style, lr in (("ema", 0.1), ("heavy_ball", 0.1 * (1 - 0.8))):
        opt = make_optimizer("gdm", lr=lr, momentum=0.8, momentum_style=style)
        theta = theta0.clone()
        st = opt.init(theta)
        for s in range(30):
            opt.step(obj, theta, st, s)
        runs.append(theta)
    assert torch.allclose(runs[0], runs[1], rtol=1e-10)


@pytest.mark.parametrize("kwargs", [
    {"preset": "nope", "lr": 0.1}, {"preset": "gd", "lr": -1.0}, {"preset": "gd", "lr": float("nan")},
    {"preset": "gdm", "lr": 0.1, "momentum": 1.0}, {"preset": "zo-gd", "lr": 0.1, "queries": 0},
    {"preset": "zo-gd", "lr": 0.1, "mu": 0.0}, {"preset": "zo-gd", "lr": 0.1, "directions": "cauchy"},
    {"preset": "gd", "lr": 0.1, "momentum": 0.9}, {"preset": "adam", "lr": 0.1, "eps": -1.0},
])
def test_bad_optimizer_settings_are_user_errors(kwargs) -> None:
    preset = kwargs.pop("preset")
    with pytest.raises(UserError):
        make_optimizer(preset, **kwargs)
