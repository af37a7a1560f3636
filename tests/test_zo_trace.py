"""The free curvature monitor from the ZO step (`/train/zo_trace`, eos_probe.zo_monitor).

Independent truths: uᵀHu of the directions the source really drew (regenerated from its seed stream) on
a float64 quadratic, numpy's mean/std on the window, and the probe's own trace estimator at a fixed θ of a
trained small CNN."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

import eos_probe
from eos_probe.config import TrainConfig
from eos_probe.curvature import HessianOperator, trace
from eos_probe.data.quadratic import QuadraticObjective
from eos_probe.optim import make_optimizer
from eos_probe.optim.sources import TwoPointSource
from eos_probe.optim.sources import PURPOSE_DIRECTIONS, stream_seed
from eos_probe.build import build
from eos_probe.train import sweep_configs, train, train_sweep
from eos_probe.zo_monitor import ZOTraceMonitor

TINY_CNN = {"widths": [4, 8], "hidden": 16}

pytestmark = pytest.mark.usefixtures("one_thread")


def _quadratic(d: int = 12, seed: int = 0) -> QuadraticObjective:
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return QuadraticObjective(torch.linspace(0.1, 5.0, d, dtype=torch.float64), basis)


@pytest.mark.parametrize("directions", ["gaussian", "sphere", "rademacher"])
@pytest.mark.parametrize("mode,shared,copies", [("loop", False, 0), ("batched", False, 0), ("loop", True, 3),
                                                ("batched", True, 3), ("loop", False, 3)])
def test_sample_is_u_h_u_of_the_drawn_directions_on_a_quadratic(directions, mode, shared, copies) -> None:
    obj = _quadratic()
    q, step, seed = 3, 7, 11
    shape = (copies, obj.dim) if copies else (obj.dim,)
    theta = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    src = TwoPointSource(queries=q, directions=directions, seed=seed, query_mode=mode, shared_directions=shared)
    before = theta.clone()
    _, info = src(obj, theta, {}, step)
    assert torch.equal(theta, before)
    sample = src.curvature_sample(info, obj.loss(theta))
    # the truth: the same directions regenerated from the run's stream, uᵀHu averaged over the queries
    gen = torch.Generator().manual_seed(stream_seed(seed, step, PURPOSE_DIRECTIONS))
    u = torch.empty((obj.dim,) if shared or not copies else shape, dtype=torch.float64)
    expected = 0.0
    for _ in range(q):
        src.sample(u, gen)
        expected = expected + (u * obj.hvp(theta, u)).sum(-1) / q
    assert sample.dtype == torch.float64 and sample.shape == theta.shape[:-1]
    # O(μ²) truncation is zero on a quadratic: what is left is float64 round-off of L/μ² ≈ 1e-9
    torch.testing.assert_close(sample, torch.as_tensor(expected).expand_as(sample), rtol=1e-7, atol=1e-7)


def test_the_sample_has_mean_tr_h_and_forward_differences_give_none() -> None:
    obj = _quadratic(d=6)
    theta = torch.zeros(4000, obj.dim, dtype=torch.float64)  # 4000 independent rows (no shared directions)
    src = TwoPointSource(seed=0)
    _, info = src(obj, theta, {}, 0)
    s = src.curvature_sample(info, obj.loss(theta)).numpy()
    tr = float(obj.eigenvalues.sum())
    assert abs(s.mean() - tr) < 4 * s.std(ddof=1) / math.sqrt(len(s))
    # Gaussian u: Var(uᵀHu) = 2‖H‖_F² — a wrong scaling (e.g. /(2μ²)) would miss it by a factor
    assert s.var(ddof=1) == pytest.approx(2 * float((obj.eigenvalues**2).sum()), rel=0.1)
    fwd = TwoPointSource(difference="forward")
    _, info = fwd(obj, theta[0], {}, 0)
    assert fwd.curvature_sample(info, obj.loss(theta[0])) is None


def test_local_estimate_is_the_mean_on_few_samples_and_a_linear_fit_with_its_se() -> None:
    rng = np.random.default_rng(0)
    xs = rng.normal(3.0, 2.0, 40)
    mon = ZOTraceMonitor(window=8)
    rows = [mon.update(0, float(x), 10 * i) for i, x in enumerate(xs[:5])]
    assert rows[0]["zo_trace"] == xs[0] and math.isnan(rows[0]["zo_trace_err"])
    assert rows[4]["zo_trace"] == pytest.approx(xs[:5].mean(), rel=1e-14) and rows[4]["zo_trace_n"] == 5
    mon.update(0, math.nan, 50)  # no sample this step: the series is unchanged
    for i, x in enumerate(xs[5:], start=6):
        row = mon.update(0, float(x), 10 * i)
    # window 8 (the only candidate): ordinary least squares on the last 8 points, evaluated at the last step
    steps = 10 * np.arange(6, 41)[-8:]
    fit = np.polyfit(steps, xs[-8:], 1)
    assert row["zo_trace"] == pytest.approx(np.polyval(fit, steps[-1]), rel=1e-10)
    var = np.mean(np.diff(xs[-64:]) ** 2) / 2  # successive-difference noise variance
    xm = steps.mean()
    se = math.sqrt(var * (1 / 8 + (steps[-1] - xm) ** 2 / np.sum((steps - xm) ** 2)))
    assert row["zo_trace_err"] == pytest.approx(se, rel=1e-10)
    assert row["zo_trace_raw"] == xs[-1] and row["zo_trace_n"] == 8
    # a resumed run refills the series from the steps and raw samples in its file (NaN rows skipped)
    again = ZOTraceMonitor(window=8)
    file_steps = np.concatenate([10 * np.arange(5), [50], 10 * np.arange(6, 40)])
    again.restore(0, file_steps, np.concatenate([xs[:5], [np.nan], xs[5:-1]]))
    assert again.update(0, float(xs[-1]), 400) == row


def _drifting_samples(rng, n: int, trend) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted chi-square samples Σ λ_i z_i² (what uᵀHu is for Gaussian u) of a spectrum that sharpens."""
    steps = 10 * np.arange(n)
    truth = np.array([trend(t) for t in steps])
    lam = np.linspace(0.05, 1.0, 40)
    base = lam / lam.sum()
    raw = np.array([tr * np.sum(base * rng.standard_normal(40) ** 2) for tr in truth])
    return steps, truth, raw


