"""The probe against independent truth: values in the run file equal direct curvature-engine calls at the
same parameters and agree with dense Hessians; probing never changes the trajectory; a resumed run logs
bitwise the same probe values; bad metric specs are one clear error."""
from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import eos_probe
from eos_probe.config import TrainConfig
from eos_probe.curvature import HessianOperator, dense_hessian, spectral_density, top_k
from eos_probe.curvature.deflated import negative_mass, rest_quadrature, split_trace
from eos_probe.probe.shared import control_pairs
from eos_probe.errors import UserError
from eos_probe.optim.sources import PURPOSE_PROBE, stream_seed
from eos_probe.probe import METRICS, Probe, build_probe, default_metrics, parse_spec
from eos_probe.build import build
from eos_probe.checkpoint import checkpoint_path
from eos_probe.train import train

# 466 parameters in float64: dense Hessians are cheap and comparisons exact
TINY = dict(model="cnn", model_args={"widths": [2, 2], "hidden": 4}, n_per_class=5, device="cpu", dtype="float64",
            checkpoint_every=10**6)
ZO_METRICS = ["lambda_max", "top_k:k=3:tol=1e-9:max_iter=466", "trace", "density", "ms_margin", "dir_curvature"]


def _ms_sum(eig: np.ndarray, lr: float, beta: float = 0.0, ema: bool = False, q: int = 1) -> float:
    """S(η) of THEORY.md §2 over every eigenvalue (Gaussian directions): Σ (x/q)/D, x = η_eff λ,
    D = (1−β)(2+2β−x)/(1+β) − x/q; EMA momentum (Adam) uses η_eff = η(1−β)."""
    x = lr * (1 - beta if ema else 1.0) * eig
    d = (1 - beta) * (2 + 2 * beta - x) / (1 + beta) - x / q
    assert np.all(d[x > 0] > 0)
    return float(np.sum((x / q) / d))


def _gen(seed: int, step: int, key: str) -> torch.Generator:
    """The generator the probe documents for one quantity (/probe attribute "seeding")."""
    return torch.Generator().manual_seed(stream_seed(stream_seed(seed, step, PURPOSE_PROBE), zlib.crc32(key.encode()), 0))


def _ckpt(path) -> dict:
    return torch.load(checkpoint_path(path), weights_only=False)


@pytest.fixture(scope="module")
def zo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zo") / "zo.h5"
    cfg = TrainConfig(**TINY, optimizer="zo-gd", lr=0.15, steps=6, probe_every=3, probe=ZO_METRICS, out=str(out))
    train(cfg, progress=False)
    return cfg, eos_probe.load(out)


