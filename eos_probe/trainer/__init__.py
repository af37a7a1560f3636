"""The training loop's parts: stacked copies, their run files, the per-step hooks and the loop itself.

`eos_probe.train` assembles them (`train`, `train_sweep`); this package never imports it, so the pieces can
be used and tested on their own:

- `copies.CopyStack`: θ of K ≥ 1 copies stacked as (K, d), their optimizer state and the live copies.
- `runfile.RunFile`: one copy's HDF5 run file and checkpoint.
- `hooks`: what happens around each update (interrupts, checkpoints, logging, probes, divergence, progress).
- `loop.run_loop`: the loop, driven by a list of hooks.
"""
