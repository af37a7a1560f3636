"""The run file: `eos_probe.load` round-trips what the writer wrote, a live run can be read with
consistent rows at any moment, resume truncates every series, and damaged/foreign files fail clearly."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import eos_probe
from eos_probe.config import TrainConfig
from eos_probe.errors import CorruptFileError, UserError
from eos_probe.run import band_for
from eos_probe.store import SCHEMA_VERSION, RunWriter
from eos_probe.theory import band


def _write(path, cfg: TrainConfig, n_probe: int = 5, k: int = 3, finish: bool = True):
    """A run file with known contents: train rows every step, probe rows every 10, a 2-D series, a spectrum."""
    rng = np.random.default_rng(0)
    w = RunWriter.create(path, {"config": cfg.to_dict(), "seed": cfg.seed, "n_params": 1234}, overwrite=True)
    for name, dt in (("step", "i8"), ("loss", "f8"), ("accuracy", "f8"), ("wall_time", "f8")):
        w.declare("train", name, dt)
    w.declare("probe", "step", "i8")
    for name in ("lambda_max", "lambda_max_err", "trace", "trace_err"):
        w.declare("probe", name, "f8")
    w.declare("probe", "lambda_max_nhvp", "i8")
    w.declare("probe", "top_k", "f8", (k,))
    for name, shape in (("step", ()), ("nodes", (2, 4)), ("weights", (2, 4))):
        w.declare("spectra/density", name, "i8" if name == "step" else "f8", shape)
    w.set_attrs("probe", {"metrics": ["lambda_max", "trace", "top_k"]})
    w.set_attrs("bands", band_for(cfg.to_dict(), 1234).as_dict())
    w.start_swmr()
    train = {"step": np.arange(10 * n_probe), "loss": rng.random(10 * n_probe), "accuracy": rng.random(10 * n_probe),
             "wall_time": np.arange(10 * n_probe) * 0.1}
    probe = {"step": np.arange(n_probe) * 10, "lambda_max": rng.random(n_probe) * 10,
             "lambda_max_err": rng.random(n_probe), "trace": rng.random(n_probe) * 100, "trace_err": rng.random(n_probe),
             "lambda_max_nhvp": rng.integers(1, 50, n_probe), "top_k": rng.random((n_probe, k))}
    spec = {"step": probe["step"], "nodes": rng.random((n_probe, 2, 4)), "weights": rng.random((n_probe, 2, 4))}
    for i in range(10 * n_probe):
        w.append("train", {key: v[i] for key, v in train.items()})
        if i % 10 == 0:
            j = i // 10
            w.append("probe", {key: v[j] for key, v in probe.items()})
            w.append("spectra/density", {key: v[j] for key, v in spec.items()})
    if finish:
        w.finish("finished", "", 10 * n_probe - 1)
    else:
        w.close()
    return train, probe, spec


def test_load_round_trips_every_series(tmp_path) -> None:
    cfg = TrainConfig(optimizer="zo-gdm", lr=0.02, momentum=0.5, queries=2)
    train, probe, spec = _write(tmp_path / "r.h5", cfg)
    run = eos_probe.load(tmp_path / "r.h5")
    assert run.status == "finished" and run.attrs["schema_version"] == SCHEMA_VERSION
    assert run.config == cfg.to_dict()
    for key, v in train.items():
        np.testing.assert_array_equal(run.train[key].to_numpy(), v)
    for key, v in probe.items():
        np.testing.assert_array_equal(run.probe_array(key), v)
    assert "top_k" not in run.probe.columns  # multi-dimensional series live in probe_array only
    for key, v in spec.items():
        np.testing.assert_array_equal(run.spectra("density")[key], v)
    assert run.metrics == ["lambda_max", "trace", "top_k"]
    # the band stored under /bands is the theory module's band for the run's settings
    expected = band(0.02, "zo-gdm", 2, 0.5, "heavy_ball")
    assert run.band() == expected
    assert run.band().threshold == pytest.approx(2 * 2 * (1 - 0.5) / 0.02)
    assert run.band().c == pytest.approx(1 + 2 * 0.5 / 1.5)
    with pytest.raises(UserError, match="no spectrum"):
        run.spectra("precond_density")
    with pytest.raises(UserError, match="no probe series"):
        run.probe_array("commutator_ratio")


def test_verdicts_follow_the_band(tmp_path) -> None:
    cfg = TrainConfig(optimizer="zo-gd", lr=0.01)  # T = 200, c = 2
    _write(tmp_path / "r.h5", cfg, n_probe=3)
    with h5py.File(tmp_path / "r.h5", "r+") as f:
        f["probe/trace"][:] = [150.0, 150.0, 210.0]
        f["probe/lambda_max"][:] = [10.0, 40.0, 1.0]
    v = eos_probe.load(tmp_path / "r.h5").verdicts()
    # 150 + 2·10 < 200: stable; 150 < 200 ≤ 150 + 80: band; 210 ≥ 200: unstable — from the bounds alone,
    # and the words say so
    assert list(v["state"]) == ["stable", "band", "unstable"] and set(v["basis"]) == {"bounds"}
    assert list(v["verdict"]) == ["stable (sufficient bound)", "band: necessary bound only",
                                  "unstable (necessary bound violated)"]
    np.testing.assert_allclose(v["necessary_margin"], [50.0, 50.0, -10.0])
    np.testing.assert_allclose(v["sufficient_margin"], [30.0, -30.0, -12.0])


def test_band_without_bands_group_comes_from_the_config(tmp_path) -> None:
    cfg = TrainConfig(optimizer="zo-adam", lr=1e-3)
    _write(tmp_path / "r.h5", cfg)
    with h5py.File(tmp_path / "r.h5", "r+") as f:
        del f["bands"]
    b = eos_probe.load(tmp_path / "r.h5").band()
    assert b.threshold == pytest.approx(2 / 1e-3) and b.quantity == "Tr(P^-1 H)"
    assert any("commutes" in w for w in b.warnings)


def test_interrupted_run_loads_and_resume_truncates_every_series(tmp_path) -> None:
    _write(tmp_path / "r.h5", TrainConfig(), n_probe=5, finish=False)
    run = eos_probe.load(tmp_path / "r.h5")
    assert run.status == "interrupted" and len(run.probe) == 5
    w = RunWriter.resume(tmp_path / "r.h5", 25)
    w.close()
    run = eos_probe.load(tmp_path / "r.h5")
    assert list(run.probe["step"]) == [0, 10, 20]
    assert run.probe_array("top_k").shape == (3, 3)
    assert list(run.spectra("density")["step"]) == [0, 10, 20]
    assert run.train["step"].iloc[-1] == 24
    assert run.band().optimizer == "zo-gd"  # /bands survives the rewrite


def test_reader_cuts_columns_to_rows_with_a_step(tmp_path) -> None:
    """A writer writes `step` last; a reader in between sees longer value columns and must cut them."""
    _write(tmp_path / "r.h5", TrainConfig(), n_probe=4)
    with h5py.File(tmp_path / "r.h5", "r+") as f:
        ds = f["probe/lambda_max"]
        ds.resize(6, axis=0)
    run = eos_probe.load(tmp_path / "r.h5")
    assert len(run.probe) == 4 and run.probe["lambda_max"].notna().all()


def test_missing_foreign_and_truncated_files_fail_clearly(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        eos_probe.load(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CorruptFileError, match="not an eos-probe run"):
        eos_probe.load(tmp_path / "foreign.h5")
    _write(tmp_path / "r.h5", TrainConfig())
    data = (tmp_path / "r.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptFileError):
        eos_probe.load(tmp_path / "cut.h5")


_LIVE_WRITER = textwrap.dedent("""
    import sys, time
    from eos_probe.config import TrainConfig
    from eos_probe.probe import Metric, register_metric
    from eos_probe.train import train

    @register_metric
    class ThetaNorm(Metric):  # a metric added without touching the trainer; slow so the run stays live
        name = "theta_norm"
        description = "Euclidean norm of the parameters (test metric)"

        def compute(self, ctx):
            time.sleep(0.03)
            return {"theta_norm": float(ctx.theta.double().norm()), "theta_norm_err": 0.0, "theta_norm_nhvp": 0}

    cfg = TrainConfig(model="mlp", model_args={"hidden": [8]}, n_per_class=5, optimizer="zo-gd", lr=1e-3,
                      steps=int(sys.argv[2]), probe_every=2, probe=["theta_norm"], log_every=1,
                      checkpoint_every=10**6, device="cpu", out=sys.argv[1])
    train(cfg, progress=False)
""")


def test_a_reader_sees_consistent_rows_of_a_live_run(tmp_path) -> None:
    path = tmp_path / "live.h5"
    steps = 120
    proc = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, str(path), str(steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    live_reads = 0
    seen_rows = set()
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if path.exists():
                run = eos_probe.load(path)  # readable from its first instant (header first, then whole files)
                n = len(run.probe)
                if run.status == "interrupted" and 0 < n:
                    live_reads += 1
                    seen_rows.add(n)
                # every snapshot: probe steps 0, 2, 4, ... with a finite value in every row; train rows 0, 1, ...
                np.testing.assert_array_equal(run.probe["step"].to_numpy(), 2 * np.arange(n))
                if "theta_norm" in run.probe:  # absent only in the header written before the series
                    assert np.all(np.isfinite(run.probe["theta_norm"].to_numpy()))
                    assert (run.probe["theta_norm_nhvp"] == 0).all()
                np.testing.assert_array_equal(run.train["step"].to_numpy(), np.arange(len(run.train)))
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, err
    run = eos_probe.load(path)
    assert run.status == "finished" and len(run.probe) == steps // 2 + 1
    assert live_reads >= 2 and len(seen_rows) >= 2, (live_reads, seen_rows)
