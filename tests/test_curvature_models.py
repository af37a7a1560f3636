"""Curvature engine on real model families (tiny float64 instances) against dense Hessians."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from eos_probe.curvature import (HessianOperator, PreconditionedOperator, commutator_ratio, dense_hessian,
                                 ggn_quadratic, ggn_trace, lambda_max, top_k, trace, trace_fn)
from eos_probe.curvature.trace import layer_strata
from eos_probe.errors import UserError
from eos_probe.models import build_model
from eos_probe.objective import Objective

# (input_shape, classes, options): a few hundred parameters each
TINY = {
    "mlp": ((1, 4, 4), 3, {"hidden": (6, 5)}),
    "cnn": ((1, 8, 8), 3, {"widths": (2, 3), "hidden": 4}),
    "resnet": ((3, 8, 8), 3, {"width": 2, "stages": (1, 1), "groups": 2}),
    "vit": ((1, 4, 4), 3, {"patch": 2, "dim": 4, "depth": 1, "heads": 2, "mlp_dim": 6}),
    "lstm": ((6,), 3, {"embed": 3, "hidden": 3, "layers": 2}),
    "mamba": ((6,), 3, {"d_model": 4, "layers": 1, "d_state": 2, "expand": 2, "d_conv": 3, "dt_rank": 1}),
}
SEQUENCE = {"lstm", "mamba"}
N = 10


def _objective(name: str, loss: str = "mse", microbatch: int | None = None, seed: int = 0) -> Objective:
    shape, classes, opts = TINY[name]
    g = torch.Generator().manual_seed(100 + seed)
    if name in SEQUENCE:
        x = torch.randint(0, classes, (N, *shape), generator=g)
        y = torch.randint(0, classes, (N, *shape), generator=g)
        y[:, : shape[0] // 2] = -1  # only the second half counts, as in the sort task
    else:
        x = torch.randn(N, *shape, generator=g, dtype=torch.float64)
        y = torch.randint(0, classes, (N,), generator=g)
    model = build_model(name, input_shape=shape, num_classes=classes, seed=seed, dtype=torch.float64, **opts)
    if name == "resnet":  # its zero-initialised head makes most of H vanish; perturb it for a real test
        with torch.no_grad():
            model.head.weight.normal_(0, 0.5, generator=g)
    return Objective(model, x, y, loss=loss, num_classes=classes, microbatch=microbatch)


def _theta(obj: Objective) -> torch.Tensor:
    return obj.initial_theta()


@lru_cache(maxsize=None)
def _case(name: str, loss: str = "mse") -> tuple[Objective, torch.Tensor, torch.Tensor]:
    """(objective, θ, dense Hessian), computed once per module run."""
    obj = _objective(name, loss)
    theta = _theta(obj)
    return obj, theta, dense_hessian(obj, theta)


def _dense_ggn(obj: Objective, theta: torch.Tensor) -> torch.Tensor:
    """G = (1/N) Σ_terms Jᵀ A J from the full output Jacobian, independently of ggn.py."""
    f = lambda t: functional_call(obj.model, obj.space.unflatten(t), (obj.x,))  # noqa: E731
    out = f(theta)
    J = jacrev(f)(theta)  # (n, [L,] C, d)
    C = out.shape[-1]
    out, J = out.reshape(-1, C), J.reshape(-1, C, theta.numel())
    if obj.sequence:
        keep = (obj.y.reshape(-1) >= 0)
        out, J = out[keep], J[keep]
    if obj.loss_name == "mse":
        A = torch.eye(C, dtype=out.dtype).expand(out.shape[0], C, C)
    else:
        p = torch.softmax(out, -1)
        A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("tcd,tce,tef->df", J, A, J) / obj.n_terms


@pytest.mark.parametrize("name", list(TINY))
def test_hvp_matches_dense_hessian_for_every_family(name):
    obj, theta, H = _case(name)
    assert torch.allclose(H, H.T, atol=1e-10 * H.abs().max())
    V = torch.randn(2, obj.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scale = (V @ H).abs().max()
    assert scale > 1e-6
    chunked_obj = _objective(name, microbatch=3)  # micro-batches of 3 examples, uneven last chunk
    for backend in ("fwd-rev", "double-backward"):
        op = HessianOperator(obj, theta, backend=backend)
        torch.testing.assert_close(op.matmat(V), V @ H, atol=1e-10 * scale, rtol=0)
        torch.testing.assert_close(op.matvec(V[0]), H @ V[0], atol=1e-10 * scale, rtol=0)
        assert op.n_hvp == 3 and op.backend == backend
        chunked = HessianOperator(chunked_obj, theta, backend=backend)
        torch.testing.assert_close(chunked.matvec(V[1]), H @ V[1], atol=1e-10 * scale, rtol=0)
    # independent of autodiff's second-order machinery: central differences of the gradient
    eps = 1e-5
    fd = (obj.grad(theta + eps * V[0]) - obj.grad(theta - eps * V[0])) / (2 * eps)
    torch.testing.assert_close(fd, H @ V[0], atol=1e-6 * scale, rtol=0)


@pytest.mark.parametrize("name", ["mlp", "cnn", "vit"])
def test_eigenvalues_of_model_hessians(name):
    obj, theta, H = _case(name)
    ev = torch.linalg.eigvalsh(H).flip(0).numpy()
    op = HessianOperator(obj, theta)
    est = lambda_max(op, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert est.converged and abs(est.value - ev[0]) <= 1e-6 * abs(ev[0])
    tk = top_k(op, 3, tol=1e-10, max_iter=obj.dim, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(tk.value, ev[:3], rtol=1e-6)
    # scipy's ARPACK on the LinearOperator view agrees
    from scipy.sparse.linalg import eigsh
    assert abs(eigsh(op.to_scipy(), k=1, which="LA", tol=1e-10)[0][0] - ev[0]) <= 1e-6 * abs(ev[0])


@pytest.mark.parametrize("name,loss", [("mlp", "mse"), ("mlp", "ce"), ("cnn", "mse"), ("cnn", "ce")])
def test_ggn_trace_layer_formulas_and_jacobians_match_dense(name, loss):
    obj = _objective(name, loss, microbatch=4)
    theta = _theta(obj)
    G = _dense_ggn(obj, theta)
    fast, info = ggn_trace(obj, theta, path="layers")
    slow, info2 = ggn_trace(obj, theta, path="jacobian")
    assert info["path"] == "layers" and info2["path"] == "jacobian"
    assert fast == pytest.approx(float(G.trace()), rel=1e-10)
    assert slow == pytest.approx(float(G.trace()), rel=1e-10)
    Z = torch.randn(4, obj.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(ggn_quadratic(obj, theta, Z), torch.einsum("md,de,me->m", Z, G, Z), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name,loss", [("resnet", "mse"), ("vit", "ce"), ("lstm", "mse"), ("mamba", "ce")])
def test_ggn_trace_other_families_match_dense(name, loss):
    obj = _objective(name, loss)
    theta = _theta(obj)
    G = _dense_ggn(obj, theta)
    value, info = ggn_trace(obj, theta)
    assert info["path"] == "jacobian"  # norms / embeddings / custom cells have no layer formula
    assert value == pytest.approx(float(G.trace()), rel=1e-10)
    with pytest.raises(UserError, match="layer formulas"):
        ggn_trace(obj, theta, path="layers")
    Z = torch.randn(3, obj.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(ggn_quadratic(obj, theta, Z), torch.einsum("md,de,me->m", Z, G, Z), rtol=1e-10, atol=0)


UNBIASED = [("mlp", "mse", [("hutchinson", None), ("hutchinson", "layers"), ("ggn+residual", "layers"),
                             ("ggn+residual", None)], 12),
            ("mlp", "ce", [("hutchinson", "layers"), ("ggn+residual", "layers")], 12),
            ("cnn", "mse", [("ggn+residual", "layers")], 8),
            ("lstm", "ce", [("hutchinson", "layers"), ("ggn+residual", "layers")], 8)]


@pytest.mark.parametrize("name,loss,methods,seeds", UNBIASED)
def test_trace_estimators_are_unbiased_on_model_hessians(name, loss, methods, seeds):
    obj, theta, H = _case(name, loss)
    exact = float(torch.trace(H))
    op = HessianOperator(obj, theta)
    for method, blocks in methods:
        runs = [trace(op, method, n_matvec=24, blocks=blocks, generator=torch.Generator().manual_seed(s))
                for s in range(seeds)]
        vals = np.array([r.value for r in runs])
        reported = np.sqrt(np.mean([r.error**2 for r in runs]))
        assert abs(vals.mean() - exact) < 4 * reported / np.sqrt(len(runs)) + 1e-10 * abs(exact), (method, blocks)
        if reported > 1e-8 * abs(exact):  # the reported error describes the spread of the runs
            assert 0.4 < reported / vals.std(ddof=1) < 2.5, (method, blocks, reported, vals.std(ddof=1))
        assert all(r.n_hvp == 24 for r in runs)


def test_layer_strata_partition_and_separate_neighbours():
    obj = _objective("cnn")
    masks = layer_strata(obj)
    assert torch.stack(masks).sum(0).eq(1).all()
    # modules net.0, net.3, net.7, net.9 → 4 strata, weight and bias of net.9 together
    assert len(masks) == 4
    two = layer_strata(obj, 2)
    assert len(two) == 2 and torch.stack(two).sum(0).eq(1).all()
    with pytest.raises(UserError, match="partition"):
        trace(HessianOperator(obj, _theta(obj)), blocks=[torch.arange(5)])


def test_adaptive_ggn_residual_reaches_rtol():
    obj, theta, H = _case("cnn")
    op = HessianOperator(obj, theta)
    est = trace(op, "ggn+residual", n_matvec=400, rtol=0.01, generator=torch.Generator().manual_seed(0))
    exact = float(torch.trace(H))
    assert est.converged and est.error <= 0.01 * abs(est.value)
    assert abs(est.value - exact) < 4 * est.error
    assert est.extra["n_jvp"] == est.n_hvp


def test_preconditioned_model_hessian_and_commutator():
    obj, theta, H = _case("mlp")
    H = H.numpy()
    p = torch.rand(obj.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    op = PreconditionedOperator(HessianOperator(obj, theta), p)
    eig = np.sort(np.linalg.eigvals(np.diag(1 / p.numpy()) @ H).real)[::-1]
    est = top_k(op, 2, tol=1e-10, max_iter=obj.dim, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(est.value, eig[:2], rtol=1e-6)
    P = np.diag(p.numpy())
    exact = np.linalg.norm(P @ H - H @ P) / np.linalg.norm(P @ H)
    r = commutator_ratio(HessianOperator(obj, theta), p, n_probes=64, generator=torch.Generator().manual_seed(1))
    assert r.n_hvp == 128
    assert abs(r.value - exact) < 4 * r.error


def test_slq_margin_on_a_model_hessian():
    obj, theta, H = _case("mlp")
    ev = torch.linalg.eigvalsh(H).numpy()
    eta = 0.5 / ev.max()
    f = lambda lam: eta * lam / (2 - 2 * eta * lam)  # noqa: E731  ZO-GD, q = 1: S(η) of THEORY.md §2
    est = trace_fn(HessianOperator(obj, theta), f, n_probes=8, n_steps=60,
                   generator=torch.Generator().manual_seed(0))
    assert abs(est.value - f(ev).sum()) < 4 * est.error
