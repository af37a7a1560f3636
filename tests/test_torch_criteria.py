"""torch criteria (nn.MSELoss, nn.CrossEntropyLoss) on the exact path: their value, Hessian and Gauss–Newton
part against torch.func applied to the user's own criterion (float64, small models), every option covered."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import eos_probe
from eos_probe.curvature.ggn import ggn_quadratic, ggn_trace
from eos_probe.errors import UserError
from eos_probe.losses import TorchCrossEntropyLoss, TorchMSELoss

C = 3


def _mlp(d_in: int = 5, hidden: int = 4, out: int = C, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, out)).double()


def _flat(model: nn.Module):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def outputs(t, x):
        return functional_call(model, {n: v.view(s) for n, v, s in zip(names, t.split(sizes), shapes)}, (x,))

    return theta, outputs


def _dense_hessian(model: nn.Module, crit, x, y) -> torch.Tensor:
    """The Hessian of crit(model(x), y) in the parameters, from torch.func alone."""
    theta, outputs = _flat(model)
    return torch.func.hessian(lambda t: crit(outputs(t, x), y))(theta)


def _dense_ggn(model: nn.Module, crit, x, y) -> torch.Tensor:
    """Jᵀ A J with J the output Jacobian and A = ∇²_f crit(f, y), both from torch.func (no eos_probe code)."""
    theta, outputs = _flat(model)
    f0 = outputs(theta, x).detach()
    J = torch.func.jacrev(lambda t: outputs(t, x))(theta).reshape(f0.numel(), -1)
    A = torch.func.hessian(lambda f: crit(f.reshape(f0.shape), y))(f0.reshape(-1))
    return J.T @ A @ J


def _data(n: int = 24, d_in: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (n,), generator=g)
    targets = torch.randn(n, C, generator=g, dtype=torch.float64)
    probs = torch.softmax(2 * torch.randn(n, C, generator=g, dtype=torch.float64), -1)
    return x, labels, targets, probs


WEIGHT = torch.tensor([0.5, 2.0, 1.25], dtype=torch.float64)


def _case(name: str, labels, targets, probs):
    """(criterion, targets, expected spec class) for one option set."""
    ignored = labels.clone()
    ignored[::5] = -100  # torch's default ignore_index
    custom_ignored = labels.clone()
    custom_ignored[1::4] = 7
    return {
        "mse-mean": (nn.MSELoss(), targets, TorchMSELoss),
        "mse-sum": (nn.MSELoss(reduction="sum"), targets, TorchMSELoss),
        "mse-integer-targets": (nn.MSELoss(), nn.functional.one_hot(labels, C), TorchMSELoss),
        "ce-mean": (nn.CrossEntropyLoss(), labels, TorchCrossEntropyLoss),
        "ce-sum": (nn.CrossEntropyLoss(reduction="sum"), labels, TorchCrossEntropyLoss),
        "ce-weight": (nn.CrossEntropyLoss(weight=WEIGHT), labels, TorchCrossEntropyLoss),
        "ce-smoothing": (nn.CrossEntropyLoss(label_smoothing=0.2), labels, TorchCrossEntropyLoss),
        "ce-ignore": (nn.CrossEntropyLoss(), ignored, TorchCrossEntropyLoss),
        "ce-all-options": (nn.CrossEntropyLoss(weight=WEIGHT, label_smoothing=0.1, ignore_index=7), custom_ignored,
                           TorchCrossEntropyLoss),
        "ce-all-options-sum": (nn.CrossEntropyLoss(weight=WEIGHT, label_smoothing=0.1, reduction="sum"), ignored,
                               TorchCrossEntropyLoss),
        "ce-probs": (nn.CrossEntropyLoss(), probs, TorchCrossEntropyLoss),
        "ce-probs-weight-smoothing-sum": (nn.CrossEntropyLoss(weight=WEIGHT, label_smoothing=0.3, reduction="sum"),
                                          0.7 * probs, TorchCrossEntropyLoss),  # rows summing to 0.7: α ≠ 1
    }[name]


CASES = ["mse-mean", "mse-sum", "mse-integer-targets", "ce-mean", "ce-sum", "ce-weight", "ce-smoothing", "ce-ignore",
         "ce-all-options", "ce-all-options-sum", "ce-probs", "ce-probs-weight-smoothing-sum"]


@pytest.mark.parametrize("name", CASES)
def test_criterion_value_hessian_and_gauss_newton_match_torch(name: str) -> None:
    model = _mlp()
    x, labels, targets, probs = _data()
    crit, y, cls = _case(name, labels, targets, probs)
    H = eos_probe.hessian(model, crit, (x, y), microbatch=7)  # uneven chunks: the scale must not depend on them
    obj = H.objective
    assert type(obj.loss_spec) is cls and obj.loss_name in ("mse", "ce")
    theta = obj.initial_theta()
    # the value is the criterion's own, whatever the chunking
    with torch.no_grad():
        assert float(obj.loss(theta)) == pytest.approx(float(crit(model(x), y)), rel=1e-12)
    if name == "mse-integer-targets":  # torch.func cannot differentiate mse_loss against long targets; same value
        y = y.double()
    dense = _dense_hessian(model, crit, x, y)
    ours = H.matmat(torch.eye(H.dim, dtype=torch.float64))
    torch.testing.assert_close(ours, dense, rtol=1e-9, atol=1e-11)
    # the exact Gauss–Newton part: both paths against Jᵀ A J from torch.func
    G = _dense_ggn(model, crit, x, y)
    for path in ("layers", "jacobian"):
        assert ggn_trace(obj, theta, path=path)[0] == pytest.approx(float(G.trace()), rel=1e-10), path
    Z = torch.randn(3, H.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(ggn_quadratic(obj, theta, Z), torch.einsum("md,de,me->m", Z, G, Z), rtol=1e-10,
                               atol=1e-12)
    # both HVP back ends agree with the dense Hessian too (fwd-rev needs the hand-written loss)
    v = Z[0]
    torch.testing.assert_close(obj.hvp_at(theta, "fwd-rev").matvec(v), dense @ v, rtol=1e-9, atol=1e-11)
    assert eos_probe.api._default_trace_method(H) == "ggn+residual"


def _fit(model: nn.Module, crit, x, y, steps: int) -> None:
    """A few full-batch Adam steps: Hessians are studied on trained models, where the residual R = H − G (the
    part still estimated by Hutchinson) is no longer dominated by the initial misfit."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()


