"""Stability theory (THEORY.md §2–3) against independent truth: hand-written closed forms, the dense
second-moment operator built from first principles, and a numpy Monte-Carlo of the quartic moments."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from eos_probe import theory as th
from eos_probe.cli import main
from eos_probe.errors import UserError


def _rotated(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.normal(size=(lam.size, lam.size)))
    return Q @ np.diag(lam) @ Q.T


# ------------------------------------------------------------------ closed forms written out by hand


def test_zo_gd_q1_is_the_textbook_sum():
    # THEORY §2: for q = 1, β = 0 the condition reads Σ λ_i/(1 − ηλ_i) < 2/η
    rng = np.random.default_rng(0)
    lam = rng.uniform(0.0, 3.0, 30)
    for eta in [1e-3, 0.01, 0.05, 0.9 / lam.max()]:
        expected = eta / 2 * np.sum(lam / (1 - eta * lam))
        assert th.ms_sum(lam, eta, "zo-gd") == pytest.approx(expected, rel=1e-12)
    eta = th.critical_lr(lam, "zo-gd")
    assert np.sum(lam / (1 - eta * lam)) == pytest.approx(2 / eta, rel=1e-10)


def test_zo_adam_q1_is_the_theory_formula():
    # THEORY §3: Σ ηλ̃/(2(1 − ηλ̃/(1+β1))) < 1 with ηλ̃_max < 1+β1
    rng = np.random.default_rng(1)
    lam = rng.uniform(0.1, 2.0, 20)
    b1 = 0.9
    for eta in [1e-3, 0.02, 0.5]:
        x = eta * lam
        expected = np.sum(x / (2 * (1 - x / (1 + b1)))) if x.max() < 1 + b1 else math.inf
        assert th.ms_sum(lam, eta, "zo-adam", momentum=b1) == pytest.approx(expected, rel=1e-12)


def test_heavy_ball_theory_formula_and_ema_equivalence():
    rng = np.random.default_rng(2)
    lam = rng.uniform(0.1, 1.0, 25)
    for q, beta in [(1, 0.5), (3, 0.9), (8, 0.0)]:
        eta = 0.5 * th.critical_lr(lam, "zo-gdm", q, beta)
        x = eta * lam
        D = (1 - beta) * (2 + 2 * beta - x) / (1 + beta) - x / q
        assert th.ms_sum(lam, eta, "zo-gdm", q, beta) == pytest.approx(np.sum((x / q) / D), rel=1e-12)
        # EMA momentum is heavy ball with η' = η(1−β)
        assert th.critical_lr(lam, "zo-gdm", q, beta, "ema") == pytest.approx(
            th.critical_lr(lam, "zo-gdm", q, beta) / (1 - beta), rel=1e-12)


def test_first_order_thresholds():
    lam = np.array([0.5, 2.0, 4.0])
    assert th.critical_lr(lam, "gd") == pytest.approx(2 / 4.0)
    assert th.critical_lr(lam, "gdm", momentum=0.9) == pytest.approx(2 * 1.9 / 4.0)
    assert th.critical_lr(lam, "gdm", momentum=0.9, momentum_style="ema") == pytest.approx(2 * 1.9 / 0.1 / 4.0)
    assert th.band(0.1, "adam", momentum=0.9).threshold == pytest.approx(38 / 0.1)  # THEORY §3: 38/η
    assert th.ms_sum(lam, 0.25, "gd") == pytest.approx(0.5)
    assert th.ms_sum(lam, 0.5, "gd") == math.inf


# ------------------------------------------------------------------ the dense second-moment operator

CONFIGS = [
    ("zo-gd", 1, None, None, "gaussian"),
    ("zo-gd", 4, None, None, "gaussian"),
    ("zo-gdm", 1, 0.5, None, "gaussian"),
    ("zo-gdm", 3, 0.9, None, "gaussian"),
    ("zo-gdm", 2, 0.9, "ema", "gaussian"),
    ("zo-gd", 1, None, None, "sphere"),
    ("zo-gdm", 2, 0.7, None, "sphere"),
    ("gd", 1, None, None, "gaussian"),
    ("gdm", 1, 0.9, None, "gaussian"),
    ("gdm", 1, 0.8, "ema", "gaussian"),
]


@pytest.mark.parametrize("optimizer,q,beta,style,directions", CONFIGS)
def test_critical_lr_is_where_the_exact_operator_crosses_one(optimizer, q, beta, style, directions):
    rng = np.random.default_rng(3)
    lam = rng.uniform(0.2, 2.0, 5)
    H = _rotated(lam, rng)
    kw = dict(queries=q, momentum=beta, momentum_style=style, directions=directions)
    eta = th.critical_lr(lam, optimizer, **kw)
    below = th.spectral_radius(th.moment_operator(H, eta * (1 - 1e-4), optimizer, **kw))
    above = th.spectral_radius(th.moment_operator(H, eta * (1 + 1e-4), optimizer, **kw))
    assert below < 1 < above
    assert th.exact_critical_lr(H, optimizer, **kw) == pytest.approx(eta, rel=1e-7)


def test_zo_adam_with_commuting_preconditioner_matches_exact_operator():
    rng = np.random.default_rng(4)
    lam, p = rng.uniform(0.2, 2.0, 5), rng.uniform(0.3, 3.0, 5)
    H = np.diag(lam)  # diagonal P commutes with diagonal H
    for q in (1, 3):
        eta = th.critical_lr(lam / p, "zo-adam", q, 0.9)
        assert th.exact_critical_lr(H, "zo-adam", q, 0.9, preconditioner=p) == pytest.approx(eta, rel=1e-7)


@pytest.mark.parametrize("optimizer,q,beta,style,directions", CONFIGS[:7])
def test_growth_rate_closed_form_equals_dense_spectral_radius(optimizer, q, beta, style, directions):
    rng = np.random.default_rng(5)
    lam = rng.uniform(0.2, 2.0, 5)
    H = _rotated(lam, rng)
    kw = dict(queries=q, momentum=beta, momentum_style=style, directions=directions)
    eta_star = th.critical_lr(lam, optimizer, **kw)
    for f in (0.3, 0.9, 1.1, 1.6):
        rho = th.ms_spectral_radius(lam, f * eta_star, optimizer, **kw)
        dense = th.spectral_radius(th.moment_operator(H, f * eta_star, optimizer, **kw))
        assert rho == pytest.approx(dense, rel=1e-9)
        assert (rho < 1) == (f < 1)


@pytest.mark.parametrize("directions", ["gaussian", "sphere", "rademacher"])
def test_moment_operator_matches_monte_carlo_of_one_step(directions):
    # independent check of E[u uᵀ A u uᵀ] (and of the update bookkeeping): sample one ZO heavy-ball step
    rng = np.random.default_rng(6)
    d, q, beta, eta, n = 4, 2, 0.6, 0.3, 400_000
    H = _rotated(rng.uniform(0.5, 2.0, d), rng)
    z0 = rng.normal(size=2 * d)
    theta, m = z0[:d], z0[d:]
    if directions == "gaussian":
        u = rng.normal(size=(n, q, d))
    elif directions == "sphere":
        u = rng.normal(size=(n, q, d))
        u *= math.sqrt(d) / np.linalg.norm(u, axis=-1, keepdims=True)
    else:
        u = rng.choice([-1.0, 1.0], size=(n, q, d))
    g = np.einsum("nqi,nq->ni", u, u @ (H @ theta)) / q
    m1 = beta * m + g
    z1 = np.hstack([theta - eta * m1, m1])
    # compare the noise part alone (the deterministic part M z0 z0ᵀ Mᵀ would hide an error in it)
    g_mean = beta * m + H @ theta
    mean = np.hstack([theta - eta * g_mean, g_mean])
    mc = (z1 - mean).T @ (z1 - mean) / n
    op = th.moment_operator(H, eta, "zo-gdm", q, beta, directions=directions)
    exact = (op @ np.outer(z0, z0).ravel()).reshape(2 * d, 2 * d) - np.outer(mean, mean)
    assert np.abs(mc - exact).max() < 0.015 * np.abs(exact).max()


def test_rademacher_is_approximate_and_says_so():
    rng = np.random.default_rng(7)
    lam = rng.uniform(0.1, 1.0, 8)
    with pytest.warns(th.ApproximationWarning, match="Rademacher"):
        approx = th.critical_lr(lam, "zo-gd", directions="rademacher")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", th.ApproximationWarning)
        assert any("Rademacher" in w for w in th.band(0.1, "zo-gd", directions="rademacher", dim=8).warnings)
    # the sphere formula it borrows is close for delocalised eigenvectors, and conservative on the axes
    rotated = th.exact_critical_lr(_rotated(lam, rng), "zo-gd", directions="rademacher")
    axes = th.exact_critical_lr(np.diag(lam), "zo-gd", directions="rademacher")
    assert abs(approx / rotated - 1) < 0.02
    assert 0.85 < approx / axes < 1.0


# ------------------------------------------------------------------ bounds, band, verdict


@pytest.mark.parametrize("optimizer,q,beta,style", [("zo-gd", 1, None, None), ("zo-gd", 4, None, None),
                                                    ("zo-gdm", 1, 0.9, None), ("zo-gdm", 2, 0.5, "ema"),
                                                    ("zo-adam", 1, 0.9, None)])
def test_bounds_bracket_the_exact_condition(optimizer, q, beta, style):
    rng = np.random.default_rng(8)
    kw = dict(queries=q, momentum=beta, momentum_style=style)
    seen = set()
    for trial in range(200):
        lam = rng.gamma(0.5, 1.0, rng.integers(1, 60)) * 10 ** rng.uniform(-1, 1)
        eta = th.critical_lr(lam, optimizer, **kw) * rng.uniform(0.3, 1.5)
        s_val = th.ms_sum(lam, eta, optimizer, **kw)
        b = th.band(eta, optimizer, **kw)
        tr, lmax = lam.sum(), lam.max()
        v = th.verdict(tr, lmax, eta, optimizer, **kw)
        seen.add(v.verdict)
        if b.sufficient(tr, lmax):
            assert s_val < 1 and v.verdict == "stable"
        if not b.necessary(tr) or lmax >= b.lambda_max_limit:
            assert s_val >= 1 and v.verdict == "unstable"
        lo, hi = th.critical_lr_bounds(tr, lmax, optimizer, **kw)
        assert lo <= th.critical_lr(lam, optimizer, **kw) * (1 + 1e-12) and th.critical_lr(
            lam, optimizer, **kw) <= hi * (1 + 1e-12)
    assert seen == {"stable", "band", "unstable"}


@pytest.mark.parametrize("q,beta", [(1, 0.0), (4, 0.0), (1, 0.9), (3, 0.5)])
def test_bounds_are_tight_in_their_limits(q, beta):
    # one mode: the sufficient bound is exact; many tiny modes of the same trace: the necessary one is
    lo, hi = th.critical_lr_bounds(2.0, 2.0, "zo-gdm", q, beta)
    assert th.critical_lr([2.0], "zo-gdm", q, beta) == pytest.approx(lo, rel=1e-10)
    many = np.full(100_000, 2.0 / 100_000)
    assert th.critical_lr(many, "zo-gdm", q, beta) == pytest.approx(2 * q * (1 - beta) / 2.0, rel=1e-4)


def test_band_constants_per_preset():
    eta = 1e-3
    b = th.band(eta, "zo-gd")
    assert (b.threshold, b.c, b.quantity, b.kind) == (pytest.approx(2 / eta), pytest.approx(2.0), "Tr(H)",
                                                      "mean-square")
    b = th.band(eta, "zo-gdm", queries=4, momentum=0.9)
    assert b.threshold == pytest.approx(2 * 4 * 0.1 / eta) and b.c == pytest.approx(1 + 4 * 0.1 / 1.9)
    assert "heavy ball" in b.convention
    b = th.band(eta, "zo-gdm", momentum=0.9, momentum_style="ema")
    assert b.threshold == pytest.approx(2 / eta) and "EMA" in b.convention
    b = th.band(eta, "zo-adam", queries=2, momentum=0.9)
    assert b.threshold == pytest.approx(4 / eta) and b.c == pytest.approx(1 + 2 * 0.1 / 1.9)
    assert b.quantity == "Tr(P^-1 H)" and any("commute" in w for w in b.warnings)
    b = th.band(eta, "gdm", momentum=0.9)
    assert b.kind == "classical" and b.c is None and b.threshold == pytest.approx(3.8 / eta)
    assert b.quantity == "lambda_max(H)"
    with pytest.raises(Exception):
        b.threshold = 1.0  # frozen: plots may share it
    # sphere directions: T/b with b = d/(d+2)
    d = 10
    assert th.band(eta, "zo-gd", directions="sphere", dim=d).threshold == pytest.approx(2 / eta * (d + 2) / d)
    json.dumps(th.band(eta, "zo-adam").as_dict())


def test_sphere_is_more_stable_and_tends_to_gaussian():
    rng = np.random.default_rng(9)
    lam = rng.uniform(0.1, 1.0, 6)
    assert th.critical_lr(lam, "zo-gd", directions="sphere") > th.critical_lr(lam, "zo-gd")
    big = rng.uniform(0.1, 1.0, 5000)
    assert th.critical_lr(big, "zo-gd", directions="sphere") == pytest.approx(th.critical_lr(big, "zo-gd"),
                                                                           rel=1e-3)


def test_ms_sum_is_inf_outside_the_admissible_range():
    # q = 1, β = 0 with ηλ = 1.5: the naive sum has a negative term and would read as "stable"
    lam = np.array([1.5, 0.01])
    eta = 1.0
    naive = eta / 2 * np.sum(lam / (1 - eta * lam))
    assert naive < 1
    assert th.ms_sum(lam, eta, "zo-gd") == math.inf
    # heavy ball, q = 1: admissible iff ηλ_max < 1 − β²
    beta = 0.5
    assert th.ms_sum([1.0], 0.999 * (1 - beta**2), "zo-gdm", 1, beta) < math.inf
    assert th.ms_sum([1.0], 1.001 * (1 - beta**2), "zo-gdm", 1, beta) == math.inf
    assert th.verdict(1.0, 1.0, 0.8, "zo-gdm", 1, beta).verdict == "unstable"  # Tr < T, mode unstable


def test_weights_negative_and_null_modes():
    lam = np.array([0.3, 1.2, 2.0])
    w = np.array([3.0, 1.0, 2.0])
    rep = np.repeat(lam, w.astype(int))
    assert th.ms_sum(lam, 0.1, "zo-gd", weights=w) == pytest.approx(th.ms_sum(rep, 0.1, "zo-gd"))
    assert th.critical_lr(lam, "zo-gd", weights=w) == pytest.approx(th.critical_lr(rep, "zo-gd"))
    neg = np.array([-0.1, 0.3, 1.2])
    assert th.ms_sum(neg, 0.1, "zo-gd") == math.inf and th.critical_lr(neg, "zo-gd") == 0.0
    assert th.ms_sum(neg, 0.1, "zo-gd", negative="ignore") == pytest.approx(th.ms_sum(neg[1:], 0.1, "zo-gd"))
    assert th.ms_sum([0.0, 0.0, 1.0], 0.1, "zo-gd") == pytest.approx(th.ms_sum([1.0], 0.1, "zo-gd"))
    assert th.critical_lr([0.0, 0.0], "zo-gd") == math.inf
    terms = th.ms_terms(np.array([0.5, 1.0, 50.0]), 0.1, "zo-gd")
    assert np.isfinite(terms[:2]).all() and terms[2] == math.inf


@pytest.mark.parametrize("call,match", [
    (lambda: th.band(1e-3, "sgd"), "unknown optimizer"),
    (lambda: th.band(-1.0, "zo-gd"), "learning rate"),
    (lambda: th.band(1e-3, "zo-gd", momentum=0.9), "no momentum"),
    (lambda: th.band(1e-3, "zo-gdm", momentum=1.0), r"\[0, 1\)"),
    (lambda: th.band(1e-3, "zo-gdm", queries=0), "queries"),
    (lambda: th.band(1e-3, "zo-adam", momentum_style="heavy_ball"), "EMA"),
    (lambda: th.band(1e-3, "zo-gd", directions="sphere"), "dimension"),
    (lambda: th.band(1e-3, "zo-gd", directions="cauchy"), "directions"),
    (lambda: th.ms_sum([], 1e-3, "zo-gd"), "empty"),
    (lambda: th.ms_sum([1.0, np.nan], 1e-3, "zo-gd"), "NaN"),
    (lambda: th.ms_sum([1.0], 1e-3, "zo-gd", weights=[1.0, 2.0]), "weights"),
])
def test_user_errors_are_one_clear_line(call, match):
    with pytest.raises(UserError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ the `eos-probe bands` command


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(["bands", *argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_bands_text_and_json(capsys, tmp_path):
    code, out, _ = _run(capsys, "--optimizer", "zo-gdm", "--lr", "0.001", "--momentum", "0.9",
                        "--trace", "150", "--lambda-max", "30")
    assert code == 0 and "T = 200" in out and "verdict: stable" in out and "necessary" in out
    lam = np.random.default_rng(10).uniform(0, 20, 40)
    np.save(tmp_path / "spec.npy", lam)
    code, out, _ = _run(capsys, "--optimizer", "zo-gd", "--lr", "0.004", "--spectrum", str(tmp_path / "spec.npy"),
                        "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ms_sum"] == pytest.approx(th.ms_sum(lam, 0.004, "zo-gd"))
    assert data["critical_lr"] == pytest.approx(th.critical_lr(lam, "zo-gd"))
    assert data["verdict"] == ("stable" if data["ms_sum"] < 1 else "unstable")
    assert data["trace"] == pytest.approx(lam.sum()) and data["band"]["c"] == pytest.approx(2.0)
    # a symmetric matrix is read as H
    H = _rotated(lam[:6], np.random.default_rng(11))
    np.save(tmp_path / "H.npy", H)
    code, out, _ = _run(capsys, "--optimizer", "zo-adam", "--lr", "0.01", "--spectrum", str(tmp_path / "H.npy"),
                        "--json")
    assert code == 0 and json.loads(out)["critical_lr"] == pytest.approx(th.critical_lr(lam[:6], "zo-adam"))
    code, out, err = _run(capsys, "--optimizer", "zo-adam", "--lr", "0.01")
    assert code == 0 and "Tr(P^-1 H)" in out and "commute" in err


@pytest.mark.parametrize("argv", [
    ["--optimizer", "zo-gd", "--lr", "-1"],
    ["--optimizer", "zo-gd", "--lr", "1e-3", "--momentum", "0.9"],
    ["--optimizer", "zo-gd", "--lr", "1e-3", "--trace", "3"],
    ["--optimizer", "zo-gd", "--lr", "1e-3", "--spectrum", "/nonexistent/spec.npy"],
    ["--optimizer", "zo-gd", "--lr", "1e-3", "--directions", "sphere"],
    ["--optimizer", "zo-sgd", "--lr", "1e-3"],
    ["--optimizer", "zo-gd", "--lr", "nan"],
    ["--optimizer", "zo-gd", "--lr", "0.1", "--trace", "-3", "--lambda-max", "1"],
    ["--optimizer", "zo-gd", "--lr", "0.1", "--trace", "3", "--lambda-max", "1", "--spectrum", "x.npy"],
])
def test_cli_bands_bad_input_exits_2(capsys, argv):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and out == ""
