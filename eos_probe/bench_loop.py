"""`eos-probe bench --only loop`: the trainer's per-step cost against a plain PyTorch loop doing the same work.

Both run in one process, interleaved (trainer, plain, trainer, plain, …), on the same model, data and thread
count, with no probe, so the ratio is what the tool's loop adds: hooks, logging to HDF5, checkpoints, the
objective's functional call. The plain loops are what a researcher would write:

* GD: ``loss = criterion(model(x), y); loss.backward(); p -= lr·p.grad``, reading the loss every step;
* ZO-GD: MeZO's in-place perturbation — seed a generator, θ ± μz in place, two forwards, restore, step along
  z regenerated from the same seed — reading the loss at θ every `log_every` steps (one more forward), as the
  trainer logs it.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, log_interval
from .presets import preset
from .build import build
from .train import train


def _plain_gd(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, lr: float, steps: int) -> float:
    params = [p for p in module.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = criterion(module(x), y)
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.sub_(lr * p.grad)
                p.grad = None
        float(loss.detach())
    return time.perf_counter() - t0


def _plain_zo(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, lr: float, steps: int,
              mu: float, log_every: int) -> float:
    params = [p for p in module.parameters() if p.requires_grad]
    gen = torch.Generator()

    def perturb(seed: int, scale: float) -> None:
        gen.manual_seed(seed)
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype), alpha=scale)

    t0 = time.perf_counter()
    with torch.inference_mode():
        for t in range(steps):
            if t % log_every == 0:
                float(criterion(module(x), y))
            perturb(t, mu)
            lp = criterion(module(x), y)
            perturb(t, -2 * mu)
            lm = criterion(module(x), y)
            perturb(t, mu)
            proj = float((lp - lm) / (2 * mu))
            perturb(t, -lr * proj)
    return time.perf_counter() - t0


def loop_overhead(cfg: TrainConfig, *, steps: int | None = None, rounds: int = 3,
                  seconds: float = 2.0) -> dict[str, Any]:
    """Per-step wall time of `eos_probe.train.train` (no probe) against the plain loops, GD and ZO-GD.

    `steps` per timed run defaults to what the plain loop does in about `seconds` (20 to 1,000): a tiny model
    gets 1,000, the default CNN a few dozen, so the item takes seconds on any model rather than an hour.
    Returns, per optimizer, the trainer's and the plain loop's ms/step (medians over `rounds`) and their ratio
    (median of the per-round ratios)."""
    out: dict[str, Any] = {}
    for opt in ("gd", "zo-gd"):
        # the trainer runs on the plain loop's thread count (its own default follows the machine's load)
        c = replace(cfg, optimizer=opt, lr=1e-3 if opt == "zo-gd" else 1e-2, steps=steps or 1000, probe=[],
                    log_every=None, threads=torch.get_num_threads())
        setup = build(c)
        module, obj = setup.model, setup.objective
        criterion = _criterion(obj)
        x, y = obj.x, obj.y
        log_every = log_interval(c, preset(opt).zeroth_order)
        if steps is None:  # size the runs from a few warm plain steps
            plain_step = _plain_gd if opt == "gd" else (
                lambda m, x_, y_, cr, lr, n: _plain_zo(m, x_, y_, cr, lr, n, c.mu, log_every))
            plain_step(module, x, y, criterion, c.lr, 2)
            per = plain_step(module, x, y, criterion, c.lr, 3) / 3
            c = replace(c, steps=int(min(1000, max(20, seconds / max(per, 1e-9)))))
        c = replace(c, probe_every=c.steps)
        out["loop_steps" if opt == "gd" else "loop_steps_zo_gd"] = c.steps
        n = c.steps
        mine, plain = [], []
        with tempfile.TemporaryDirectory() as d:
            for r in range(rounds + 1):  # one warm-up round
                res = train(replace(c, out=str(Path(d) / f"r{r}.h5")), overwrite=True, progress=False)
                p = (_plain_gd(module, x, y, criterion, c.lr, n) if opt == "gd" else
                     _plain_zo(module, x, y, criterion, c.lr, n, c.mu, log_every))
                if r:
                    mine.append(res.seconds / n)
                    plain.append(p / n)
        key = opt.replace("-", "_")
        out[f"loop_{key}_ms"] = 1e3 * statistics.median(mine)
        out[f"plain_{key}_ms"] = 1e3 * statistics.median(plain)
        out[f"loop_over_plain_{key}"] = statistics.median(a / b for a, b in zip(mine, plain))
    return out


def _criterion(obj):
    """The objective's loss as a plain torch criterion on (output, target) (mean over examples)."""
    def crit(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return obj.loss_spec.per_term(f, y).sum() / obj.n_terms
    return crit
