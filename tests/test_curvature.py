"""Curvature algorithms on explicit matrices with known spectra (float64): eigenvalues, traces, SLQ, commutator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import eigsh

from eos_probe.curvature import (DenseOperator, Estimate, PreconditionedOperator, commutator_ratio,
                                 directional_curvature, lambda_max, spectral_density, top_k, trace, trace_fn)
from eos_probe.errors import UserError


def _matrix(spectrum: np.ndarray, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(spectrum), len(spectrum))))
    return (q * spectrum) @ q.T


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# a spectrum with a cluster at the top, a negative tail and a bulk (Hessian-like)
SPECTRUM = np.sort(np.concatenate([[10.0, 9.5, 9.0, 7.0], np.random.default_rng(1).uniform(-1, 5, 196)]))[::-1]


def test_lambda_max_and_top_k_match_known_spectrum():
    op = DenseOperator(_matrix(SPECTRUM))
    est = lambda_max(op, tol=1e-10, generator=_gen(0))
    assert est.converged
    assert abs(est.value - SPECTRUM[0]) <= 1e-6 * SPECTRUM[0]
    v = est.extra["vector"]
    assert torch.allclose(op.matrix @ v, est.value * v, atol=1e-6)
    tk = top_k(op, 4, tol=1e-10, generator=_gen(0))
    assert tk.converged and tk.extra["vectors"].shape == (4, 200)
    np.testing.assert_allclose(tk.value, SPECTRUM[:4], rtol=1e-6)
    assert tk.n_hvp == op.n_hvp - est.n_hvp


@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-8])
def test_reported_error_bounds_the_true_error(tol):
    op = DenseOperator(_matrix(SPECTRUM, seed=3))
    for seed in range(5):
        # λ_max: the bound covers the distance to the true top eigenvalue
        est = lambda_max(op, tol=tol, generator=_gen(seed))
        assert est.converged and est.error <= tol * est.value
        assert abs(est.value - SPECTRUM[0]) <= est.error + 1e-12
        # top-k: each Ritz value lies within its bound of an eigenvalue (a residual cannot certify order)
        tk = top_k(op, 3, tol=tol, generator=_gen(seed))
        dist = np.abs(tk.value[:, None] - SPECTRUM[None, :]).min(axis=1)
        assert tk.converged and np.all(tk.error <= tol * np.abs(tk.value))
        assert np.all(dist <= tk.error + 1e-12), (dist, tk.error)


def test_unconverged_lanczos_says_so():
    # slowly decaying spectrum, no gap: 5 steps cannot resolve λ_max to 1e-10
    op = DenseOperator(_matrix(np.linspace(1.0, 0.0, 300)))
    est = lambda_max(op, tol=1e-10, max_iter=5, generator=_gen(0))
    assert not est.converged
    assert est.n_hvp == 5
    assert est.error > 1e-10 * est.value


def test_warm_start_cuts_products_on_a_perturbed_matrix():
    rng = np.random.default_rng(5)
    A = _matrix(SPECTRUM)
    E = rng.standard_normal(A.shape)
    B = A + 1e-3 * (E + E.T) / 2
    first = lambda_max(DenseOperator(A), tol=1e-8, generator=_gen(0))
    truth = np.linalg.eigvalsh(B)[-1]
    cold = lambda_max(DenseOperator(B), tol=1e-8, generator=_gen(1))
    warm = lambda_max(DenseOperator(B), tol=1e-8, v0=first.extra["vector"], generator=_gen(1))
    assert warm.extra["warm_start"] and not cold.extra["warm_start"]
    assert abs(warm.value - truth) <= 1e-6 * truth and abs(cold.value - truth) <= 1e-6 * truth
    assert warm.n_hvp < cold.n_hvp
    # an Estimate works as warm start too, and top_k accepts a stack of vectors
    tk = top_k(DenseOperator(A), 3, tol=1e-8)
    warm_k = top_k(DenseOperator(B), 3, tol=1e-8, v0=tk)
    np.testing.assert_allclose(warm_k.value, np.linalg.eigvalsh(B)[::-1][:3], rtol=1e-6)


def test_repeated_top_eigenvalue_is_found_after_breakdown():
    # a matrix with only 3 distinct eigenvalues: the Krylov space closes after 3 steps
    spec = np.array([4.0] * 3 + [2.0] * 5 + [1.0] * 4)
    tk = top_k(DenseOperator(_matrix(spec)), 3, tol=1e-10, generator=_gen(0))
    np.testing.assert_allclose(tk.value, [4.0, 4.0, 4.0], rtol=1e-8)
    assert tk.extra["restarts"] >= 1


def test_scipy_view_agrees():
    A = _matrix(SPECTRUM)
    op = DenseOperator(A)
    lin = op.to_scipy()
    x = np.random.default_rng(0).standard_normal((200, 3))
    np.testing.assert_allclose(lin @ x, A @ x, atol=1e-12)
    top = eigsh(lin, k=1, which="LA", tol=1e-10)[0][0]
    assert abs(top - SPECTRUM[0]) < 1e-8
    assert op.n_hvp > 0


def test_hutchinson_is_unbiased_and_its_standard_error_is_honest():
    spec = np.random.default_rng(2).uniform(0, 2, 100)
    op = DenseOperator(_matrix(spec))
    exact = spec.sum()
    ests = [trace(op, "hutchinson", n_matvec=20, generator=_gen(s)) for s in range(40)]
    values = np.array([e.value for e in ests])
    se_mean = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - exact) < 3 * se_mean
    # the per-run standard error matches the spread of the runs (within sampling noise of the two)
    reported = np.sqrt(np.mean([e.error**2 for e in ests]))
    assert 0.7 < reported / values.std(ddof=1) < 1.4
    assert all(e.n_hvp == 20 and e.extra["n_probes"] == 20 for e in ests)


def test_hutchpp_has_lower_variance_on_a_decaying_spectrum():
    spec = 1.0 / np.arange(1, 201) ** 2
    op = DenseOperator(_matrix(spec))
    exact = spec.sum()
    hut = np.array([trace(op, "hutchinson", n_matvec=30, generator=_gen(s)).value for s in range(30)])
    hpp = [trace(op, "hutch++", n_matvec=30, generator=_gen(s)) for s in range(30)]
    vals = np.array([e.value for e in hpp])
    assert all(e.n_hvp == 30 for e in hpp)
    assert abs(vals.mean() - exact) < 3 * vals.std(ddof=1) / np.sqrt(len(vals)) + 1e-12
    assert vals.var() < 0.1 * hut.var()


def test_deflation_uses_ritz_values_and_cuts_variance():
    spec = np.concatenate([[50.0, 40.0, 30.0], np.random.default_rng(4).uniform(0, 1, 97)])
    op = DenseOperator(_matrix(spec))
    tk = top_k(op, 3, tol=1e-10)
    n_before = op.n_hvp
    runs = [trace(op, "hutchinson", n_matvec=20, deflate=tk, generator=_gen(s)) for s in range(20)]
    assert op.n_hvp - n_before == 20 * 20  # the top part costs no product
    vals = np.array([e.value for e in runs])
    assert abs(vals.mean() - spec.sum()) < 3 * vals.std(ddof=1) / np.sqrt(len(vals)) + 1e-9
    plain = np.array([trace(op, "hutchinson", n_matvec=20, generator=_gen(s)).value for s in range(20)])
    assert vals.std() < 0.2 * plain.std()
    np.testing.assert_allclose(runs[0].extra["exact_part"], spec[:3].sum(), rtol=1e-10)


def test_adaptive_trace_stops_at_the_requested_relative_error():
    spec = np.random.default_rng(6).uniform(0.5, 1.5, 150)
    op = DenseOperator(_matrix(spec))
    est = trace(op, "hutchinson", n_matvec=2000, rtol=0.02, generator=_gen(0))
    assert est.converged and est.error <= 0.02 * abs(est.value)
    assert 10 <= est.n_hvp < 2000
    capped = trace(op, "hutchinson", n_matvec=12, rtol=1e-4, generator=_gen(0))
    assert not capped.converged and capped.n_hvp == 12


def test_slq_trace_fn_matches_dense_value():
    spec = np.random.default_rng(7).uniform(0.0, 3.0, 120)
    op = DenseOperator(_matrix(spec))
    eta = 0.3  # η λ_max < 1: the ZO-GD margin of THEORY.md §2 (q = 1, β = 0)
    # S(η) for q = 1, β = 0: D = 2 − ηλ − ηλ, so f(λ) = ηλ / (2 − 2ηλ)
    f = lambda lam: eta * lam / (2 - 2 * eta * lam)  # noqa: E731
    exact = f(spec).sum()
    est = trace_fn(op, f, n_probes=30, n_steps=30, generator=_gen(1))
    assert est.error > 0
    assert abs(est.value - exact) < 4 * est.error
    assert abs(est.value - exact) < 0.05 * exact
    # with as many steps as dimensions each quadrature is exact: the only error is the probe average
    full = trace_fn(op, lambda lam: lam**2, n_probes=4, n_steps=120, generator=_gen(2))
    assert abs(full.value - (spec**2).sum()) < 4 * full.error + 1e-8


def test_spectral_density_is_a_normalised_smoothing_of_the_spectrum():
    spec = np.concatenate([np.full(50, 1.0), np.full(50, 4.0)])
    op = DenseOperator(_matrix(spec))
    dens = spectral_density(op, n_probes=6, n_steps=30, generator=_gen(0), sigma=0.1)
    assert dens.nodes.shape == (6, 30) and dens.weights.shape == (6, 30)
    np.testing.assert_allclose(dens.weights.sum(1), 1.0, atol=1e-10)
    dx = dens.grid[1] - dens.grid[0]
    assert abs(dens.density.sum() * dx - 1.0) < 1e-3
    # two spikes at 1 and 4, each holding about half of the mass
    left = dens.density[dens.grid < 2.5].sum() * dx
    assert 0.3 < left < 0.7
    peaks = dens.grid[np.argsort(dens.density)[-1]]
    assert min(abs(peaks - 1.0), abs(peaks - 4.0)) < 0.05
    mean, se = dens.trace_fn(lambda lam: lam)
    assert abs(mean - spec.sum()) < 4 * se + 1e-9


def test_preconditioned_spectrum_equals_eig_of_p_inverse_h():
    rng = np.random.default_rng(8)
    A = _matrix(np.concatenate([rng.uniform(0, 3, 58), [-0.5, 6.0]]))
    p = rng.uniform(0.2, 5.0, 60)
    op = PreconditionedOperator(DenseOperator(A), torch.tensor(p))
    eig = np.sort(np.linalg.eigvals(np.diag(1 / p) @ A).real)[::-1]
    tk = top_k(op, 3, tol=1e-12, generator=_gen(0))
    np.testing.assert_allclose(tk.value, eig[:3], rtol=1e-8)
    M = op.matmat(torch.eye(60, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(M))[::-1], eig, rtol=1e-8, atol=1e-10)
    # a sketch as wide as the space makes Hutch++ exact
    np.testing.assert_allclose(trace(op, "hutch++", n_matvec=180, generator=_gen(0)).value, eig.sum(), rtol=1e-8)
    with pytest.raises(UserError):
        PreconditionedOperator(DenseOperator(A), torch.zeros(60))


def test_commutator_ratio_zero_when_commuting_and_dense_value_otherwise():
    rng = np.random.default_rng(9)
    d = 80
    D = np.diag(rng.uniform(0.1, 2.0, d))
    p = torch.tensor(rng.uniform(0.5, 2.0, d))
    zero = commutator_ratio(DenseOperator(D), p, n_probes=4, generator=_gen(0))
    assert zero.value == 0.0 and zero.n_hvp == 8
    # a scalar preconditioner commutes with anything
    assert commutator_ratio(DenseOperator(_matrix(SPECTRUM)), torch.full((200,), 3.0), generator=_gen(0)).value < 1e-12
    A = _matrix(rng.uniform(0, 2, d)) + D
    P = np.diag(p.numpy())
    exact = np.linalg.norm(P @ A - A @ P) / np.linalg.norm(P @ A)
    est = commutator_ratio(DenseOperator(A), p, n_probes=200, generator=_gen(1))
    assert abs(est.value - exact) < 4 * est.error
    assert abs(est.value - exact) < 0.05 * exact
    runs = np.array([commutator_ratio(DenseOperator(A), p, n_probes=10, generator=_gen(s)).value for s in range(30)])
    reported = commutator_ratio(DenseOperator(A), p, n_probes=10, generator=_gen(0)).error
    assert 0.5 < reported / runs.std(ddof=1) < 2.0


def test_directional_curvature():
    A = _matrix(SPECTRUM)
    g = torch.tensor(np.random.default_rng(3).standard_normal(200))
    est = directional_curvature(DenseOperator(A), g)
    assert est.n_hvp == 1
    assert abs(est.value - float(g @ torch.tensor(A) @ g / (g @ g))) < 1e-12
    evec = lambda_max(DenseOperator(A), tol=1e-12).extra["vector"]
    assert abs(directional_curvature(DenseOperator(A), 5 * evec).value - SPECTRUM[0]) < 1e-9


def test_user_errors():
    op = DenseOperator(np.eye(5))
    with pytest.raises(UserError, match="trace method"):
        trace(op, "magic")
    with pytest.raises(UserError, match="ggn"):
        trace(op, "ggn+residual")
    with pytest.raises(UserError):
        top_k(op, 6)
    with pytest.raises(UserError):
        DenseOperator(np.ones((2, 3)))
    with pytest.raises(UserError, match="eigenvector"):
        trace(op, deflate=Estimate(1.0, 0.0, 0))


def test_estimate_rel_error():
    assert Estimate(2.0, 0.1, 3).rel_error == pytest.approx(0.05)
    np.testing.assert_allclose(Estimate(np.array([2.0, 4.0]), np.array([0.2, 0.2]), 3).rel_error, [0.1, 0.05])
