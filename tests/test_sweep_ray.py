"""`eos-probe sweep --engine ray` on a local Ray cluster started by the test (skipped without Ray).

Marked `ray` and `slow` (starting a cluster takes 10-30 s on 2 cores): run with `pytest -m ray`.
"""
from __future__ import annotations

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

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

BASE = {"model": "cnn", "model_args": {"widths": [2, 4], "hidden": 8}, "n_per_class": 5, "device": "cpu",
        "optimizer": "zo-gd", "steps": 60, "probe_every": 20, "checkpoint_every": 3, "probe": ["lambda_max"]}
GRID = {"lr": [0.01, 0.02], "seed": [0, 1]}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _losses(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["train/loss"][()]


def _ray_task_pids() -> list[int]:
    """Processes executing run_job (Ray titles a busy worker `ray::run_job`)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(b"ray::run_job"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_four_point_sweep_on_ray_matches_the_local_executor(cluster, tmp_path):
    spec = parse_sweep({**BASE, "sweep": GRID})
    for pack in (True, False):
        ray_rep = run_sweep(spec, tmp_path / f"ray{pack}", engine="ray", pack=pack)
        assert ray_rep.counts == {"finished": 4} and ray_rep.tasks == (2 if pack else 4)
    local = run_sweep(spec, tmp_path / "local", engine="local", workers=2)
    assert local.counts == {"finished": 4}
    df = load_sweep(tmp_path / "rayTrue")
    assert list(df["status"]) == ["finished"] * 4 and np.all(df["steps_done"] == 60)
    for f in (tmp_path / "local").glob("*.h5"):  # same numbers whichever engine ran them
        np.testing.assert_array_equal(_losses(tmp_path / "rayTrue" / f.name), _losses(f))
        # one process per point: one-copy arithmetic, equal to stacked copies up to float32 rounding
        np.testing.assert_allclose(_losses(tmp_path / "rayFalse" / f.name), _losses(f), rtol=1e-5)
    # idempotent: a second run through Ray skips every point
    again = run_sweep(spec, tmp_path / "rayTrue", engine="ray")
    assert again.skipped == 4 and again.tasks == 0


def test_killed_ray_worker_is_retried_and_resumes_bitwise(cluster, tmp_path):
    spec = parse_sweep({**BASE, "steps": 150, "sweep": {"lr": [0.01], "seed": [0]}})
    ref = run_sweep(spec, tmp_path / "ref", engine="local", workers=1)
    assert ref.counts == {"finished": 1}
    out = tmp_path / "o"
    killed = []

    def killer() -> None:
        t0 = time.monotonic()
        while not any(out.glob("*.h5.ckpt")) and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        for pid in _ray_task_pids():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    import threading

    th = threading.Thread(target=killer)
    th.start()
    rep = run_sweep(spec, out, engine="ray")
    th.join()
    assert killed, "the worker was not found mid-run"
    assert rep.counts == {"finished": 1}, rep.entries
    np.testing.assert_array_equal(_losses(out / "lr0.01-seed0.h5"), _losses(tmp_path / "ref" / "lr0.01-seed0.h5"))


def test_unreachable_address_is_one_line_within_30_s(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('steps = 2\n[sweep]\nlr = [0.01]\n')
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "eos_probe.cli", "sweep", "--config", str(toml), "--engine", "ray",
                        "--address", "127.0.0.1:9", "--out-dir", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 30
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot reach a Ray cluster" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_bad_address_form():
    from eos_probe.sweep.engines import check_address

    with pytest.raises(UserError, match="HOST:PORT"):
        check_address("nohost")
