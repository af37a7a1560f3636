"""`eos-probe sweep` with the local executor: grid expansion, bad input, manifest, idempotence, kill -9."""
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

from eos_probe.errors import UserError
from eos_probe.sweep import load_sweep, parse_sweep, run_sweep

BASE = {"model": "cnn", "model_args": {"widths": [2, 4], "hidden": 8}, "n_per_class": 5, "device": "cpu",
        "optimizer": "zo-gd", "steps": 12, "probe_every": 6, "checkpoint_every": 3, "probe": ["lambda_max"]}

STEPS = 60  # long enough that a kill lands mid-run (checkpoints every 3 steps)
TOML = """model = "cnn"
model_args = {{ widths = [2, 4], hidden = 8 }}
n_per_class = 5
device = "cpu"
optimizer = "zo-gd"
steps = {steps}
probe_every = 20
checkpoint_every = 3
probe = ["lambda_max"]
[sweep]
lr = [0.01, 0.02]
seed = [0, 1]
"""


def _cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eos_probe.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def _losses(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["train/loss"][()]


# ------------------------------------------------------------------ the file
def test_grid_zip_names_and_packs(tmp_path):
    spec = parse_sweep({**BASE, "sweep": {"lr": [0.01, 0.02], "momentum": [0.0, 0.5], "seed": [0, 1],
                                          "queries": [1, 2], "zip": [["seed", "queries"]]}})
    spec.base["optimizer"] = "zo-gdm"
    pts = spec.points(tmp_path)
    assert len(pts) == 2 * 2 * 2  # lr × momentum × (seed, queries) zipped
    names = {p.name for p in pts}
    assert "lr0.01-momentum0.5-seed1-queries2" in names
    assert all(Path(p.file).parent == tmp_path and Path(p.file).name == p.name + ".h5" for p in pts)
    from eos_probe.sweep import packs

    groups = packs(pts)
    assert sorted(len(g) for g in groups) == [4, 4]  # lr × momentum stack; seed/queries split
    for g in groups:
        assert len({(p.config["seed"], p.config["queries"]) for p in g}) == 1


def test_model_args_are_merged_into_the_base(tmp_path):
    spec = parse_sweep({**BASE, "sweep": {"model_args": [{"hidden": 4}, {"hidden": 6}]}})
    pts = spec.points(tmp_path)
    assert [p.config["model_args"] for p in pts] == [{"widths": [2, 4], "hidden": 4}, {"widths": [2, 4], "hidden": 6}]
    assert [p.name for p in pts] == ["hidden4", "hidden6"]


@pytest.mark.parametrize("sweep, message", [
    ({"lr": []}, "empty list"),
    ({"learning_rate": [0.1]}, "unknown option 'learning_rate' in [sweep]"),
    ({"lr": 0.1}, "must be a list"),
    ({"lr": [0.1, "x"]}, "must be of type float"),
    ({"lr": [0.1, 0.1]}, "lists a value twice"),
    ({"lr": [0.1, 0.2], "seed": [0], "zip": [["lr", "seed"]]}, "different lengths"),
    ({"lr": [0.1], "zip": [["momentum"]]}, "not a list in [sweep]"),
    ({}, "no option to sweep"),
    ({"lr": [-0.1]}, "lr must be a positive"),
])
def test_bad_sweep_tables(tmp_path, sweep, message):
    with pytest.raises(UserError, match=None) as e:
        parse_sweep({**BASE, "sweep": sweep}).points(tmp_path)
    assert message in str(e.value)


def test_bad_input_from_the_command_line(tmp_path):
    (tmp_path / "s.toml").write_text(TOML.format(steps=4).replace("lr = [0.01, 0.02]", "lr = []"))
    r = _cli("sweep", "--config", str(tmp_path / "s.toml"), "--out-dir", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "empty list" in r.stderr, r.stderr
    (tmp_path / "u.toml").write_text(TOML.format(steps=4).replace("seed = [0, 1]", "sed = [0, 1]"))
    r = _cli("sweep", "--config", str(tmp_path / "u.toml"), "--out-dir", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown option 'sed'" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()  # nothing written for a bad file
    r = _cli("sweep-summary", str(tmp_path))
    assert r.returncode == 2 and "has no sweep.json" in r.stderr


# ------------------------------------------------------------------ running
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 4-point sweep run once, uninterrupted, by the local executor (two processes)."""
    d = tmp_path_factory.mktemp("ref")
    spec = parse_sweep({**BASE, "steps": STEPS, "probe_every": 20, "sweep": {"lr": [0.01, 0.02], "seed": [0, 1]}})
    rep = run_sweep(spec, d / "out", workers=2)
    return d / "out", rep


def test_sweep_runs_every_point_and_writes_the_manifest(reference):
    out, rep = reference
    assert rep.counts == {"finished": 4} and rep.tasks == 2  # lr pairs stacked, one task per seed
    m = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in m["points"]] == ["finished"] * 4
    assert {p["file"] for p in m["points"]} == {"lr0.01-seed0.h5", "lr0.01-seed1.h5", "lr0.02-seed0.h5",
                                                "lr0.02-seed1.h5"}
    df = load_sweep(out)
    assert list(df["status"]) == ["finished"] * 4
    assert set(df["lr"]) == {0.01, 0.02} and set(df["seed"]) == {0, 1}
    assert np.all(df["steps_done"] == STEPS)
    # Tr/T is not measured (probe lambda_max only); η·λ_max is, and the loss columns are filled
    assert df["trace_over_T"].isna().all() and np.all(df["eta_lambda_max"] > 0)
    assert np.allclose(df["eta_lambda_max"] / df["eta"], df["eta_lambda_max"] / df["lr"])
    assert np.all(np.isfinite(df["final_loss"])) and np.all(df["probe_share"] > 0)


def test_rerun_skips_finished_points(reference, tmp_path):
    out, _ = reference
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    spec = parse_sweep({**BASE, "steps": STEPS, "probe_every": 20, "sweep": {"lr": [0.01, 0.02], "seed": [0, 1]}})
    rep = run_sweep(spec, out, workers=2)
    assert rep.skipped == 4 and rep.tasks == 0 and rep.counts == {"finished": 4}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == before


def test_more_steps_extend_finished_points_and_other_settings_are_refused(tmp_path):
    spec = parse_sweep({**BASE, "steps": 6, "sweep": {"lr": [0.01]}})
    run_sweep(spec, tmp_path / "o", workers=1)
    longer = parse_sweep({**BASE, "steps": 9, "sweep": {"lr": [0.01]}})
    rep = run_sweep(longer, tmp_path / "o", workers=1)
    assert rep.counts == {"finished": 1} and load_sweep(tmp_path / "o")["steps_done"].iloc[0] == 9
    other = parse_sweep({**BASE, "steps": 9, "mu": 0.01, "sweep": {"lr": [0.01]}})
    rep = run_sweep(other, tmp_path / "o", workers=1)
    assert rep.counts == {"failed": 1} and "other settings (mu)" in rep.entries[0]["error"]


def test_a_failing_point_is_reported_and_the_others_finish(tmp_path):
    spec = parse_sweep({**BASE, "steps": 4, "sweep": {"model_args": [{"hidden": 8}, {"bogus": 1}]}})
    rep = run_sweep(spec, tmp_path / "o", workers=1)
    assert rep.counts == {"finished": 1, "failed": 1}
    bad = [e for e in rep.entries if e["status"] == "failed"][0]
    assert "bogus" in bad["error"] and "\n" not in bad["error"]
    m = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert [p["status"] for p in m["points"]] == ["finished", "failed"]
    assert list(load_sweep(tmp_path / "o")["status"]) == ["finished", "failed"]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_for(pred, timeout: float = 240.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.1)


@pytest.mark.slow  # two subprocess sweeps with spawned workers (~30 s idle, minutes on a loaded machine)
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the workers")
@pytest.mark.parametrize("victim", ["driver", "worker"])
def test_kill_9_loses_nothing_and_rerun_matches_an_uninterrupted_sweep(reference, tmp_path, victim):
    ref_out, _ = reference
    (tmp_path / "s.toml").write_text(TOML.format(steps=STEPS))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "eos_probe.cli", "sweep", "--config", str(tmp_path / "s.toml"),
           "--out-dir", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the first checkpoint after step 0: the points are mid-run
        _wait_for(lambda: any(out.glob("*.h5.ckpt")) or proc.poll() is not None)
        if victim == "driver":
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            for w in _children(proc.pid):  # none: workers die with their parent (PR_SET_PDEATHSIG)
                os.kill(w, signal.SIGKILL)
            time.sleep(1.0)
            statuses = list(load_sweep(out)["status"])
            assert statuses != ["finished"] * 4  # the kill landed mid-sweep
            r = _cli(*cmd[3:])
            assert r.returncode == 0, r.stdout + r.stderr
        else:
            workers = [c for c in _children(proc.pid)
                       if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
            if proc.poll() is None and workers:
                os.kill(workers[0], signal.SIGKILL)
            else:
                pytest.fail("no worker found to kill")
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr
            assert "ran again after their worker died" in stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    df = load_sweep(out)
    assert list(df["status"]) == ["finished"] * 4
    # the same losses as the uninterrupted sweep: a killed point resumes alone (one-copy arithmetic) while the
    # reference trained it stacked with its lr twin, so equal up to float32 rounding, not necessarily bitwise
    for f in ref_out.glob("*.h5"):
        np.testing.assert_allclose(_losses(out / f.name), _losses(f), rtol=1e-5)


def test_summary_and_plot_mark_diverged_points(tmp_path):
    spec = parse_sweep({**BASE, "steps": 20, "probe_every": 5, "sweep": {"lr": [0.01, 50.0]}})
    rep = run_sweep(spec, tmp_path / "o", workers=1)
    assert rep.tasks == 1 and rep.counts == {"finished": 1, "diverged": 1}  # one pack, one copy dropped
    df = load_sweep(tmp_path / "o")
    div = df[df["lr"] == 50.0].iloc[0]
    assert div["status"] == "diverged" and 0 < div["divergence_step"] <= 20 and div["stop_reason"]
    assert np.isnan(df[df["lr"] == 0.01].iloc[0]["divergence_step"])
    r = _cli("sweep-summary", str(tmp_path / "o"), "--csv", str(tmp_path / "s.csv"))
    assert r.returncode == 0 and "diverged" in r.stdout and (tmp_path / "s.csv").exists(), r.stderr
    r = _cli("plot", str(tmp_path / "o"), "--kind", "sweep", "--out", str(tmp_path / "s.png"))
    assert r.returncode == 0 and (tmp_path / "s.png").stat().st_size > 10_000, r.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _cli("plot", str(tmp_path / "o"), "--kind", "sweep", cwd=elsewhere)  # default: beside the run files
    default = tmp_path / "o" / "figures" / "o-sweep.png"
    assert r.returncode == 0 and r.stdout.strip() == str(default) and default.is_file(), r.stderr
    assert not any(elsewhere.iterdir())
    r = _cli("plot", str(tmp_path / "o"), str(tmp_path / "o"), "--kind", "sweep")
    assert r.returncode == 2 and "one sweep directory" in r.stderr