@pytest.mark.parametrize("trend", ["flat", "ramp", "jump"])
def test_monitor_tracks_a_moving_trace_within_its_error_bars(trend) -> None:
    """Calibration against the known truth: a flat trace, a sharpening ramp (the fixed window lagged it
    by half its length) and a sudden jump; the z-scores of the tracked estimate stay honest."""
    f = {"flat": lambda t: 50.0, "ramp": lambda t: 5.0 + 0.02 * t,
         "jump": lambda t: 20.0 if t < 5000 else 60.0}[trend]
    zs, lags = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        steps, truth, raw = _drifting_samples(rng, 1000, f)
        mon = ZOTraceMonitor()
        for i, (t, x) in enumerate(zip(steps, raw)):
            row = mon.update(0, float(x), int(t))
            if i >= 20 and not (trend == "jump" and 5000 <= t < 5400):  # 40 samples to see a jump
                zs.append((row["zo_trace"] - truth[i]) / row["zo_trace_err"])
    zs = np.asarray(zs)
    within = np.mean(np.abs(zs) <= 2)
    assert within >= 0.9, (trend, within, np.sqrt(np.mean(zs**2)))
    assert np.sqrt(np.mean(zs**2)) < 1.4
    # and the old fixed 50-sample window fails this on the ramp: the lag is many s.e.
    if trend == "ramp":
        rng = np.random.default_rng(0)
        steps, truth, raw = _drifting_samples(rng, 1000, f)
        mean50 = np.convolve(raw, np.ones(50) / 50, mode="valid")
        assert np.median(truth[49:] - mean50) > 4.0  # ≈ 0.02 × 245 steps of lag


def test_window_mean_agrees_with_the_probe_trace_on_a_trained_cnn() -> None:
    """Fixed θ of a small CNN trained with GD: 160 free samples (the source's own path, float32 losses,
    μ = 1e-3, fresh directions per step) against the probe's ggn+residual trace at a fixed budget."""
    cfg = TrainConfig(model="cnn", model_args=TINY_CNN, n_per_class=10, optimizer="gd", lr=0.05, seed=2)
    s = build(cfg)
    obj, theta = s.objective, s.theta.clone()
    gd = make_optimizer("gd", lr=0.05)
    state = gd.init(theta)
    for t in range(40):
        gd.step(obj, theta, state, t)
    n = 160
    src = TwoPointSource(seed=5)
    mon = ZOTraceMonitor(window=n)
    f0 = obj.evaluate(theta)[0]  # what the trainer logs, and hands to the monitor
    for t in range(n):
        _, info = src(obj, theta, {}, t)
        row = mon.update(0, float(src.curvature_sample(info, f0)), t)
    ref = trace(HessianOperator(obj, theta), "ggn+residual", n_matvec=60, generator=torch.Generator().manual_seed(0))
    gap = abs(row["zo_trace"] - ref.value)
    assert row["zo_trace_err"] < 0.5 * ref.value  # the window is informative at all
    assert gap < 3 * math.hypot(row["zo_trace_err"], ref.error), (row, ref.value, ref.error)


