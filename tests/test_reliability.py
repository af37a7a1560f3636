"""Crashes and resuming: SIGKILL at a random moment, then --resume gives the identical run."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import eos_probe
from eos_probe.errors import CorruptFileError, UserError
from eos_probe.train import checkpoint_path

ARGS = ["--model", "cnn", "--model-arg", "widths=[4,8]", "--model-arg", "hidden=16", "--n-per-class", "20",
        "--optimizer", "zo-gdm", "--lr", "0.002", "--steps", "60", "--checkpoint-every", "7", "--log-every", "1",
        "--probe-every", "20", "--seed", "3", "--quiet"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eos_probe.cli", *args], capture_output=True, text=True,
                          timeout=600)


def _series(path: Path) -> dict[str, np.ndarray]:
    run = eos_probe.load(path)
    out = {f"train/{c}": run.train[c].to_numpy() for c in run.train.columns if c != "wall_time"}
    out.update({f"probe/{c}": run.probe[c].to_numpy() for c in run.probe.columns if not c.endswith("seconds")})
    return out


def _assert_consistent(run) -> None:
    steps = run.train["step"].to_numpy()
    assert np.all(np.diff(steps) > 0), "duplicate or unordered steps"
    # zo_trace_raw is NaN by design where a step has no sample (the final step); zo_trace_err for n < 2
    assert not run.train[["step", "loss", "accuracy", "wall_time"]].isna().any().any(), "half-written row"


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(2))
def test_sigkill_then_resume_gives_the_identical_run(tmp_path: Path, attempt: int) -> None:
    ref = tmp_path / "ref.h5"
    assert _cli("train", *ARGS, "--out", str(ref)).returncode == 0
    rng = random.Random()
    crashed = tmp_path / "crashed.h5"
    proc = subprocess.Popen([sys.executable, "-m", "eos_probe.cli", "train", *ARGS, "--out", str(crashed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wait until the run is under way, reading the live file as a concurrent reader would
    deadline = time.time() + 300
    target_rows = rng.randint(5, 50)
    while time.time() < deadline and proc.poll() is None:
        if crashed.exists():
            try:
                run = eos_probe.load(crashed)
            except (UserError, CorruptFileError, OSError):
                run = None
            if run is not None:
                _assert_consistent(run)
                if len(run.train) >= target_rows:
                    break
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.5))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = eos_probe.load(crashed)
    assert killed.status in ("interrupted", "finished")
    res = _cli("train", "--resume", str(crashed), "--quiet")
    assert res.returncode == 0, res.stderr
    a, b = _series(ref), _series(crashed)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key], equal_nan=True), f"{key} differs after resume (killed at "\
                                                                f"{len(killed.train)} rows)"
    ta = torch.load(checkpoint_path(ref), weights_only=False)["theta"]
    tb = torch.load(checkpoint_path(crashed), weights_only=False)["theta"]
    assert torch.equal(ta, tb)
    assert eos_probe.load(crashed).attrs["resumed"] == 1


def test_a_crash_during_a_checkpoint_write_leaves_the_previous_one_usable(tmp_path: Path) -> None:
    out = tmp_path / "r.h5"
    args = [a for a in ARGS if a != "60"]
    steps_idx = ARGS.index("--steps")
    args = ARGS[:steps_idx] + ["--steps", "14"] + ARGS[steps_idx + 2:] + ["--probe", "none"]
    assert _cli("train", *args, "--out", str(out)).returncode == 0
    ck = checkpoint_path(out)
    good = ck.read_bytes()
    # a writer killed mid-checkpoint leaves only a partial temporary file behind
    ck.with_name(ck.name + ".tmp").write_bytes(good[: len(good) // 3])
    res = _cli("train", "--resume", str(out), "--steps", "20", "--quiet")
    assert res.returncode == 0, res.stderr
    assert eos_probe.load(out).train["step"].iloc[-1] == 20
    # a damaged checkpoint itself is one clear line, and the run file is untouched
    ck.write_bytes(good[: len(good) // 2])
    before = out.read_bytes()
    res = _cli("train", "--resume", str(out), "--steps", "30", "--quiet")
    assert res.returncode == 2 and "checkpoint" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before


def test_truncated_or_foreign_run_files_are_reported_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "r.h5"
    steps_idx = ARGS.index("--steps")
    args = ARGS[:steps_idx] + ["--steps", "5"] + ARGS[steps_idx + 2:] + ["--probe", "none"]
    assert _cli("train", *args, "--out", str(out)).returncode == 0
    cut = tmp_path / "cut.h5"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="cut.h5"):
        eos_probe.load(cut)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(CorruptFileError, match="junk.h5"):
        eos_probe.load(junk)
    res = _cli("train", "--resume", str(cut), "--quiet")
    assert res.returncode != 0 and "cut.h5" in res.stderr and len(res.stderr.strip().splitlines()) == 1