def test_trace_within_one_percent_of_dense_for_torch_criteria() -> None:
    """The issue's first call: eos_probe.trace(eos_probe.hessian(model, nn.MSELoss() / nn.CrossEntropyLoss(), ...))
    within 1 % of the dense trace. Measured when written: 0.004 % (± 0.011 %) and 0.17 % (± 0.55 %); the generic
    Hutchinson path these criteria took before was 8.2 % and 2.2 % off on the same models."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 20), nn.Tanh(), nn.Linear(20, 2)).double()
    teacher = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 2)).double()
    assert sum(p.numel() for p in mlp.parameters()) == 722
    x = torch.randn(64, 12, dtype=torch.float64)
    y = teacher(x).detach()
    _fit(mlp, nn.MSELoss(), x, y, 100)
    exact = float(_dense_hessian(mlp, nn.MSELoss(), x, y).trace())
    tr = eos_probe.trace(eos_probe.hessian(mlp, nn.MSELoss(), (x, y)))
    assert tr.extra["method"] == "ggn+residual" and tr.n_hvp <= 100
    assert abs(tr.value - exact) <= 0.01 * abs(exact), (tr, exact)

    torch.manual_seed(0)
    lenet = nn.Sequential(nn.Conv2d(1, 4, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(4, 8, 3), nn.Tanh(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 10)).double()
    x = torch.randn(32, 1, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (32,))
    _fit(lenet, nn.CrossEntropyLoss(), x, y, 150)
    exact = float(_dense_hessian(lenet, nn.CrossEntropyLoss(), x, y).trace())
    tr = eos_probe.trace(eos_probe.hessian(lenet, nn.CrossEntropyLoss(), (x, y)))
    assert tr.extra["method"] == "ggn+residual" and tr.n_hvp <= 100
    assert abs(tr.value - exact) <= 0.01 * abs(exact), (tr, exact)


def test_other_criteria_keep_the_generic_path() -> None:
    model = _mlp()
    x, labels, targets, _ = _data()

    class Halved(nn.MSELoss):  # a subclass with its own forward is not torch's criterion any more
        def forward(self, o, t):
            return 0.5 * super().forward(o, t)

    for crit, y in ((nn.HuberLoss(), targets), (Halved(), targets), (lambda o, t: nn.functional.mse_loss(o, t), targets)):
        H = eos_probe.hessian(model, crit, (x, y))
        assert H.objective.loss_name == "custom"
        assert eos_probe.api._default_trace_method(H) == "hutchinson"


@pytest.mark.parametrize("crit, y, match", [
    (nn.CrossEntropyLoss(reduction="none"), "labels", "reduction='none'.*'mean' or 'sum'"),
    (nn.MSELoss(reduction="none"), "targets", "reduction='none'"),
    (nn.MSELoss(), "labels", r"output's shape \(24, 3\).*loss='mse'"),
    (nn.CrossEntropyLoss(), "wide", r"class labels.*shape \(24,\) or class probabilities"),
    (nn.CrossEntropyLoss(weight=torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)), "labels", "negative class weights"),
    (nn.CrossEntropyLoss(), "negative-probs", "must be ≥ 0"),
    (nn.CrossEntropyLoss(), "bad-labels", r"class labels must lie in 0..2"),
    (nn.CrossEntropyLoss(ignore_index=0), "zeros", "every target equals ignore_index=0"),
    (nn.CrossEntropyLoss(weight=torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)), "zeros", "sum to 0"),
    (nn.CrossEntropyLoss(weight=torch.ones(3)), "labels", "float"),  # float32 weights, float64 model: torch's message
])
def test_torch_criterion_mistakes_are_one_line(crit, y, match) -> None:
    model = _mlp()
    x, labels, targets, probs = _data()
    y = {"labels": labels, "targets": targets, "wide": torch.randn(24, 4, dtype=torch.float64),
         "negative-probs": probs - 0.5, "bad-labels": labels + 3, "zeros": torch.zeros_like(labels)}[y]
    with pytest.raises(UserError, match=match) as e:
        eos_probe.hessian(model, crit, (x, y))
    assert "\n" not in str(e.value)


def test_convention_names_the_criterion() -> None:
    model = _mlp()
    x, labels, targets, _ = _data()
    H = eos_probe.hessian(model, nn.CrossEntropyLoss(weight=WEIGHT, label_smoothing=0.1), (x, labels))
    conv = H.objective.loss_spec.convention
    assert "nn.CrossEntropyLoss(reduction='mean', weight=[0.5, 2, 1.25], label_smoothing=0.1)" in conv
    assert "nn.MSELoss(reduction='sum')" in eos_probe.hessian(model, nn.MSELoss(reduction="sum"),
                                                              (x, targets)).objective.loss_spec.convention
    # the PyHessian adapter is handed the user's own criterion back
    assert H.objective.loss_spec.criterion() is H.objective.loss_spec.fn


def test_mse_loss_scale_against_builtin_regression() -> None:
    """nn.MSELoss(mean) = (2/D) × the built-in 0.5·Σ(f − y)² convention; its Hessian likewise (D = 3 here)."""
    model = _mlp()
    x, _, targets, _ = _data()
    Hb = eos_probe.hessian(model, "mse", (x, targets))
    Ht = eos_probe.hessian(model, nn.MSELoss(), (x, targets))
    V = torch.randn(4, Hb.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(Ht.matmat(V), Hb.matmat(V) * 2 / C, rtol=1e-10, atol=1e-12)
