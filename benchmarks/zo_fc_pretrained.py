"""ZO-FC on a pretrained body: four ways to train adapters and head, three seeds each (docs/continual.md).

    python benchmarks/zo_fc_pretrained.py [--seeds 0,1,2] [--out-dir runs/zo-fc-pre] [--init runs/zo-fc-pretrain.h5]

Starts every run from the pre-training checkpoint (recipes/zo-fc-pretrain.toml; trained here first if missing)
on the class-incremental sequence of recipes/zo-fc.toml and reports, as mean ± sd over seeds: average and last
accuracy and forgetting F as the run file's /tasks summary has them, plasticity (accuracy on each task right
after its own training, mean over tasks: the table's diagonal), the
retention loss's Tr(H_r) at the end (`flatness` probe, Hutchinson, 32 probes) and the peak resident memory of a
training process without the probe (20 steps per task; measured per child with os.wait4; the process's fixed
part is in it, so differences are what a method adds). Methods: FO (recipes/zo-fc-fo.toml), naive ZO
(zo-fc-zo), ZO-FC (zo-fc) and ZO on the head only (zo-fc-head).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"FO (adapter and head exact)": "zo-fc-fo", "naive ZO (adapter and head two-point)": "zo-fc-zo",
           "ZO-FC (ZO adapter, exact head)": "zo-fc", "ZO on the head only": "zo-fc-head"}


def run(args: list[str]) -> int:
    """Run `eos-probe` with `args`; that child's own peak RSS in bytes (os.wait4: per process, Linux KiB)."""
    p = subprocess.Popen([str(Path(sys.executable).with_name("eos-probe")), *args])
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"eos-probe {' '.join(args)} failed with exit status {p.returncode}")
    return usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out-dir", default="runs/zo-fc-pre")
    ap.add_argument("--init", default="runs/zo-fc-pretrain.h5")
    ap.add_argument("--figure", help="also draw each method's accuracy table (mean over seeds) to this file")
    ap.add_argument("--reuse", action="store_true", help="keep run files that exist (only the memory runs rerun)")
    args = ap.parse_args()
    import eos_probe

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.init).exists():
        run(["train", "--config", str(ROOT / "recipes/zo-fc-pretrain.toml"), "--out", args.init, "--quiet"])
    rows = {}
    for name, recipe in METHODS.items():
        vals: dict[str, list] = {k: [] for k in ("avg", "last", "F", "plast", "trH", "rss", "table")}
        for seed in [int(s) for s in args.seeds.split(",")]:
            path = out / f"{recipe}-seed{seed}.h5"
            if not (args.reuse and path.exists()):
                run(["train", "--config", str(ROOT / f"recipes/{recipe}.toml"), "--init-from", args.init,
                     "--seed", str(seed), "--probe", "flatness:n_probes=32", "--probe-every", "300", "--out",
                     str(path), "--quiet", "--overwrite"])
            r = eos_probe.load(path)
            a, at = _table(path), r.tasks.attrs  # the run's own summary: average, last accuracy, forgetting
            vals["avg"].append(float(at["average_accuracy"]))
            vals["last"].append(float(at["last_accuracy"]))
            vals["F"].append(float(at["forgetting"]))
            vals["plast"].append(float(np.mean(np.diag(a))))
            vals["table"].append(a)
            p = r.probe.dropna(subset=["flatness_trace"])
            vals["trH"].append(float(p["flatness_trace"].iloc[-1]) if len(p) else float("nan"))
        # memory of training alone: the same method without the probe (whose Hutchinson products would set the
        # peak), 20 steps per task, one process per method
        rss = run(["train", "--config", str(ROOT / f"recipes/{recipe}.toml"), "--init-from", args.init,
                   "--probe", "none", "--task-steps", "20,20", "--out", str(out / f"{recipe}-memory.h5"), "--quiet",
                   "--overwrite"])
        vals["rss"].append(rss / 2**20)
        rows[name] = vals
        print(f"{name}: done", file=sys.stderr, flush=True)
    if args.figure:
        figure(rows, args.figure)
    print("| method | average acc. | last acc. | forgetting F | plasticity | Tr(H_r) at the end "
          "| peak RSS of training (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, v in rows.items():
        def cell(k: str, f: str = "{:.3f}", v=v) -> str:
            sd = np.std(v[k], ddof=1) if len(v[k]) > 1 else 0.0
            return f"{f.format(np.mean(v[k]))} ± {f.format(sd)}"

        print(f"| {name} | {cell('avg')} | {cell('last')} | {cell('F')} | {cell('plast')} | {cell('trH', '{:.3g}')} | "
              f"{np.mean(v['rss']):.0f} |")
    print(f"\n{len(args.seeds.split(','))} seeds; per-run files in {out}", file=sys.stderr)


def figure(rows: dict[str, dict[str, list]], out: str) -> None:
    """One accuracy table a[t, j] per method, the mean over seeds, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eos_probe.plot.forgetting import draw_accuracy

    fig, axes = plt.subplots(1, len(rows), figsize=(3.3 * len(rows), 3.2), layout="constrained", squeeze=False)
    for ax, (name, v) in zip(axes[0], rows.items()):
        draw_accuracy(ax, np.mean(v["table"], axis=0), "")
        ax.set_title(f"{name}\n(mean of {len(v['table'])} seeds)", fontsize=8)
    fig.savefig(out, dpi=150)
    plt.close(fig)


def _table(path: Path) -> np.ndarray:
    """The accuracy table a[t, j] (after task t, on task j) of a run file."""
    from eos_probe.plot.forgetting import accuracy_table

    a = accuracy_table(path)
    if a is None:
        raise SystemExit(f"{path}: no /tasks/accuracy table")
    return a


if __name__ == "__main__":
    main()
