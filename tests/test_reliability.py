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
from eos_probe.checkpoint import checkpoint_path

ARGS = ["--model", "cnn", "--model-arg", "widths=[4,8]", "--model-arg", "hidden=16", "--n-per-class", "20",
        "--optimizer", "zo-gdm", "--lr", "0.002", "--steps", "60", "--checkpoint-every", "7", "--log-every", "1",
        "--probe-every", "20", "--seed", "3", "--threads", "1", "--quiet"]
# --threads pinned: the probe's bits depend on the thread count, and the default (the free cores at the start)
# can differ between the reference run and the crashed one, which starts while this test polls its file


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


# ------------------------------------------------------------------ interruption, unwritable paths, back end
TINY = ["--model", "cnn", "--model-arg", "widths=[2,2]", "--model-arg", "hidden=4", "--n-per-class", "5",
        "--dtype", "float64", "--optimizer", "zo-gd", "--lr", "0.02", "--log-every", "1", "--device", "cpu",
        "--seed", "5", "--quiet"]


def _tiny(*extra: str) -> list[str]:
    return [sys.executable, "-m", "eos_probe.cli", "train", *TINY, *extra]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_marks_the_file_and_says_how_to_resume(tmp_path: Path, sig) -> None:
    import h5py

    out = tmp_path / "r.h5"
    # a long run; the signal comes once the first probe (step 0) has been written, or during it
    proc = subprocess.Popen(_tiny("--steps", "100000", "--probe-every", "50", "--out", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if out.exists() and len(eos_probe.load(out).train) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("interrupted at step ") and lines[0].endswith(f"resume with: eos-probe train --resume {out}")
    step = int(lines[0].split()[3])
    with h5py.File(out, "r") as f:  # plain h5py, no SWMR mode, no lock trouble
        assert f.attrs["status"] == "interrupted" and int(f.attrs["stop_step"]) == step
        assert f.attrs["stop_reason"] == signal.Signals(sig).name
        assert int(f["train/step"][-1]) == step - 1  # every step before the checkpoint is logged
    assert torch.load(checkpoint_path(out), weights_only=False)["step"] == step
    assert eos_probe.load(out).status == "interrupted"


def test_resuming_a_file_without_checkpoint_needs_restart(tmp_path: Path) -> None:
    from eos_probe.config import TrainConfig
    from eos_probe.train import train

    cfg = TrainConfig(model="cnn", model_args={"widths": [2, 2], "hidden": 4}, n_per_class=5, dtype="float64",
                      optimizer="zo-gd", lr=0.02, steps=6, log_every=1, device="cpu", probe=["lambda_max"],
                      probe_every=3, out=str(tmp_path / "r.h5"))
    ref = train(cfg, progress=False)
    before = eos_probe.load(ref.path)
    checkpoint_path(ref.path).unlink()
    with pytest.raises(UserError, match="--restart"):
        train(None, resume=ref.path, progress=False)
    assert eos_probe.load(ref.path).train.equals(before.train)  # the refusal touched nothing
    train(None, resume=ref.path, progress=False, restart=True)
    again = eos_probe.load(ref.path)
    assert again.status == "finished" and again.train.drop(columns="wall_time").equals(
        before.train.drop(columns="wall_time"))
    # a checkpoint left by another run of the same name is not used (its run_id differs)
    other = TrainConfig(**{**cfg.to_dict(), "seed": 9, "out": str(tmp_path / "o.h5")})
    train(other, progress=False)
    os.replace(checkpoint_path(tmp_path / "o.h5"), checkpoint_path(ref.path))
    with pytest.raises(UserError, match="no checkpoint"):
        train(None, resume=ref.path, progress=False)


@pytest.mark.parametrize("limit_kb", [2, 56])
def test_a_full_disk_is_one_line_exit_2(tmp_path: Path, limit_kb: int) -> None:
    """RLIMIT_FSIZE stands in for a full disk (writes past it fail with EFBIG, as ENOSPC would): 2 KB fails
    the up-front check, 56 KB fails mid-run (the run file grows past it; a ZO run also logs /train/zo_trace*); the run file stays readable."""
    import resource

    out = tmp_path / "r.h5"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kb * 1024, limit_kb * 1024))

    res = subprocess.run(_tiny("--steps", "400", "--probe-every", "20", "--probe", "lambda_max", "--out", str(out)),
                         capture_output=True, text=True, timeout=600, preexec_fn=limit,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "file size limit exceeded" in lines[0] and str(tmp_path) in lines[0], res.stderr
    if limit_kb == 2:
        assert not out.exists()
    else:
        run = eos_probe.load(out)
        assert len(run.train) > 0 and run.status == "interrupted"


def test_the_probe_back_end_does_not_depend_on_timing(monkeypatch) -> None:
    """Two runs of one config must measure with the same HVP back end whatever the machine's load; a clock
    that makes double backward look 100x slower must not change the choice."""
    import itertools

    import eos_probe.probe.runner as probe_mod
    from eos_probe.config import TrainConfig
    from eos_probe.build import build
    from eos_probe.train import _default_probe

    cfg = TrainConfig(model="cnn", model_args={"widths": [2, 2], "hidden": 4}, n_per_class=5, dtype="float64",
                      device="cpu", probe=["lambda_max"])
    setup = build(cfg)
    first = _default_probe(cfg, setup)._choose_backend()
    ticks = itertools.count()
    monkeypatch.setattr(probe_mod.time, "perf_counter", lambda: float(next(ticks)) ** 3)
    assert _default_probe(cfg, setup)._choose_backend() == first == "double-backward"


def test_checkpoints_follow_every_probe_and_the_clock(tmp_path: Path, monkeypatch, one_thread) -> None:
    """Default checkpointing: at step 0, at the step after each probe (a probe is never lost), at the end;
    and at every step boundary once CHECKPOINT_SECONDS have passed since the last one."""
    import eos_probe.train as train_mod
    import eos_probe.trainer.checkpointing as checkpointing
    from eos_probe.config import TrainConfig

    saved: list[int] = []
    real = checkpointing.save_checkpoint
    monkeypatch.setattr(checkpointing, "save_checkpoint", lambda path, step, *a: (saved.append(step), real(path, step, *a)))
    cfg = TrainConfig(model="cnn", model_args={"widths": [2, 2], "hidden": 4}, n_per_class=5, dtype="float64",
                      optimizer="zo-gd", lr=0.02, steps=7, probe_every=3, probe=["lambda_max"], device="cpu",
                      out=str(tmp_path / "a.h5"))
    train_mod.train(cfg, progress=False)
    assert saved == [0, 1, 4, 7, 7]  # probes at 0, 3, 6 and the final 7 (step 7 is also the end)
    saved.clear()
    monkeypatch.setattr(checkpointing, "CHECKPOINT_SECONDS", 0.0)
    train_mod.train(TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path / "b.h5"), "probe": []}), progress=False)
    assert saved == list(range(8)) + [7]
