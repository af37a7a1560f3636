"""One torch thread against all cores, per model size: the measurement behind `eos_probe.build.SMALL_WORK`.

    python benchmarks/threads.py                 # the cases below, ZO-GD and GD, 2 rounds
    python benchmarks/threads.py --json

Each case trains `--steps` steps with `--probe none` under `--threads 1` and `--threads <all cores>`, in fresh
processes, alternating the order each round; the rate is the trainer's own steps/s (start-up excluded). Run it on
an idle machine: a second job on a 2-core box decides the two-thread rate.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

# (name, model, extra CLI args, steps): parameters × examples from 3e5 to 4e8
CASES = [
    ("quickstart cnn", "cnn", ["--model-arg", "widths=[2,4]", "--model-arg", "hidden=8", "--n-per-class", "50"], 300),
    ("cnn [4,8]/16, 1000 images", "cnn", ["--model-arg", "widths=[4,8]", "--model-arg", "hidden=16"], 200),
    ("lstm (default)", "lstm", [], 60),
    ("mamba (default)", "mamba", [], 40),
    ("mlp (default)", "mlp", [], 100),
    ("cnn (default)", "cnn", [], 30),
]


def rate(model: str, extra: list[str], steps: int, threads: int, optimizer: str) -> tuple[float, int, int]:
    """(steps/s, parameters, examples) of one `eos-probe train` run."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "run.h5")
        cmd = [sys.executable, "-c", "import sys; from eos_probe.cli import main; main(sys.argv[1:])", "train", "--model", model, "--optimizer", optimizer,
               "--steps", str(steps), "--probe", "none", "--threads", str(threads), "--quiet", "--out", out, *extra]
        p = subprocess.run(cmd, capture_output=True, text=True, check=True)
        text = p.stdout + p.stderr
        m = re.search(r"\(([\d.]+) steps/s", text)
        if not m:
            raise RuntimeError(f"no rate in: {text[-300:]}")
        import h5py

        with h5py.File(out, "r") as f:
            n_params, n_ex = int(f.attrs.get("n_params", 0)), int(f.attrs.get("n_train", 0))
        return float(m.group(1)), n_params, n_ex


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--optimizer", action="append", default=None, help="zo-gd and gd unless given")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rows = []
    for opt in a.optimizer or ["zo-gd", "gd"]:
        for name, model, extra, steps in CASES:
            r1, rn = [], []
            for k in range(a.rounds):
                order = (1, cores) if k % 2 == 0 else (cores, 1)
                for t in order:
                    v, d, n = rate(model, extra, steps, t, opt)
                    (r1 if t == 1 else rn).append(v)
            row = {"case": name, "optimizer": opt, "params": d, "examples": n, "work": d * n,
                   "steps_per_s_1": max(r1), f"steps_per_s_{cores}": max(rn), "speedup": max(rn) / max(r1)}
            rows.append(row)
            if not a.json:
                print(f"{opt:6s} {name:28s} d·n = {d * n:9.2e}  1 thread {max(r1):8.2f}/s  {cores} threads "
                      f"{max(rn):8.2f}/s  ratio {max(rn) / max(r1):.2f}", flush=True)
    if a.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
