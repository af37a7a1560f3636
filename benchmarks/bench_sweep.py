"""Sweep engine overhead: the same 4-point sweep by the local executor and by Ray, side by side in one process.

    python benchmarks/bench_sweep.py                  # 4 points (2 lr x 2 seeds), 3 interleaved repetitions
    python benchmarks/bench_sweep.py --reps 5 --steps 300 --json-out sweep.json

Each repetition runs the sweep into a fresh directory with `--engine local` (a process pool of --workers, started
per sweep) and with `--engine ray` (one local cluster, `ray.init(num_cpus=workers)`, started once: its start-up
is timed on its own), alternating local/ray so that load from other processes on a shared machine hits both
alike. Both engines get the same tasks (packed: points that differ only in lr stack in one process; --no-pack:
one process per point) and the same torch threads per task. Reported: wall seconds per sweep, the ratio
ray/local per repetition and its median, the Ray cluster start-up, and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-pack", action="store_true", help="one task per point (4 tasks instead of 2)")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    import ray

    from eos_probe.sweep import parse_sweep, run_sweep

    spec = parse_sweep({"model": "cnn", "model_args": {"widths": [4, 8], "hidden": 16}, "n_per_class": 50,
                        "device": "cpu", "optimizer": "zo-gd", "steps": args.steps, "probe_every": 100,
                        "probe": ["lambda_max"], "checkpoint_every": 100,
                        "sweep": {"lr": [0.005, 0.01], "seed": [0, 1]}}, "bench")
    # the engine overhead is the question, not Ray's OOM policy: its memory monitor kills tasks when the *node*
    # nears its limit, which on a shared machine is other people's memory (it did so in a run of this script)
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_start = time.perf_counter() - t0
    root = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    rows = []
    try:
        for rep in range(args.reps):
            row = {}
            for engine in ("local", "ray") if rep % 2 == 0 else ("ray", "local"):
                out = root / f"{engine}{rep}"
                t0 = time.perf_counter()
                r = run_sweep(spec, out, engine=engine, workers=args.workers, pack=not args.no_pack)
                row[engine] = time.perf_counter() - t0
                assert r.counts == {"finished": 4}, r.entries
                row[f"{engine}_tasks"] = r.tasks
                shutil.rmtree(out)
            row["ratio"] = row["ray"] / row["local"]
            rows.append(row)
            print(f"rep {rep}: local {row['local']:.1f} s, ray {row['ray']:.1f} s, ray/local {row['ratio']:.2f} "
                  f"({row['local_tasks']} tasks)", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    ratios = [r["ratio"] for r in rows]
    result = {"reps": rows, "median_ratio": statistics.median(ratios),
              "median_ratio_after_first": statistics.median(ratios[1:]) if len(ratios) > 1 else None,
              "ray_start_seconds": ray_start, "steps": args.steps, "workers": args.workers,
              "packed": not args.no_pack, "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
              "python": sys.version.split()[0], "ray": ray.__version__}
    print(f"median ray/local {result['median_ratio']:.2f} over {len(rows)} reps "
          f"(first Ray sweep includes cold workers); Ray cluster start {ray_start:.1f} s (not in the ratio); "
          f"load average {', '.join(f'{x:.1f}' for x in result['loadavg'])}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
