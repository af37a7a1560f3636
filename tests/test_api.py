"""The top-level Python API against a dense Hessian built independently with torch.func, and its errors."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import eos_probe
from eos_probe.errors import UserError
from eos_probe.losses import KinkWarning


def _mlp(d_in: int = 6, hidden: int = 5, out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, out)).double()


def _dense(model: nn.Module, loss_fn, x, y) -> np.ndarray:
    """Dense Hessian of loss_fn(model(x), y) in the parameters, straight from torch.func (no eos_probe code)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(theta):
        parts = theta.split(sizes)
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return loss_fn(functional_call(model, params, (x,)), y)

    return torch.func.hessian(f)(theta0).numpy()


def _data(n: int = 40, d_in: int = 6, classes: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=g), torch.randn(n, classes, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("case", ["criterion-ce", "builtin-ce", "criterion-mse-regression", "builtin-mse-regression",
                                  "builtin-mse-labels", "callable-huber"])
def test_estimates_match_dense_hessian(case: str) -> None:
    model = _mlp()
    x, labels, targets = _data()
    half_sq = lambda o, t: 0.5 * ((o - t) ** 2).sum(-1).mean()  # noqa: E731 - the "mse" convention
    loss, y, ref_loss = {
        "criterion-ce": (nn.CrossEntropyLoss(), labels, nn.functional.cross_entropy),
        "builtin-ce": ("ce", labels, nn.functional.cross_entropy),
        "criterion-mse-regression": (nn.MSELoss(), targets, nn.functional.mse_loss),
        "builtin-mse-regression": ("mse", targets, half_sq),
        "builtin-mse-labels": ("mse", labels, lambda o, t: half_sq(o, nn.functional.one_hot(t, 3).double())),
        "callable-huber": (lambda o, t: nn.functional.huber_loss(o, t, delta=0.5), targets,
                           lambda o, t: nn.functional.huber_loss(o, t, delta=0.5)),
    }[case]
    ev = np.linalg.eigvalsh(_dense(model, ref_loss, x, y))
    H = eos_probe.hessian(model, loss, (x, y), microbatch=16)
    lm = eos_probe.lambda_max(H, tol=1e-8)
    assert lm.converged and abs(lm.value - ev[-1]) <= max(lm.error, 1e-9) + 1e-9 * abs(ev[-1])
    tk = eos_probe.top_k(H, 3, tol=1e-8)
    np.testing.assert_allclose(tk.value, ev[::-1][:3], rtol=1e-6, atol=1e-9)
    tr = eos_probe.trace(H, n_matvec=100)
    assert abs(tr.value - ev.sum()) < 4 * tr.error + 1e-8, (tr, ev.sum())
    assert tr.n_hvp <= 100
    if case == "builtin-ce":
        dens = eos_probe.density(H, n_probes=4, n_steps=H.dim)  # full Krylov space: exact quadrature per probe
        est, se = dens.trace_fn(lambda lam: lam**2)
        assert abs(est - (ev**2).sum()) < 4 * se + 1e-6


def test_mse_builtin_is_c_over_2_times_mse_loss() -> None:
    model = _mlp()
    x, labels, _ = _data()
    onehot = nn.functional.one_hot(labels, 3).double()
    ours = eos_probe.lambda_max(eos_probe.hessian(model, "mse", (x, labels)), tol=1e-9).value
    torch_mse = eos_probe.lambda_max(eos_probe.hessian(model, nn.MSELoss(), (x, onehot)), tol=1e-9).value
    assert ours == pytest.approx(1.5 * torch_mse, rel=1e-6)


def test_ms_margin_matches_theory_on_dense_spectrum() -> None:
    from eos_probe.theory import ms_sum

    model = _mlp()
    x, labels, _ = _data()
    H = eos_probe.hessian(model, "ce", (x, labels))
    ev = np.linalg.eigvalsh(_dense(model, nn.functional.cross_entropy, x, labels))
    lr = 0.02
    est = eos_probe.ms_margin(H, optimizer="zo-gd", lr=lr, n_probes=8, n_steps=H.dim)
    # S(η) over the positive eigenvalues (negative-curvature modes are excluded, as in the probe metric)
    exact = ms_sum(np.clip(ev, 0, None), lr, "zo-gd")
    assert abs(est.value - exact) < 4 * est.error + 0.02 * abs(exact), (est, exact)
    gd = eos_probe.ms_margin(H, optimizer="gd", lr=lr)
    assert gd.value == pytest.approx(ev[-1] * lr / 2, rel=1e-3)
    with pytest.raises(UserError, match="preconditioner"):
        eos_probe.ms_margin(H, optimizer="zo-adam", lr=lr)
    p = torch.full((H.dim,), 2.0, dtype=torch.float64)
    ad = eos_probe.ms_margin(H, optimizer="adam", lr=lr, preconditioner=p)
    assert ad.value == pytest.approx(ev[-1] / 2 / ad.extra["threshold"], rel=1e-3)  # λ_max(P⁻¹H) = λ_max/2
    r = eos_probe.commutator_ratio(H, p)
    assert r.value == pytest.approx(0.0, abs=1e-12)  # a multiple of the identity commutes with H


class _Once(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o):
        ctx.save_for_backward(o)
        return o**2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (o,) = ctx.saved_tensors
        return 2 * o * g


@pytest.mark.parametrize("loss, y, match", [
    ("ce", "targets", "integer class labels"),
    ("mse", "wide", r"output's shape \(n, 3\), got \(40, 4\)"),
    ("nonsense", "labels", "unknown loss 'nonsense'"),
    (nn.CrossEntropyLoss(reduction="none"), "labels", "reduction='none'"),
    (nn.HuberLoss(reduction="sum"), "targets", "reduction='sum'.*use reduction='mean'"),
    ("mes", "labels", "did you mean 'mse'"),
    (lambda o, t: (o.argmax(-1) == t).double().mean(), "labels", "does not depend differentiably"),
    (lambda o, t: _Once.apply(o - t).mean(), "targets", "not twice differentiable"),
    (lambda o, t: (o - t) ** 2, "targets", "must return a scalar"),
    ("ce", "bad-labels", r"class labels must lie in 0..2"),
    ("ce", "short", "disagree on the number of examples"),
])
def test_errors_name_the_real_cause(loss, y, match) -> None:
    model = _mlp()
    x, labels, targets = _data()
    y = {"labels": labels, "targets": targets, "wide": torch.randn(40, 4, dtype=torch.float64),
         "bad-labels": labels + 3, "short": labels[:5]}[y]
    with pytest.raises(UserError, match=match):
        eos_probe.hessian(model, loss, (x, y))


def test_model_checks() -> None:
    x, labels, _ = _data()
    with pytest.raises(UserError, match="BatchNorm1d.*train mode.*model.eval"):
        eos_probe.hessian(nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3)).double(), "ce", (x, labels))
    with pytest.raises(UserError, match="Dropout.*train mode"):
        eos_probe.hessian(nn.Sequential(nn.Linear(6, 3), nn.Dropout(0.1)).double(), "ce", (x, labels))
    with pytest.raises(UserError, match="float32 but the model's parameters are torch.float64"):
        eos_probe.hessian(_mlp(), "ce", (x.float(), labels))
    bn = nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3)).double().eval()
    assert eos_probe.hessian(bn, "ce", (x, labels)).dim == 6 * 3 + 3 + 6
    with pytest.warns(KinkWarning, match="ReLU"):
        eos_probe.hessian(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).double(), "ce", (x, labels))

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 3)

        def forward(self, x):
            return torch.relu(self.a(x))

    with pytest.warns(KinkWarning, match="relu"):
        eos_probe.hessian(Functional().double(), "ce", (x, labels))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eos_probe.hessian(_mlp(), "ce", (x, labels))  # smooth model: no warning


def test_import_stays_light() -> None:
    code = "import sys, eos_probe; eos_probe.hessian; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", "import sys, eos_probe; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True"
