"""The Objective against independent truth: hand-computed losses, dense Hessians, chunking invariance."""
from __future__ import annotations

import pytest
import torch

from eos_probe.errors import UserError
from eos_probe.objective import Objective


class _Net(torch.nn.Module):
    def __init__(self, d_in: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.a = torch.nn.Linear(d_in, 5)
        self.b = torch.nn.Linear(5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.gelu(self.a(x)))


class _SeqNet(torch.nn.Module):
    """Tiny causal-free sequence model: embedding → linear, output (n, L, V)."""

    def __init__(self, vocab: int = 4) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 3)
        self.out = torch.nn.Linear(3, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(x)))


def _setup(loss: str = "mse", n: int = 13, microbatch: int | None = None):
    torch.manual_seed(0)
    model = _Net().double()
    x = torch.randn(n, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, x, y, Objective(model, x, y, loss=loss, num_classes=3, microbatch=microbatch)


def test_mse_convention_is_half_sum_over_outputs_mean_over_examples() -> None:
    model, x, y, obj = _setup("mse")
    out = model(x)
    expected = 0.5 * ((out - torch.nn.functional.one_hot(y, 3).double()) ** 2).sum(1).mean()
    assert torch.allclose(obj.loss(obj.initial_theta()), expected)
    # the documented relation to nn.MSELoss(mean): factor C/2 in the loss (and so in λ_max)
    ref = torch.nn.functional.mse_loss(out, torch.nn.functional.one_hot(y, 3).double())
    assert torch.allclose(expected, ref * 3 / 2)


def test_cross_entropy_and_accuracy() -> None:
    model, x, y, obj = _setup("ce")
    theta = obj.initial_theta()
    loss, acc = obj.evaluate(theta)
    out = model(x)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(out, y))
    assert acc == pytest.approx((out.argmax(1) == y).double().mean().item())


def test_sequence_loss_skips_masked_positions() -> None:
    torch.manual_seed(1)
    model = _SeqNet().double()
    x = torch.randint(0, 4, (6, 5))
    y = torch.randint(0, 4, (6, 5))
    y[:, :2] = -1
    obj = Objective(model, x, y, loss="ce", num_classes=4)
    out = model(x)[:, 2:]
    expected = torch.nn.functional.cross_entropy(out.reshape(-1, 4), y[:, 2:].reshape(-1))
    assert torch.allclose(obj.loss(obj.initial_theta()), expected)
    assert obj.n_terms == 18


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_micro_batching_changes_nothing_but_round_off(loss: str) -> None:
    _, _, _, full = _setup(loss)
    _, _, _, chunked = _setup(loss, microbatch=4)
    theta = full.initial_theta()
    v = torch.randn_like(theta)
    assert torch.allclose(full.loss(theta), chunked.loss(theta), rtol=1e-13)
    assert torch.allclose(full.grad(theta), chunked.grad(theta), rtol=1e-12, atol=1e-14)
    assert torch.allclose(full.hvp(theta, v), chunked.hvp(theta, v), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("backend", ["fwd-rev", "double-backward"])
@pytest.mark.parametrize("microbatch", [None, 5])
def test_hvp_back_ends_match_dense_hessian(backend: str, microbatch) -> None:
    _, _, _, obj = _setup("ce", microbatch=microbatch)
    theta = obj.initial_theta()
    H = torch.func.hessian(obj._loss_single)(theta)
    V = torch.randn(3, theta.numel(), dtype=theta.dtype)
    op = obj.hvp_at(theta, backend)
    assert torch.allclose(op.matvec(V[0]), H @ V[0], rtol=1e-10, atol=1e-12)
    assert torch.allclose(op.matmat(V), V @ H, rtol=1e-10, atol=1e-12)
    assert op.n_hvp == 4


def test_gradient_matches_autograd_and_batched_loss_matches_loop() -> None:
    model, x, y, obj = _setup("mse")
    theta = obj.initial_theta()
    loss, _, g = obj.value_and_grad(theta)
    out = model(x)
    ref = 0.5 * ((out - torch.nn.functional.one_hot(y, 3).double()) ** 2).sum(1).mean()
    ref.backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(g, expected) and torch.allclose(loss, ref.detach())
    stack = theta + 0.1 * torch.randn(4, theta.numel(), dtype=theta.dtype)
    assert torch.allclose(obj.loss(stack), torch.stack([obj.loss(t) for t in stack]), rtol=1e-13)


def test_auto_backend_picks_a_working_one() -> None:
    _, _, _, obj = _setup()
    assert obj.choose_hvp_backend(obj.initial_theta()) in ("fwd-rev", "double-backward")


def test_bad_arguments() -> None:
    model, x, y, _ = _setup()
    with pytest.raises(UserError):
        Objective(model, x, y, loss="hinge", num_classes=3)
    with pytest.raises(UserError):
        Objective(model, x, y, num_classes=3, microbatch=0)
