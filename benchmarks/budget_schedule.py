"""Does the probe budget see what a dense probe grid sees? (the goals of `--probe-every auto`)

    python benchmarks/budget_schedule.py                      # gallery CNN (η 0.01, 0.02, 0.04) and LSTM
    python benchmarks/budget_schedule.py --cases cnn:0.02 --steps 1000 --json out.json

For each case two runs of one config share one trajectory (probes never touch θ; same device and threads):
the run under test (`probe_every = "auto"`, `probe_budget` F) and a reference probing every `--ref-every`
steps. Reported per case:

* `share`: the run's measured probe share (probe + tracking seconds / wall time), goal F ± 0.03;
* crossings of S = 1 in the reference (consecutive reference probes on opposite sides of 1), and for each
  whether the run caught it within `--window` steps after the reference saw it: a certified probe on the new
  side, or a tracking bracket that admits the new side (S_hi > 1 after an upward crossing, S_lo < 1 after a
  downward one);
* for a diverged run, the first flag (a certified S > 1 or a bracket S_hi > 1) in the 100 steps before the
  step whose loss blew up, and its lead.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

GALLERY = {"cnn": "recipes/paper/zo-gd-cnn.toml", "lstm": "recipes/paper/zo-gd-lstm.toml"}
DEFAULT_CASES = ("cnn:0.01", "cnn:0.02", "cnn:0.04", "lstm:0.05", "lstm:0.1", "lstm:0.15")


def _config(case: str, steps: int | None):
    from eos_probe.config import TrainConfig
    from eos_probe.sweep.spec import parse_sweep
    from eos_probe.config import read_toml

    family, lr = case.split(":")
    base = parse_sweep(read_toml(GALLERY[family])).base
    base = {k: v for k, v in base.items() if k not in ("probe_every", "out")}
    if steps:
        base["steps"] = steps
    return TrainConfig(**{**base, "lr": float(lr), "device": "cpu", "threads": 1})


def _run(cfg, out: Path):
    from eos_probe.errors import DivergedError
    from eos_probe.run import load
    from eos_probe.train import train

    try:
        train(replace(cfg, out=str(out)), overwrite=True, progress=False)
    except DivergedError:
        pass
    return load(out)


def _reuse(path: Path, cfg):
    """A reference run file kept from an earlier call with the same config (the trajectory is the same)."""
    from eos_probe.run import load

    if not path.exists():
        return None
    run = load(path)
    want = cfg.to_dict()
    same = all(run.config.get(k) == v for k, v in want.items() if k != "out" and v not in (None, {}, []))
    return run if same and run.status in ("finished", "diverged") else None


def crossings(steps: np.ndarray, s: np.ndarray) -> list[tuple[int, str]]:
    """(step, "up"|"down") where consecutive finite values lie on opposite sides of 1 (the later step)."""
    out = []
    ok = np.isfinite(s)
    st, sv = steps[ok], s[ok]
    for i in range(1, len(sv)):
        if (sv[i - 1] < 1) != (sv[i] < 1):
            out.append((int(st[i]), "up" if sv[i] >= 1 else "down"))
    return out


def caught(run, step: int, way: str, window: int) -> bool:
    """Whether the run shows the new side of S = 1 within `window` steps after `step`."""
    p = run.probe
    cert = p[(p["step"] >= step - window // 5) & (p["step"] <= step + window)]
    s = cert["ms_margin"].to_numpy()
    if (way == "up" and np.any(s >= 1)) or (way == "down" and np.any(s < 1)):
        return True
    tr = run.track
    if tr is None or not len(tr):
        return False
    t = tr[(tr["step"] >= step - window // 5) & (tr["step"] <= step + window)]
    return bool(np.any(t["s_hi"] > 1) if way == "up" else np.any(t["s_lo"] < 1))


def case_report(case: str, budget: float, ref_every: int, window: int, steps: int | None, tmp: Path) -> dict:
    cfg = _config(case, steps)
    run = _run(replace(cfg, probe_every="auto", probe_budget=budget), tmp / f"{case}-auto.h5")
    ref_path = tmp / f"{case}-ref.h5"
    ref = _reuse(ref_path, replace(cfg, probe_every=ref_every)) or _run(replace(cfg, probe_every=ref_every), ref_path)
    a = run.attrs
    share = a.get("probe_share", math.nan)
    xs = crossings(ref.probe["step"].to_numpy(), ref.probe["ms_margin"].to_numpy())
    got = [caught(run, s, w, window) for s, w in xs]
    out = {"case": case, "steps": cfg.steps, "status": run.status, "share": share,
           "probes": int(len(run.probe)), "tracks": int(len(run.track)) if run.track is not None else 0,
           "reference_probes": int(len(ref.probe)), "crossings": len(xs), "caught": int(sum(got)),
           "missed": [s for (s, _), g in zip(xs, got) if not g],
           "reasons": {k: int(v) for k, v in run.probe.get("reason", []).value_counts().items()}
           if "reason" in run.probe else {}}
    if run.status == "diverged":
        d = int(run.attrs.get("stop_step", -1))
        flags = list(run.probe.loc[run.probe["ms_margin"] > 1, "step"])
        if run.track is not None and len(run.track):
            flags += list(run.track.loc[run.track["s_hi"] > 1, "step"])
        near = sorted(f for f in flags if d - 100 <= f < d)  # flags from the 100 steps before the blow-up step
        out.update(diverged_at=d, first_flag=near[0] if near else None, flag_lead=d - near[0] if near else None)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=list(DEFAULT_CASES))
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--ref-every", type=int, default=10)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--steps", type=int, default=None, help="override the recipes' step counts")
    ap.add_argument("--json", help="write the reports here")
    ap.add_argument("--keep", help="keep the run files in this directory")
    args = ap.parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(args.keep or d)
        tmp.mkdir(parents=True, exist_ok=True)
        for case in args.cases:
            r = case_report(case, args.budget, args.ref_every, args.window, args.steps, tmp)
            reports.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1) + "\n")


if __name__ == "__main__":
    main()
