"""Cost and peak memory of one default probe per model family (the per-family table of docs/validation.md).

    python benchmarks/probe_budget.py                       # mlp cnn resnet vit lstm mamba, zo-gd probes
    python benchmarks/probe_budget.py --models mamba --probe-memory 1GB --json
    python benchmarks/probe_budget.py --optimizer zo-adam --markdown

Each family runs in a fresh subprocess (peak RSS is per process): the default model at its default size on
its default data, the trainer's default probe for `--optimizer` at the initial θ (HVP back-end choice
included, as in a run). Reported: `probe_forward_equivalents` (probe wall time / one full-batch forward,
timed in the same process), `probe_peak_bytes` (peak RSS during the probe above the RSS before it, Linux
VmHWM), HVPs, seconds. Goals: ≤ 2 GB and ≤ 150 forward equivalents per family.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

FAMILIES = ("mlp", "cnn", "resnet", "vit", "lstm", "mamba")

_CHILD = """
import json, sys, torch
from eos_probe.bench_probe import measure_probe
from eos_probe.config import TrainConfig
from eos_probe.build import build
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
kw = {"probe_memory": args["probe_memory"]} if args["probe_memory"] else {}
setup = build(TrainConfig(model=args["model"], optimizer=args["optimizer"], device="cpu", **kw))
res = measure_probe(setup, probe_specs=args["probe"])
res.update(model=args["model"], optimizer=args["optimizer"], n_params=setup.objective.dim,
           n_train=int(setup.objective.x.shape[0]), threads=torch.get_num_threads())
print("RESULT " + json.dumps(res))
"""


def measure_family(model: str, optimizer: str = "zo-gd", probe_memory: str | None = None,
                   probe: list[str] | None = None, threads: int | None = None, timeout: float = 3600) -> dict:
    """One family's probe cost and memory, measured in a fresh Python process."""
    args = {"model": model, "optimizer": optimizer, "probe_memory": probe_memory, "probe": probe,
            "threads": threads}
    try:
        p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "optimizer": optimizer, "error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": model, "optimizer": optimizer, "error": f"exit {p.returncode}: {tail}"}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | params | probe (metrics) | peak memory | forward equivalents | HVPs | seconds | back end |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['n_params']:,} | {', '.join(r['probe_metrics'])} "
                     f"| {r['probe_peak_bytes'] / 2**20:,.0f} MB | {r['probe_forward_equivalents']:,.0f} "
                     f"| {r['probe_hvps']} | {r['probe_seconds']:.1f} | {r['probe_hvp_backend']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(FAMILIES))
    ap.add_argument("--optimizer", default="zo-gd")
    ap.add_argument("--probe-memory", default=None, help="budget, e.g. 2GB (default: the tool's default)")
    ap.add_argument("--probe", default=None, help="comma list of probe metrics (default: the optimizer's default)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per family")
    ap.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    for m in a.models.split(","):
        r = measure_family(m, a.optimizer, a.probe_memory, a.probe.split(",") if a.probe else None, a.threads,
                           a.timeout)
        rows.append(r)
        if not a.json:
            print(json.dumps(r), file=sys.stderr, flush=True)
    if a.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
