"""Step-cost benchmark behind `eos-probe bench`, for several models, plus whole-trainer sweep throughput.

    python benchmarks/bench_step.py                       # cnn and vit on the default device
    python benchmarks/bench_step.py --models cnn --device cuda --trainer-steps 200 --json-out gpu.json
    python benchmarks/bench_step.py --markdown            # rows for the speed table (docs/validation.md §11)

Every ratio is measured side by side in one process (see `eos_probe.bench`). `--trainer-steps N` also times
the real trainer (HDF5 files, logging, no probe): one `--lr a,b,c` sweep against the same three runs one
after another, N steps each — the end-to-end throughput figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from eos_probe.bench import format_table, run_bench
from eos_probe.config import TrainConfig
from eos_probe.presets import preset
from eos_probe.train import sweep_configs, train, train_sweep


def trainer_sweep_speedup(model: str, device: str, steps: int, copies: int = 3, rounds: int = 1,
                          optimizer: str = "zo-gd") -> dict:
    """Wall time of K sequential `train` runs over that of one K-copy `train_sweep` (whole trainer)."""
    lrs = [preset(optimizer).lr * (k + 1) / copies for k in range(copies)]  # at or below the stable default
    ratios, seq_s, sweep_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            base = TrainConfig(model=model, optimizer=optimizer, steps=steps, device=device, probe=[],
                               checkpoint_every=10**9, out=f"{tmp}/sweep{r}.h5")
            t0 = time.perf_counter()
            for lr in lrs:
                train(TrainConfig(**{**base.to_dict(), "lr": lr, "out": f"{tmp}/single{r}-{lr}.h5"}), progress=False)
            seq = time.perf_counter() - t0
            t0 = time.perf_counter()
            train_sweep(sweep_configs(base, lrs=lrs), progress=False)
            sweep = time.perf_counter() - t0
            ratios.append(seq / sweep)
            seq_s.append(seq)
            sweep_s.append(sweep)
    return {"trainer_sweep_speedup": statistics.median(ratios), "trainer_sequential_s": statistics.median(seq_s),
            "trainer_sweep_s": statistics.median(sweep_s), "trainer_steps": steps, "trainer_copies": copies,
            "trainer_optimizer": optimizer}


def markdown(rows: list[dict]) -> str:
    head = ("| model | device | ZO step / 2 fwd | FO step / fwd+bwd | batched q=8 | sweep ZO K=3 | sweep FO K=3 "
            "| trainer sweep | HVP / grad | micro-batch |\n|" + " --- |" * 10)
    lines = [head]
    for r in rows:
        trainer = f"{r['trainer_sweep_speedup']:.2f}x" if "trainer_sweep_speedup" in r else "–"
        lines.append(f"| {r['model']} | {r['device']} | {r['zo_step_over_two_forwards']:.2f} "
                     f"| {r['fo_step_over_forward_backward']:.2f} | {r['batched_q_speedup']:.2f}x "
                     f"({r['batched_q_auto']}) | {r['sweep_speedup']:.2f}x | {r['sweep_speedup_fo']:.2f}x "
                     f"| {trainer} | {r['hvp_over_grad']:.2f} | {r['microbatch_speedup']:.2f}x ({r['microbatch']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cnn,vit", help="comma list of models")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch intra-op threads")
    ap.add_argument("--trainer-steps", type=int, default=0, help="also time the trainer's sweep (N steps)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/validation.md §11)")
    ap.add_argument("--json-out", help="write all results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        res = run_bench(model, device=args.device, repeats=args.repeats,
                        log=lambda s: print(f"  [{model}] timing {s} ...", file=sys.stderr, flush=True))
        if args.trainer_steps:
            print(f"  [{model}] timing the trainer's sweep ...", file=sys.stderr, flush=True)
            res.update(trainer_sweep_speedup(model, args.device, args.trainer_steps))
        rows.append(res)
        if not args.markdown:
            print(format_table(res))
            if "trainer_sweep_speedup" in res:
                print(f"  trainer: 3 runs x {res['trainer_steps']} steps in {res['trainer_sequential_s']:.1f} s "
                      f"sequentially, {res['trainer_sweep_s']:.1f} s as one sweep: "
                      f"{res['trainer_sweep_speedup']:.2f}x throughput")
            print(flush=True)
    if args.markdown:
        print(markdown(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