def test_probe_values_equal_direct_engine_calls(zo_run) -> None:
    cfg, run = zo_run
    setup = build(cfg)
    theta0 = setup.theta
    backend = run.probe_info["hvp_backend"]
    assert backend in ("fwd-rev", "double-backward")
    row = run.probe.iloc[0]
    assert row["step"] == 0
    H = HessianOperator(setup.objective, theta0, backend)
    # one shared Lanczos run with the union of the options (k = 3 of top_k and ms_margin, tol 1e-9, 466 steps)
    lz = top_k(H, 3, tol=1e-9, max_iter=466, generator=_gen(cfg.seed, 0, "lanczos/H"))
    assert row["lambda_max"] == lz.value[0] and row["lambda_max_err"] == lz.error[0]
    assert row["lambda_max_nhvp"] == lz.n_hvp and row["lambda_max_converged"] == 1 and lz.converged
    np.testing.assert_array_equal(run.probe_array("top_k")[0], lz.value)
    assert row["top_k_nhvp"] == 0  # shared products are charged once, to the first metric using them
    # one deflated probe set (6 probes: trace, ms_margin and dir_curvature ask for 6; 4 steps for ms_margin)
    rest = rest_quadrature(H, lz.extra["vectors"], 6, 4, generator=_gen(cfg.seed, 0, "rest/H"),
                           control=control_pairs(lz))
    tr = split_trace(lz.value, rest)
    assert row["trace"] == tr.value and row["trace_err"] == tr.error and row["trace_nhvp"] == rest.n_hvp == 24
    dens = spectral_density(H, n_probes=4, n_steps=30, generator=_gen(cfg.seed, 0, "density/H"))
    np.testing.assert_array_equal(run.spectra("density")["nodes"][0], dens.nodes)
    np.testing.assert_array_equal(run.spectra("density")["weights"][0], dens.weights)
    # the Ritz control variates: the Lanczos run's further pairs, (yᵀz)² − ‖P⊥y‖² per probe
    theta_c, Y = control_pairs(lz)
    assert 0 < theta_c.size <= 16 and np.all(np.abs(theta_c) <= lz.value[-1] + 1e-9)
    # S = Σ_top f(θ_i) + SLQ of f_c on the deflated rest (f continued by f'(0)λ below 0, minus the control
    # variates) + f'(0)·N, N = Σ|λ_neg| from the Lanczos run's Gauss rule; f(λ) = ηλ/(2 − 2ηλ), 0 for λ ≤ 0
    def f(lam):
        lam = np.maximum(lam, 0.0)
        return (cfg.lr * lam) / (2 - 2 * cfg.lr * lam)

    slope0 = cfg.lr / 2

    def fc(lam):
        return np.where(lam > 0, f(lam), slope0 * lam)

    n_neg, n_err = negative_mass(lz, H.dim)
    assert row["ms_margin_neg"] == pytest.approx(n_neg * cfg.lr / 2, rel=1e-12)
    assert row["ms_margin_neg_err"] == pytest.approx(n_err * cfg.lr / 2, rel=1e-12)
    samples = rest.norms * (rest.weights * fc(rest.nodes)).sum(1) - rest.cv @ fc(theta_c)
    assert row["ms_margin"] == pytest.approx(f(lz.value).sum() + samples.mean() + slope0 * n_neg, rel=1e-9)
    # rest error: Gaussian-probe variance 2(Tr f_c(A)² − Σ f_c(θ_c)²)/p, not the spread of the 6 samples
    sq = rest.norms * (rest.weights * fc(rest.nodes) ** 2).sum(1) - rest.cv @ fc(theta_c) ** 2
    se = math.sqrt(2 * max(sq.mean() - np.sum(fc(theta_c) ** 2), 0.0) / samples.size)
    half = rest.norms * (rest.half_weights * fc(rest.half_nodes)).sum(1) - rest.cv @ fc(theta_c)  # 2-step rule
    quad = abs(samples.mean() - half.mean())  # quadrature error estimate
    expect = math.sqrt(se**2 + quad**2 + (slope0 * n_err) ** 2)
    assert row["ms_margin_err"] >= expect and row["ms_margin_err"] == pytest.approx(expect, rel=1e-3)
    assert row["ms_margin_nhvp"] == 0 and row["nhvp"] == lz.n_hvp + rest.n_hvp + dens.n_hvp
    assert math.isnan(row["dir_curvature"])  # no update direction before the first step
    assert row["dir_curvature_mean"] == tr.value / setup.objective.dim


def test_probe_values_agree_with_the_dense_hessian(zo_run) -> None:
    cfg, run = zo_run
    setup = build(cfg)
    obj, opt, theta = setup.objective, setup.optimizer, setup.theta
    state = opt.init(theta)
    for t in range(cfg.steps):  # replay the run to recover the last update direction g_5
        opt.step(obj, theta, state, t)
    assert torch.equal(theta, _ckpt(run.path)["theta"])  # the file's final parameters
    Hd = dense_hessian(obj, theta)
    eig = np.linalg.eigvalsh(Hd.numpy())
    row = run.probe.iloc[-1]
    assert row["step"] == cfg.steps
    # Lanczos error bars are rigorous residual bounds
    assert abs(row["lambda_max"] - eig[-1]) <= row["lambda_max_err"] + 1e-12
    np.testing.assert_allclose(run.probe_array("top_k")[-1], eig[::-1][:3], rtol=0, atol=1e-7)
    # stochastic estimates within 5 standard errors of the truth
    assert abs(row["trace"] - eig.sum()) <= 5 * row["trace_err"]
    pos = eig[eig > 0]  # negative-curvature modes are excluded from S and logged beside it
    exact_s = _ms_sum(pos, cfg.lr)
    assert 0.05 < exact_s - pos.sum() * cfg.lr / 2 and exact_s < 1  # the nonlinear part of f matters here
    assert abs(row["ms_margin"] - exact_s) <= 5 * row["ms_margin_err"]
    neg = -eig[eig < 0].sum() * cfg.lr / 2
    assert abs(row["ms_margin_neg"] - neg) <= 5 * row["ms_margin_neg_err"] + 1e-12
    g = opt.last_direction
    assert row["dir_curvature"] == pytest.approx(float(g @ Hd @ g / (g @ g)), rel=1e-10)
    # SLQ: Gauss weights of each probe sum to 1; Ritz values interlace the spectrum
    sp = run.spectra("density")
    np.testing.assert_allclose(sp["weights"][-1].sum(1), 1.0, rtol=1e-10)
    assert sp["nodes"][-1].min() >= eig[0] - 1e-9 and sp["nodes"][-1].max() <= eig[-1] + 1e-9
    # every value carries its cost; the warm-started Lanczos needed fewer products than the cold one
    assert (run.probe["trace_nhvp"] > 0).all() and (run.probe["lambda_max_nhvp"] > 0).all()
    assert run.probe["lambda_max_nhvp"].iloc[-1] <= run.probe["lambda_max_nhvp"].iloc[0]


