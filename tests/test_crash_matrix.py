"""Crash matrix: `eos-probe train` killed with SIGKILL at many moments over a whole (tiny) run — spread in
time, in the first second after the run file appears, mid-probe, mid-file-write, mid-checkpoint, right after
the run finished. Every time the file is readable (also by plain h5py) and `--resume` completes to a run
bitwise equal to the uninterrupted one. Run once on its own and once beside a competing CPU load.

Moments that must be hit exactly use the fault-injection hook `EOS_PROBE_CRASH_AT=point:n[:delay]`
(`eos_probe.store.crash_point`: SIGKILL at the n-th time the process reaches `point`); the others are
wall-clock moments spread over the reference run's duration.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import eos_probe
from eos_probe.train import checkpoint_path, train

# 466 parameters: a step takes milliseconds, a probe (Lanczos + Hutchinson + SLQ) a good share of the run
ARGS = ["--model", "cnn", "--model-arg", "widths=[2,2]", "--model-arg", "hidden=4", "--n-per-class", "5",
        "--dtype", "float64", "--optimizer", "zo-gd", "--lr", "0.02", "--steps", "40", "--log-every", "1",
        "--probe-every", "10", "--probe", "lambda_max,trace:method=hutchinson:n_matvec=30,density:n_probes=2",
        "--device", "cpu", "--seed", "5", "--quiet"]
# one intra-op thread everywhere (killed runs in subprocesses, resumes in this process): same reductions
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: (hook, description): exact moments
HOOKS = [
    ("publish:1", "run file header complete, not yet renamed into place (no file yet)"),
    ("publish:2", "header published, series declared but not yet published"),
    ("probe:1:0.02", "mid-probe at step 0 (20 ms in)"),
    ("probe:2:0.05", "mid-probe at step 10 (50 ms in)"),
    ("probe:4:0", "at the start of the probe at step 30"),
    ("write:2", "mid-write: the run file's copy open and changed"),
    ("write:4", "mid-write, later"),
    ("checkpoint:1", "mid-checkpoint: step-0 checkpoint written, not renamed"),
    ("checkpoint:3", "mid-checkpoint, later"),
    ("finished:1", "right after the run finished"),
]
#: fractions of the reference run (from the file's appearance to exit): spread in time
FRACTIONS = [0.02, 0.08, 0.15] + [i / 14 for i in range(2, 15)] + [1.1]


def _start(out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eos_probe.cli", "train", *ARGS, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _series(path: Path) -> dict[str, np.ndarray]:
    run = eos_probe.load(path)
    out = {f"train/{c}": run.train[c].to_numpy() for c in run.train.columns if c != "wall_time"}
    out.update({f"probe/{c}": run.probe_array(c) for c in run.probe.columns if c != "seconds"})
    for name in run.spectra_names:
        for key, v in run.spectra(name).items():
            out[f"spectra/{name}/{key}"] = np.asarray(v)
    out["theta"] = torch.load(checkpoint_path(path), weights_only=False)["theta"].numpy()
    return out


def _check_readable(path: Path) -> str:
    """The killed run's file opens with plain h5py and with eos_probe.load; its rows are whole."""
    with h5py.File(path, "r") as f:
        assert "schema_version" in f.attrs
    run = eos_probe.load(path)
    steps = run.train["step"].to_numpy()
    assert np.all(np.diff(steps) > 0) and not run.train.isna().any().any()
    assert run.status in ("interrupted", "finished")
    return run.status


def _reference(tmp: Path) -> tuple[dict, float, float]:
    """The uninterrupted run; returns its series and how long the file took to appear / the run to end."""
    out = tmp / "ref.h5"
    t0 = time.monotonic()
    proc = _start(out, ENV)
    appear = None
    while proc.poll() is None:
        if appear is None and out.exists():
            appear = time.monotonic() - t0
        time.sleep(0.005)
    assert proc.returncode == 0, proc.stderr.read()
    return _series(out), appear if appear is not None else 0.0, time.monotonic() - t0


def _crash_matrix(tmp: Path, one_thread_torch) -> list[str]:
    ref, appear, total = _reference(tmp)
    cases: list[tuple[str, dict, float | None]] = [(h, {**ENV, "EOS_PROBE_CRASH_AT": h}, None) for h, _ in HOOKS]
    cases += [(f"t={f:.2f}", ENV, f) for f in FRACTIONS]
    report = []
    for k, (name, env, frac) in enumerate(cases):
        out = tmp / f"c{k}.h5"
        t0 = time.monotonic()
        proc = _start(out, env)
        if frac is not None:  # wall-clock moment, counted from the file's appearance as in the reference
            while proc.poll() is None and not out.exists() and time.monotonic() - t0 < 120:
                time.sleep(0.002)
            t_file = time.monotonic()
            while proc.poll() is None and time.monotonic() - t_file < frac * (total - appear):
                time.sleep(0.002)
            if proc.poll() is None:
                proc.kill()
        proc.wait(timeout=300)
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr, (name, stderr)
        if not out.exists():  # killed before the file appeared: nothing to resume, nothing lost
            report.append(f"{name}: no file yet")
            continue
        status = _check_readable(out)
        rows = len(eos_probe.load(out).train)
        train(None, resume=out, progress=False)
        got = _series(out)
        assert got.keys() == ref.keys(), name
        for key in ref:
            assert np.array_equal(ref[key], got[key], equal_nan=True), f"{name}: {key} differs after resume"
        report.append(f"{name}: killed with {rows} rows ({status}), resumed bitwise equal")
    return report


@pytest.mark.slow
@pytest.mark.parametrize("load", [False, True], ids=["idle", "cpu-load"])
def test_crash_matrix(tmp_path: Path, one_thread, load: bool) -> None:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load else None
    try:
        report = _crash_matrix(tmp_path, one_thread)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    assert len(report) >= 20 + len(HOOKS) - 1
    print("\n".join(report))
