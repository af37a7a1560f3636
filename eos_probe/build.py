"""A run's parts built from a validated config: device, data, model, objective, optimizer, θ_0, task schedule.

`build` is the one path from a config to these parts; `eos_probe.train` trains what it builds, and the bench,
the edge experiment and the calibration build with it too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from .budget import parse_bytes
from .config import TrainConfig, group_tables, optimizer_options, validate
from .data import DATASETS, default_dataset, load_dataset
from .errors import UserError
from .models import make_model, model_kind
from .objective import Objective
from .optim import Optimizer, make_optimizer
from .optim.hybrid import group_specs
from .presets import preset
from .checkpoint import load_init
from .tasks import TaskSchedule, dataset_classes
from .trainer.tasks import TaskData



@dataclass
class Setup:
    """Everything a run is made of, built from a config.

    `model_source` is the provenance of a plug-in model (None for registered ones), `tasks` the task data of
    a task sequence (else None), `schedule` the run's task schedule (one task of `steps` without tasks),
    `init_from` the provenance of θ_0 when `init_from` started it from another run.
    """

    config: TrainConfig
    device: torch.device
    dataset: Any
    model: torch.nn.Module
    objective: Objective
    optimizer: Optimizer
    theta: torch.Tensor
    schedule: TaskSchedule
    model_source: dict | None = None
    tasks: TaskData | None = None
    init_from: dict | None = None


def resolve_device(name: str) -> torch.device:
    """The torch device of `--device` (auto: CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def exact_float32() -> None:
    """Turn off TF32 on CUDA: its ~1e-3 relative precision would swamp μ = 1e-3 finite differences."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def default_threads(cores: int | None = None, busy: float | None = None) -> int:
    """CPU threads for a run: the cores not busy with other work when it starts, at least one.

    Measured (benchmarks/threads.py, 2 cores): on an idle machine two threads beat one at every size, from 1.02×
    (a 6e4 parameters×examples MLP) to 1.9×; beside one busy process two threads ran 2.7–4.4× *slower* than one
    at every size (they wait on each other). Size does not decide it, load does. `busy` defaults to
    :func:`busy_cores`. The count is recorded in the run file (`threads`) and a resume reuses it: bits depend on it.
    """
    cores = cores or usable_cores()
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, cores - int(busy + 0.5)))


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity set where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_BUSY: tuple[float, float] | None = None  # (time.monotonic() of the sample, busy cores): one sample per 30 s


def busy_cores(interval: float = 0.1) -> float:
    """How many of this process's CPUs other work keeps busy now: 1 − idle share of each over `interval` s of
    /proc/stat, summed (this process sleeps meanwhile, so it is not counted). 0 where /proc/stat is missing."""
    global _BUSY
    now = time.monotonic()
    if _BUSY is not None and now - _BUSY[0] < 30.0:
        return _BUSY[1]
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def snap() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *vals = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and (cpus is None or int(name[3:]) in cpus):
                    v = [int(x) for x in vals[:8]]
                    out[int(name[3:])] = (sum(v), v[3] + v[4])  # total, idle + iowait (jiffies)
        return out

    try:
        a = snap()
        time.sleep(interval)
        b = snap()
    except (OSError, ValueError):
        return 0.0
    busy = sum(1.0 - (b[c][1] - a[c][1]) / (b[c][0] - a[c][0]) for c in a if c in b and b[c][0] > a[c][0])
    _BUSY = (now, busy)
    return busy


def optimizer_for(cfg: TrainConfig, model: torch.nn.Module, progress: Callable[[int], float]) -> Optimizer:
    """The optimizer of a validated config: its preset with the config's options (`optimizer_options`).

    Args:
        cfg: a validated training config.
        model: the run's model: RISE's blocks are its parameter tensors, a grouped preset's groups are
            resolved on it.
        progress: step ↦ fraction of the current task done (the task schedule's), for the groups' `until`.
    """
    options = optimizer_options(cfg)
    del options["groups"]  # the tables reach a grouped source resolved into `GroupSpec`s on the model
    extra: dict[str, Any] = {"param_sizes": [t.numel() for t in model.parameters()]}
    if preset(cfg.optimizer).grouped:
        device = next(model.parameters()).device
        extra.update(groups=group_specs(model, group_tables(cfg), device), progress=progress)
    return make_optimizer(cfg.optimizer, lr=cfg.lr, seed=cfg.seed, **options, **extra)


def build(cfg: TrainConfig) -> Setup:
    """Validate `cfg` and build its run (data, model, objective, optimizer, θ_0, task schedule)."""
    return assemble(validate(cfg))


def assemble(cfg: TrainConfig) -> Setup:
    """Build the run of an already validated config (the trainer validates once, then assembles)."""
    kind = model_kind(cfg.model)  # None: a plug-in takes whatever data it is given
    data_name = cfg.data or default_dataset(kind)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        exact_float32()
    dtype = getattr(torch, cfg.dtype)
    schedule = TaskSchedule.from_config(cfg)
    ds = load_dataset(data_name, data_dir=cfg.data_dir, n_per_class=cfg.n_per_class, seed=cfg.seed,
                      classes=dataset_classes(cfg, data_name in DATASETS), **cfg.data_args)
    if kind is not None and ds.kind != kind:
        raise UserError(f"model {cfg.model!r} takes {kind} data but dataset {data_name!r} is {ds.kind} data")
    model, source = make_model(cfg.model, input_shape=tuple(ds.input_shape), num_outputs=ds.num_classes,
                               seed=cfg.seed, dtype=dtype, **cfg.model_args)
    model = model.to(device)
    x = ds.x_train.to(device=device, dtype=dtype if ds.x_train.is_floating_point() else None)
    # no --microbatch: chunk by a shape-only rule (faster on CPU, same chunks on every run of a config)
    objective = Objective(model, x, ds.y_train.to(device), loss=cfg.loss, num_classes=ds.num_classes,
                          microbatch=cfg.microbatch or "auto")
    if cfg.probe_memory is not None:
        objective.probe_memory = parse_bytes(cfg.probe_memory)
    optimizer = optimizer_for(cfg, model, schedule.progress)
    if hasattr(optimizer.source, "check_dim"):  # CoCD: B > d, m >= d are user errors known only now
        optimizer.source.check_dim(objective.dim)
    theta, init = objective.initial_theta(), None
    if cfg.init_from:
        theta, init = load_init(cfg.init_from, objective.dim, theta)
    tasks = TaskData(ds, schedule, device, dtype, bool(cfg.mask_old_logits)) if schedule.active else None
    return Setup(replace(cfg, data=data_name), device, ds, model, objective, optimizer, theta, schedule, source,
                 tasks, init)