def test_probing_never_changes_the_trajectory(zo_run, tmp_path) -> None:
    cfg, run = zo_run
    bare = train(TrainConfig(**{**cfg.to_dict(), "probe": [], "out": str(tmp_path / "bare.h5")}), progress=False)
    assert torch.equal(_ckpt(bare.path)["theta"], _ckpt(run.path)["theta"])
    np.testing.assert_array_equal(eos_probe.load(bare.path).train["loss"], run.train["loss"])


@pytest.mark.parametrize("short_steps", [4, 5])  # interrupted at a regular probe step / at a final-only probe
def test_resumed_run_logs_bitwise_identical_probe_values(tmp_path, short_steps) -> None:
    metrics = ["lambda_max", "top_k:k=2", "trace:method=hutchinson:n_matvec=10", "density:n_probes=2:n_steps=8",
               "dir_curvature"]
    base = dict(**{**TINY, "checkpoint_every": 3}, optimizer="zo-gdm", lr=0.05, probe_every=2, probe=metrics)
    full = train(TrainConfig(**base, steps=8, out=str(tmp_path / "full.h5")), progress=False)
    short = train(TrainConfig(**base, steps=short_steps, out=str(tmp_path / "short.h5")), progress=False)
    train(None, resume=short.path, steps=8, progress=False)
    a, b = eos_probe.load(full.path), eos_probe.load(short.path)
    assert list(a.probe["step"]) == [0, 2, 4, 6, 8] == list(b.probe["step"])
    for col in a.probe.columns.drop("seconds"):
        np.testing.assert_array_equal(a.probe_array(col), b.probe_array(col), err_msg=col)
    np.testing.assert_array_equal(a.probe_array("top_k"), b.probe_array("top_k"))
    for key in ("nodes", "weights", "step"):
        np.testing.assert_array_equal(a.spectra("density")[key], b.spectra("density")[key])
    assert np.isfinite(a.probe["dir_curvature"].iloc[1:]).all()


def test_adam_metrics_on_the_preconditioned_hessian(tmp_path) -> None:
    metrics = ["precond_lambda_max", "precond_trace:n_matvec=120:rtol=None", "precond_density:n_probes=2:n_steps=10",
               "commutator_ratio:n_probes=32", "ms_margin"]
    cfg = TrainConfig(**TINY, optimizer="zo-adam", lr=1e-3, steps=5, probe_every=5, probe=metrics,
                      out=str(tmp_path / "adam.h5"))
    train(cfg, progress=False)
    run = eos_probe.load(cfg.out)
    assert run.band().quantity == "Tr(P^-1 H)"
    first, last = run.probe.iloc[0], run.probe.iloc[-1]
    # P = 1 before the first update is a placeholder, not Adam's preconditioner: no measurement
    assert math.isnan(first["commutator_ratio"]) and first["commutator_ratio_nhvp"] == 0
    ck = _ckpt(cfg.out)
    setup = build(cfg)
    Hd = dense_hessian(setup.objective, ck["theta"]).numpy()
    p = ck["state"]["rule"]["P"].numpy()
    Ht = Hd / np.sqrt(np.outer(p, p))  # P^-1/2 H P^-1/2: the spectrum of P^-1 H
    eig = np.linalg.eigvalsh(Ht)
    assert abs(last["precond_lambda_max"] - eig[-1]) <= last["precond_lambda_max_err"] + 1e-9
    assert abs(last["precond_trace"] - eig.sum()) <= 5 * last["precond_trace_err"]
    PH = p[:, None] * Hd
    r = np.linalg.norm(PH - PH.T) / np.linalg.norm(PH)  # ‖PH − HP‖_F / ‖PH‖_F, HP = (PH)ᵀ
    assert 0 < r and abs(last["commutator_ratio"] - r) <= 5 * last["commutator_ratio_err"]
    # ms_margin of an Adam run reads the preconditioned spectrum (EMA convention, β1 = 0.9)
    exact_s = _ms_sum(eig[eig > 0], cfg.lr, beta=0.9, ema=True)
    assert abs(last["ms_margin"] - exact_s) <= 5 * last["ms_margin_err"] + 1e-12
    sp = run.spectra("precond_density")
    assert sp["nodes"][-1].max() <= eig[-1] + 1e-6 * abs(eig[-1])


