"""Fast coverage checks of the probe's error bars against known truth (few seeds; the full table is
benchmarks/calibration.py): Lanczos never flags a wrong eigenvalue converged (swapped warm start, close
cold top pair), adaptive trace stopping keeps its error bars honest, small-sample errors are t-corrected,
the deflated S(η) split matches the dense spectrum, and negative-curvature modes are excluded from S for
the reason the moment operator gives."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eos_probe.curvature import DenseOperator, top_k, trace
from eos_probe.curvature.deflated import rest_quadrature, split_trace, split_trace_fn
from eos_probe.curvature.trace import t_factor
from eos_probe.theory import moment_operator, ms_sum
from eos_probe.theory.moments import spectral_radius


def _rotated(eigs: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((eigs.size, eigs.size)))
    return (Q * eigs) @ Q.T, Q


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_warm_start_from_a_swapped_top_pair_never_reports_the_old_eigenvalue_converged() -> None:
    # the previous top eigenvector is now the second one, 16% below the new top (issue 18's case)
    d = 400
    eigs = np.concatenate([[1.0, 0.84], np.linspace(-0.1, 0.6, d - 2)])
    A, Q = _rotated(eigs)
    op = DenseOperator(A)
    wrong = 0
    for s in range(20):
        est = top_k(op, 1, tol=1e-3, v0=torch.as_tensor(Q[:, 1]), max_iter=200, generator=_gen(s))
        wrong += int(est.converged and abs(est.value[0] - 1.0) > est.error[0])
        assert est.converged
    assert wrong == 0


def test_cold_lanczos_on_a_close_top_cluster_is_never_wrong_and_converged() -> None:
    d = 300
    eigs = np.concatenate([[1.0, 0.997, 0.99], np.linspace(-0.2, 0.8, d - 3)])
    op = DenseOperator(_rotated(eigs, 1)[0])
    for s in range(30):
        est = top_k(op, 1, tol=1e-3, max_iter=300, generator=_gen(s))
        if est.converged:
            assert abs(est.value[0] - 1.0) <= est.error[0] + 1e-12, s


@pytest.mark.parametrize("method, rtol", [("hutchinson", 0.05), ("hutchinson", None), ("hutch++", 0.05)])
def test_trace_error_bars_cover_the_truth_with_and_without_adaptive_stopping(method, rtol) -> None:
    d = 200
    rng = np.random.default_rng(3)
    eigs = np.concatenate([rng.gamma(0.5, 1.0, d - 5), [30, 20, 15, 10, 8]]) - 0.3
    A = _rotated(eigs, 2)[0]
    op = DenseOperator(A)
    z = []
    for s in range(40):
        est = trace(op, method, n_matvec=12 if rtol is None else 200, rtol=rtol, generator=_gen(s))
        z.append((est.value - eigs.sum()) / est.error)
    z = np.asarray(z)
    assert 0.6 <= np.sqrt(np.mean(z**2)) <= 1.45
    assert np.mean(np.abs(z) <= 2) >= 0.85


def test_t_factor_gives_unit_variance_z_with_few_probes() -> None:
    assert t_factor(3) == pytest.approx(math.sqrt(3))
    assert t_factor(1e9) == pytest.approx(1.0)
    assert 1.0 < t_factor(2) < 3.0 and math.isinf(t_factor(0))
    # Gaussian samples, 4 per estimate: z = mean/se is t_3 (variance 3); with the factor rms z ≈ 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 4))
    z = x.mean(1) / (x.std(1, ddof=1) / 2 * t_factor(3))
    assert 0.9 < np.sqrt(np.mean(z**2)) < 1.15


def test_deflated_split_of_trace_and_ms_sum_matches_the_dense_spectrum() -> None:
    d = 300
    rng = np.random.default_rng(5)
    eigs = np.concatenate([rng.uniform(-0.05, 0.3, d - 3), [4.0, 3.0, 2.5]])
    op = DenseOperator(_rotated(eigs, 4)[0])
    lr = 0.2  # ηλ_max = 0.8: S ≈ 1.4, dominated by the three outliers
    truth = ms_sum(eigs[eigs > 0], lr, "zo-gd")

    def f(lam):
        lam = np.maximum(np.asarray(lam, dtype=float), 0.0)
        return (lr * lam) / (2 - 2 * lr * lam)

    z_s, z_t = [], []
    for s in range(20):
        lz = top_k(op, 3, tol=1e-8, max_iter=300, generator=_gen(100 + s))
        assert lz.converged
        rest = rest_quadrature(op, lz.extra["vectors"], 6, 8, generator=_gen(s))
        tr = split_trace(lz.value, rest)
        z_t.append((tr.value - eigs.sum()) / tr.error)
        est = split_trace_fn(f, lz.value, lz.error, rest)
        z_s.append((est.value - truth) / est.error)
    for z in (np.asarray(z_s), np.asarray(z_t)):
        assert np.sqrt(np.mean(z**2)) <= 1.5 and np.mean(np.abs(z) <= 2) >= 0.8


def test_negative_curvature_modes_are_unstable_for_every_lr_and_excluded_from_s() -> None:
    # a negative mode escapes in mean square at any η: the moment operator's radius exceeds 1 ...
    for lr in (1e-3, 1e-2, 1e-1):
        assert spectral_radius(moment_operator(np.diag([1.0, 0.5, -0.2]), lr, "zo-gd")) > 1
    # ... and continuing f to λ < 0 would *lower* S: here it says "stable" while the positive block alone
    # (the part with a step-size threshold) is mean-square unstable; S over positive modes gets it right
    pos = np.array([6.5, 2.0])
    neg = np.array([-5.0, -5.0])
    lr = 0.1
    x = lr * neg
    continued = ms_sum(pos, lr, "zo-gd") + float(np.sum(x / (2 - 2 * x)))
    s_pos = ms_sum(pos, lr, "zo-gd")
    assert continued < 1 < s_pos
    assert spectral_radius(moment_operator(np.diag(pos), lr, "zo-gd")) > 1
    assert ms_sum(np.concatenate([pos, neg]), lr, "zo-gd", negative="ignore") == s_pos