def _zo_cols(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[f"train/{k}"][()] for k in ("step", "zo_trace", "zo_trace_err", "zo_trace_raw")}


def test_trainer_logs_zo_trace_for_every_zo_optimizer_and_loader_exposes_it(tmp_path) -> None:
    for opt in ("zo-gd", "zo-gdm", "zo-adam"):
        out = tmp_path / f"{opt}.h5"
        train(TrainConfig(model="cnn", model_args=TINY_CNN, n_per_class=5, optimizer=opt, steps=12, log_every=3,
                          zo_trace_window=3, probe=[], out=str(out)), progress=False)
        run = eos_probe.load(out)
        assert list(run.train["step"]) == [0, 3, 6, 9, 12]
        raw = run.train["zo_trace_raw"].to_numpy()
        assert np.isfinite(raw[:-1]).all() and np.isnan(raw[-1])  # the final step takes no ZO step
        np.testing.assert_allclose(run.train["zo_trace"].to_numpy()[3], raw[1:4].mean(), rtol=1e-12)
        with h5py.File(out, "r") as f:
            attrs = dict(f["train/zo_trace"].attrs)
        assert attrs["window"] == 3
        assert ("plain Hessian" in attrs["operator"]) == (opt == "zo-adam")
    out = tmp_path / "gd.h5"
    train(TrainConfig(model="cnn", model_args=TINY_CNN, n_per_class=5, optimizer="gd", steps=2, probe=[],
                      out=str(out)), progress=False)
    assert "zo_trace" not in eos_probe.load(out).train


#: a CNN whose first activation (6×28×28 floats) exceeds objective.VMAP_MAX_ACTIVATION, so stacked copies are
#: evaluated row by row, which rounds exactly as a single run does (a vmapped stack may differ by an ulp in the
#: loss, which the 1/μ² of the curvature sample turns into ~0.1 of zo_trace: not a bitwise question)
LOOPED_CNN = {"widths": [6, 8], "hidden": 16}


def test_zo_trace_of_a_sweep_and_of_a_resumed_run_equal_single_runs_bitwise(tmp_path) -> None:
    base = TrainConfig(model="cnn", model_args=LOOPED_CNN, n_per_class=5, optimizer="zo-gd", steps=10, log_every=1,
                       zo_trace_window=4, probe=[], checkpoint_every=4, out=str(tmp_path / "sw.h5"))
    assert not build(base).objective.vectorizes_stacks
    results = train_sweep(sweep_configs(base, lrs=[0.002, 0.004]), progress=False)
    single = train(TrainConfig(**{**base.to_dict(), "lr": 0.004, "out": str(tmp_path / "one.h5")}), progress=False)
    a, b = _zo_cols(results[1].path), _zo_cols(single.path)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k
    short = TrainConfig(**{**base.to_dict(), "lr": 0.004, "steps": 6, "out": str(tmp_path / "res.h5")})
    train(short, progress=False)
    train(None, resume=tmp_path / "res.h5", steps=10, progress=False)
    c = _zo_cols(tmp_path / "res.h5")
    for k in a:
        assert np.array_equal(c[k], b[k], equal_nan=True), k


@pytest.mark.slow
def test_monitor_follows_the_probe_trace_on_the_sharpening_quickstart(tmp_path) -> None:
    """Issue 29's test: on the quickstart run (it sharpens 20-fold, catapults and sits at the edge), the tracked
    monitor and the probe's trace agree within 2 combined standard errors at ≥ 90 % of the probes after step
    100 (measured: 54 of 59)."""
    from eos_probe.config import load_toml

    cfg = TrainConfig(**{**load_toml("recipes/quickstart.toml"), "out": str(tmp_path / "qs.h5")})
    run = eos_probe.load(train(cfg, progress=False).path)
    mon = run.train.set_index("step")
    z = []
    for _, row in run.probe[run.probe["step"] >= 100].iterrows():
        m = mon.loc[row["step"]]
        z.append((m["zo_trace"] - row["trace"]) / math.hypot(m["zo_trace_err"], row["trace_err"]))
    z = np.asarray(z)
    assert len(z) == 59 and np.isfinite(z).all()
    assert np.mean(np.abs(z) <= 2) >= 0.9, np.round(z, 1)