def _stub(optimizer: str = "zo-gd", probe=None, **kw) -> tuple[TrainConfig, SimpleNamespace]:
    cfg = TrainConfig(optimizer=optimizer, lr=0.01, probe=probe, **kw)
    return cfg, SimpleNamespace(dim=10, hvp_backend="fwd-rev")


@pytest.mark.parametrize("specs, needle", [
    (["sharpness"], "unknown probe metric 'sharpness'"),
    (["trace:method=exact"], "unknown method 'exact'"),
    (["trace:n_probe=3"], "has no option n_probe"),
    (["top_k:k=0"], "k must be an integer >= 1"),
    (["lambda_max:tol=-1"], "tol must be a positive number"),
    (["commutator_ratio"], "needs an Adam optimizer"),
    (["precond_trace"], "needs an Adam optimizer"),
    (["trace", "trace:n_matvec=20"], "listed twice"),
    (["trace:n_matvec"], "expected name:key=value"),
])
def test_bad_metric_specs_are_one_clear_error(specs, needle) -> None:
    cfg, obj = _stub(probe=specs)
    with pytest.raises(UserError, match=needle):
        build_probe(cfg, objective=obj, optimizer=None, theta=None)


def test_defaults_per_optimizer_and_spec_parsing() -> None:
    assert default_metrics("gd") == ["lambda_max", "trace"]
    assert default_metrics("zo-gdm") == ["lambda_max", "trace", "ms_margin"]
    assert set(default_metrics("zo-adam")) >= {"precond_lambda_max", "precond_trace", "commutator_ratio"}
    assert set(default_metrics("adam")) >= {"precond_lambda_max", "commutator_ratio"}
    assert "ms_margin" not in default_metrics("adam")
    assert parse_spec("trace:method=hutch++:n_matvec=60:rtol=None") == (
        "trace", {"method": "hutch++", "n_matvec": 60, "rtol": None})
    for opt in ("gd", "zo-gd", "zo-gdm", "adam", "zo-adam"):
        cfg, obj = _stub(opt)
        probe = build_probe(cfg, objective=obj, optimizer=None, theta=None)
        assert [m.name for m in probe.metrics] == sorted(default_metrics(opt), key=list(METRICS).index)
    cfg, obj = _stub(probe=[])
    assert build_probe(cfg, objective=obj, optimizer=None, theta=None) is None


class _Rows:
    def __init__(self) -> None:
        self.rows: dict[str, list] = {}

    def append(self, group: str, row: dict) -> None:
        self.rows.setdefault(group, []).append(row)


def test_non_finite_parameters_give_nan_rows_not_a_crash() -> None:
    cfg, obj = _stub(probe=["lambda_max", "top_k:k=2", "trace", "density:n_probes=2:n_steps=5"], probe_every=100)
    probe = build_probe(cfg, objective=obj, optimizer=None, theta=None)
    assert isinstance(probe, Probe) and probe.due(0, False) and not probe.due(5, False) and probe.due(5, True)
    w = _Rows()
    theta = torch.full((10,), float("nan"))
    probe.run(step=7, theta=theta, state={}, optimizer=None, objective=obj, writer=w, config=cfg)
    row = w.rows["probe"][0]
    assert row["step"] == 7 and math.isnan(row["lambda_max"]) and math.isnan(row["trace"])
    assert np.isnan(row["top_k"]).all() and row["top_k"].shape == (2,)
    assert w.rows["spectra/density"][0]["nodes"].shape == (2, 5)
