"""Crash matrix: `eos-probe train` killed with SIGKILL at many moments over a whole (tiny) run — spread in
time, in the first second after the run file appears, mid-probe, mid-file-write, mid-checkpoint, right after
the run finished. Every time the file is readable (also by plain h5py) and `--resume` completes to a run
bitwise equal to the uninterrupted one. Run once on its own and once beside a competing CPU load.

Moments that must be hit exactly use the fault-injection hook `EOS_PROBE_CRASH_AT=point:n[:delay]`
(`eos_probe.store.crash_point`: SIGKILL at the n-th time the process reaches `point`); the others are
wall-clock moments spread over the reference run's duration.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import eos_probe
from eos_probe.checkpoint import checkpoint_path
from eos_probe.train import train

# 466 parameters: a step takes milliseconds, a probe (Lanczos + Hutchinson + SLQ) a good share of the run
ARGS = ["--model", "cnn", "--model-arg", "widths=[2,2]", "--model-arg", "hidden=4", "--n-per-class", "5",
        "--threads", "1", "--dtype", "float64", "--optimizer", "zo-gd", "--lr", "0.02", "--steps", "24", "--log-every", "1",
        "--probe-every", "6", "--probe", "lambda_max,trace:method=hutchinson:n_matvec=8,density:n_probes=1:n_steps=8",
        "--device", "cpu", "--seed", "5", "--quiet"]
# one intra-op thread everywhere (killed runs in subprocesses, resumes in this process): same reductions
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: (hook, description): exact moments
HOOKS = [
    ("publish:1", "run file header complete, not yet renamed into place (no file yet)"),
    ("publish:2", "header published, series declared but not yet published"),
    ("probe:1:0.02", "mid-probe at step 0 (20 ms in)"),
    ("probe:2:0.05", "mid-probe at step 6 (50 ms in)"),
    ("probe:4:0", "at the start of the probe at step 18"),
    ("write:2", "mid-write: the run file's copy open and changed"),
    ("write:4", "mid-write, later"),
    ("checkpoint:1", "mid-checkpoint: step-0 checkpoint written, not renamed"),
    ("checkpoint:3", "mid-checkpoint, later"),
    ("finished:1", "right after the run finished"),
]
#: fractions of the reference run (from the file's appearance to exit): spread in time
FRACTIONS = [1.1, 0.02, 0.08, 0.15] + [i / 14 for i in range(2, 15)]  # 1.1 first: times the run as the machine is now


# Each case is an `eos-probe train` process; importing torch would dominate a tiny run, so a server imports it
# once and forks one child per case (no threads exist before the fork: one intra-op thread, nothing run yet).
_SERVER = """
import json, os, sys
import torch, eos_probe.cli, eos_probe.commands.train, eos_probe.train, eos_probe.probe
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.environ.update(req["env"])
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        code = 0
        try:
            eos_probe.cli.main(req["args"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class _Runner:
    """Starts `eos-probe train ... --out OUT` as a fork of the server; `alive`, `kill`, `wait` on it."""

    def __init__(self) -> None:
        self.server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env=ENV)
        self.pid = 0

    def start(self, out: Path, env: dict[str, str]) -> None:
        req = {"args": ["train", *ARGS, "--out", str(out)], "env": env, "stderr": str(out) + ".stderr"}
        self.server.stdin.write(json.dumps(req) + "\n")
        self.server.stdin.flush()
        self.pid = int(self.server.stdout.readline())

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)  # the server reaps its child at once, so a finished one is gone
            return True
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        return os.waitstatus_to_exitcode(int(self.server.stdout.readline()))

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


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
    # zo_trace_err is NaN by design until the window holds two samples; the exact columns must be whole
    assert np.all(np.diff(steps) > 0) and not run.train[["step", "loss", "accuracy", "wall_time"]].isna().any().any()
    assert run.status in ("interrupted", "finished")
    return run.status


def _reference(tmp: Path, runner: _Runner) -> tuple[dict, float, float]:
    """The uninterrupted run; returns its series and how long the file took to appear / the run to end."""
    out = tmp / "ref.h5"
    t0 = time.monotonic()
    runner.start(out, {})
    appear = None
    while runner.alive():
        if appear is None and out.exists():
            appear = time.monotonic() - t0
        time.sleep(0.002)
    assert runner.wait() == 0, Path(str(out) + ".stderr").read_text()
    return _series(out), appear if appear is not None else 0.0, time.monotonic() - t0


def _crash_matrix(tmp: Path, runner: _Runner) -> list[str]:
    ref, appear, total = _reference(tmp, runner)
    run_time = total - appear  # from the file's appearance to exit; the fastest uninterrupted run seen
    interrupted_in_time = 0
    cases: list[tuple[str, dict, float | None]] = [(h, {"EOS_PROBE_CRASH_AT": h}, None) for h, _ in HOOKS]
    cases += [(f"t={f:.2f}", {}, f) for f in FRACTIONS]
    report = []
    for k, (name, env, frac) in enumerate(cases):
        out = tmp / f"c{k}.h5"
        t0 = time.monotonic()
        runner.start(out, env)
        if frac is not None:  # wall-clock moment, counted from the file's appearance as in the reference
            while runner.alive() and not out.exists() and time.monotonic() - t0 < 120:
                time.sleep(0.001)
            t_file = time.monotonic()
            while runner.alive() and time.monotonic() - t_file < frac * run_time:
                time.sleep(0.001)
            runner.kill()
        else:
            t_file = time.monotonic()
        code = runner.wait()
        if code == 0 and out.exists():  # ran to the end: the machine's speed now (load varies)
            run_time = min(run_time, time.monotonic() - t_file)
        stderr = Path(str(out) + ".stderr").read_text()
        assert code in (0, -9), (name, code, stderr)
        assert "Traceback" not in stderr, (name, stderr)
        if not out.exists():  # killed before the file appeared: nothing to resume, nothing lost
            report.append(f"{name}: no file yet")
            continue
        status = _check_readable(out)
        interrupted_in_time += frac is not None and frac < 1 and status == "interrupted"
        rows = len(eos_probe.load(out).train)
        train(None, resume=out, progress=False)
        got = _series(out)
        assert got.keys() == ref.keys(), name
        for key in ref:
            assert np.array_equal(ref[key], got[key], equal_nan=True), f"{name}: {key} differs after resume"
        report.append(f"{name}: killed with {rows} rows ({status}), resumed bitwise equal")
    # the wall-clock moments must really be spread over the run, not all after its end
    assert interrupted_in_time >= len(FRACTIONS) // 3, report
    return report


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("load", [False, True], ids=["idle", "cpu-load"])
def test_crash_matrix(tmp_path: Path, one_thread, load: bool) -> None:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load else None
    runner = _Runner()
    t0 = time.monotonic()
    try:
        report = _crash_matrix(tmp_path, runner)
    finally:
        runner.close()
        if hog is not None:
            hog.kill()
            hog.wait()
    report.append(f"crash matrix: {len(report)} kills in {time.monotonic() - t0:.0f} s")
    print("\n".join(report))
    assert len(report) - 1 == len(HOOKS) + len(FRACTIONS) >= 20
