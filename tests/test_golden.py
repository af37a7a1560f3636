"""Refactoring guard: a fixed-seed run of every preset (and a stacked sweep, CoCD, resume) writes bitwise the same
HDF5 datasets as the recorded digests in tests/data/golden_runs.json.

A change of any number a run writes fails here: refactoring must leave every digest as recorded. Timing columns (`wall_time`, `seconds`) are excluded. Bitwise float results depend on the torch
build and the CPU's vector unit, so the file records both and the test skips (saying why) on another platform.

The file holds one record per platform (torch build × CPU vector unit); `--regen` replaces this platform's.
The ZO monitor's derived columns (`zo_trace`, `zo_trace_err`, `zo_trace_n`: numpy functions of `zo_trace_raw`
and the steps) are not digested but recomputed from the raw samples with `eos_probe.zo_monitor`, so a change
of the monitor's estimator re-records nothing and the raw samples, which carry the trajectory, stay guarded.

Regenerate, only for an intended change of numbers, with:  python tests/test_golden.py --regen
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from eos_probe.config import TrainConfig
from eos_probe.train import train, train_sweep

GOLDEN = Path(__file__).parent / "data" / "golden_runs.json"
TIMING = ("wall_time", "seconds")
DERIVED = ("zo_trace", "zo_trace_err", "zo_trace_n")
TINY_MLP = {"hidden": [12, 12]}
TINY_CNN = {"widths": [4, 8], "hidden": 16}
PRESETS = ("gd", "gdm", "adam", "zo-gd", "zo-gdm", "zo-adam", "cocd", "bccd")


def _platform() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _digest(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}

    def visit(name: str, obj) -> None:
        leaf = name.split("/")[-1]
        if isinstance(obj, h5py.Dataset) and not leaf.endswith(TIMING) and leaf not in DERIVED:
            arr = np.ascontiguousarray(obj[()])
            out[name] = f"{arr.dtype.str}{arr.shape}:" + hashlib.sha256(arr.tobytes()).hexdigest()[:20]

    with h5py.File(path, "r", locking=False) as f:
        f.visititems(visit)
    return out


def _base(**kw) -> TrainConfig:
    args = dict(model="mlp", model_args=TINY_MLP, n_per_class=4, steps=6, log_every=1, probe_every=3,
                seed=3, device="cpu", threads=1)  # the digests are of one-thread reductions
    args.update(kw)
    return TrainConfig(**args)


def _run_case(name: str, tmp: Path) -> dict[str, dict[str, str]]:
    """Run one case into tmp; return {file name: digests}."""
    if name in PRESETS:
        lr = {"gd": 0.05, "gdm": 0.02, "adam": 1e-3, "zo-gd": 2e-4, "zo-gdm": 5e-5, "zo-adam": 1e-4,
              "cocd": 0.005, "bccd": 0.005}[name]
        extra = {"cocd_block": 40} if name in ("cocd", "bccd") else {}
        res = train(_base(optimizer=name, lr=lr, out=str(tmp / f"{name}.h5"), **extra), progress=False)
        return {res.path.name: _digest(res.path)}
    if name == "sweep-cnn-zo-gdm":
        cfgs = [_base(model="cnn", model_args=TINY_CNN, optimizer="zo-gdm", lr=lr, momentum=m, queries=2,
                      out=str(tmp / f"sweep{i}.h5"))
                for i, (lr, m) in enumerate([(1e-4, 0.9), (2e-4, 0.5)])]
        return {r.path.name: _digest(r.path) for r in train_sweep(cfgs, progress=False)}
    if name == "resume-zo-adam":
        cfg = _base(optimizer="zo-adam", lr=1e-3, steps=4, out=str(tmp / "resume.h5"))
        train(cfg, progress=False)
        res = train(None, resume=tmp / "resume.h5", steps=8, progress=False)
        return {res.path.name: _digest(res.path)}
    raise KeyError(name)


CASES = (*PRESETS, "sweep-cnn-zo-gdm", "resume-zo-adam")


def _records() -> list[dict]:
    return json.loads(GOLDEN.read_text())["records"]


def _check_derived(tmp: Path) -> None:
    """The monitor's columns of every ZO file equal a replay of its raw samples through ZOTraceMonitor."""
    from eos_probe.zo_monitor import ZOTraceMonitor

    for path in tmp.glob("*.h5"):
        with h5py.File(path, "r") as f:
            if "train/zo_trace_raw" not in f:
                continue
            cols = {k: f[f"train/{k}"][()] for k in ("step", "zo_trace_raw", *DERIVED)}
            window = int(f["train/zo_trace"].attrs["window"])
        mon = ZOTraceMonitor(window)
        rows = [mon.update(0, float(x), int(t)) for t, x in zip(cols["step"], cols["zo_trace_raw"])]
        for k in DERIVED:
            np.testing.assert_array_equal(np.array([r[k] for r in rows]), cols[k], err_msg=f"{path.name}: {k}")


@pytest.mark.parametrize("case", CASES)
def test_run_files_are_bitwise_unchanged(case: str, tmp_path: Path, one_thread) -> None:
    records = [r for r in _records() if r["platform"] == _platform()]
    if not records:
        have = ", ".join(str(r["platform"]) for r in _records())
        pytest.skip(f"digests recorded on {have}, this is {_platform()}: bitwise floats differ")
    got = _run_case(case, tmp_path)
    _check_derived(tmp_path)
    want = records[0]["cases"][case]
    assert sorted(got) == sorted(want)
    for fname in want:
        changed = sorted(k for k in set(want[fname]) | set(got[fname]) if want[fname].get(k) != got[fname].get(k))
        assert not changed, f"{case}/{fname}: datasets changed: {changed}"


if __name__ == "__main__" and "--regen" in sys.argv:
    import tempfile

    torch.set_num_threads(1)
    cases = {}
    for c in CASES:
        with tempfile.TemporaryDirectory() as d:
            cases[c] = _run_case(c, Path(d))
            print(c, sum(len(v) for v in cases[c].values()), "datasets")
    GOLDEN.parent.mkdir(exist_ok=True)
    others = [r for r in _records() if r["platform"] != _platform()] if GOLDEN.exists() else []
    records = others + [{"platform": _platform(), "cases": cases}]
    GOLDEN.write_text(json.dumps({"records": records}, indent=1, sort_keys=True) + "\n")
