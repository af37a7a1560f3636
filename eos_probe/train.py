"""The one full-batch training loop, for every model and optimizer.

Per step t (θ_t = parameters before update t):
  checkpoint θ_t (at step 0, after a step with a probe, every 5 minutes, every `checkpoint_every` if set) →
  log loss/accuracy of θ_t (every `log_every`) → probe θ_t (every `probe_every`) → update θ_t → θ_{t+1}.
The final θ_T is logged, probed (when due) and checkpointed, so `--resume --steps T'` can extend a run.
Every random draw is seeded from (seed, step, purpose), so probing or resuming never changes the trajectory.

The same loop trains K ≥ 1 copies: a sweep over lr/momentum (`train_sweep`) stacks θ as (K, d), draws one
direction per query for all copies (as K separate runs of one seed would) and gives each copy its own run
file, probe and checkpoint; a copy that diverges is recorded in its file and dropped from the stack.
"""
from __future__ import annotations

import io
import json
import math
import os
import platform
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import DEFAULT_LR, TrainConfig, validate
from .errors import CorruptFileError, DivergedError, UserError
from .objective import Objective
from .optim import Optimizer, make_optimizer
from .interrupt import Guard, RunInterrupted
from .store import RunWriter, check_writable, crash_point, fsync_path, open_run, write_error_message
from .store import RunWriter, check_writable, fsync_path, open_run
from .zo_monitor import COLUMNS as ZO_COLUMNS
from .zo_monitor import DESCRIPTIONS as ZO_DESCRIPTIONS
from .zo_monitor import ZOTraceMonitor


@dataclass
class Setup:
    """Everything a run is made of, built from a config."""

    config: TrainConfig
    device: torch.device
    dataset: Any
    model: torch.nn.Module
    objective: Objective
    optimizer: Optimizer
    theta: torch.Tensor
    model_source: dict | None = None  # provenance of a plug-in model (eos_probe.plugins), None for built-ins


@dataclass
class RunResult:
    path: Path
    status: str  # finished | diverged
    steps_done: int
    final_loss: float
    final_accuracy: float
    seconds: float
    probe_seconds: float
    reason: str = ""
    error: DivergedError | None = None

    @property
    def steps_per_second(self) -> float:
        return self.steps_done / self.seconds if self.seconds > 0 else float("nan")

    @property
    def probe_share(self) -> float:
        """Fraction of the wall time spent in the probe."""
        return self.probe_seconds / self.seconds if self.seconds > 0 else 0.0


def resolve_device(name: str) -> torch.device:
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


def build(cfg: TrainConfig) -> Setup:
    """Data, model, objective and optimizer for a config (validates what it touches)."""
    from .data import load_dataset
    from .models import MODELS, build_model

    from .plugins import build_plugin_model, is_model_plugin

    validate(cfg)
    plugin = cfg.model not in MODELS and is_model_plugin(cfg.model)
    if cfg.model not in MODELS and not plugin:
        raise UserError(f"unknown model {cfg.model!r}; choose one of {', '.join(sorted(MODELS))}, "
                        "path/to/file.py:factory or package.module:factory")
    kind = None if plugin else MODELS[cfg.model].kind  # a plug-in takes whatever data it is given
    data_name = cfg.data or ("sort" if kind == "sequence" else "fashion4")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        exact_float32()
    dtype = getattr(torch, cfg.dtype)
    ds = load_dataset(data_name, data_dir=cfg.data_dir, n_per_class=cfg.n_per_class, classes=cfg.classes,
                      seed=cfg.seed, **cfg.data_args)
    if kind is not None and ds.kind != kind:
        raise UserError(f"model {cfg.model!r} takes {kind} data but dataset {data_name!r} is {ds.kind} data")
    source = None
    if plugin:
        model, source = build_plugin_model(cfg.model, input_shape=tuple(ds.input_shape), num_outputs=ds.num_classes,
                                           seed=cfg.seed, dtype=dtype, **cfg.model_args)
        model = model.to(device)
    else:
        model = build_model(cfg.model, input_shape=tuple(ds.input_shape), num_classes=ds.num_classes,
                            seed=cfg.seed, dtype=dtype, **cfg.model_args).to(device)
    x = ds.x_train.to(device=device, dtype=dtype if ds.x_train.is_floating_point() else None)
    y = ds.y_train.to(device)
    # no --microbatch: chunk by a shape-only rule (faster on CPU, same chunks on every run of a config)
    objective = Objective(model, x, y, loss=cfg.loss, num_classes=ds.num_classes,
                          microbatch=cfg.microbatch or "auto")
    if cfg.probe_memory is not None:
        from .budget import parse_bytes

        objective.probe_memory = parse_bytes(cfg.probe_memory)
    optimizer = _make_optimizer(cfg)
    if hasattr(optimizer.source, "check_dim"):  # CoCD: B > d, m >= d are user errors known only now
        optimizer.source.check_dim(objective.dim)
    return Setup(replace(cfg, data=data_name), device, ds, model, objective, optimizer, objective.initial_theta(),
                 source)


def environment(device: torch.device) -> dict[str, Any]:
    import h5py
    import numpy

    env = {"eos_probe": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "h5py": h5py.__version__, "python": platform.python_version(), "platform": platform.platform()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine() or "cpu")
    return {"versions": env, "device": f"{device.type}: {name}", "threads": torch.get_num_threads()}


#: the most work (seconds) a kill may cost: a checkpoint is written at the first step boundary after this long
#: (besides one after every probe, one every --checkpoint-every steps if given, and one at the end)
CHECKPOINT_SECONDS = 300.0


def checkpoint_path(run_path: str | Path) -> Path:
    return Path(str(run_path) + ".ckpt")


def save_checkpoint(path: Path, step: int, theta: torch.Tensor, state: dict, extra: dict) -> None:
    """Write atomically: temp file, fsync, rename — a crash mid-write leaves the previous checkpoint usable."""
    tmp = path.with_name(path.name + ".tmp")
    payload = {"step": step, "theta": theta.detach().cpu(),
               "state": {k: {n: t.detach().cpu() for n, t in v.items()} for k, v in state.items()},
               **extra}
    buf = io.BytesIO()
    torch.save(payload, buf)  # serialised in memory: a failing write is then an OSError with its errno
    with open(tmp, "wb") as fh:
        fh.write(buf.getbuffer())
    fsync_path(tmp)
    crash_point("checkpoint")  # the new checkpoint written, not yet renamed
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"no checkpoint {path} next to the run file; it cannot be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a damaged file
        raise UserError(f"checkpoint {path} is damaged and cannot be read ({type(e).__name__})") from None


def default_out(cfg: TrainConfig) -> Path:
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
    return Path("runs") / f"{_model_stem(cfg.model)}-{cfg.optimizer}-lr{lr:g}-s{cfg.seed}.h5"


def _model_stem(model: str) -> str:
    """A file-name-safe model name: path/to/net.py:build -> net.build (a plug-in spec has / and :)."""
    if "/" not in model and ":" not in model and "\\" not in model:
        return model
    target, _, attr = model.rpartition(":") if ":" in model else (model, "", "")
    stem = Path(target).name.removesuffix(".py")
    return ".".join(x for x in (stem, attr) if x)


def train(cfg: TrainConfig | None, *, overwrite: bool = False, resume: str | Path | None = None,
          steps: int | None = None, progress: bool = True, probe: Any = "default",
          restart: bool = False) -> RunResult:
    """Train a run (or continue one with `resume`) and write its HDF5 file; returns a summary.

    With `resume`, the run's recorded config is used (`cfg` is ignored) and `steps` may extend it; the
    run continues from its last checkpoint. A run file without a (matching) checkpoint that has logged
    nothing yet starts again from step 0 (everything is seeded, so that is the same run); one that has
    logged steps is refused unless `restart` (its logged work would be recomputed). Raises
    `DivergedError` (after recording the reason in the file) if the loss blows up, and `RunInterrupted`
    (after checkpointing) on SIGINT/SIGTERM.
    """
    ckpt = None
    resuming = resume is not None
    if resuming:
        path = Path(resume)
        try:
            with open_run(path) as f:
                if "config" not in f.attrs:
                    raise UserError(f"{path} has no recorded config; it cannot be resumed")
                stored = json.loads(f.attrs["config"])
                recorded = {k: json.loads(f.attrs[k]) for k in ("model_source", "dataset") if k in f.attrs}
                run_id = f.attrs.get("run_id")
                logged = max((f[g]["step"].shape[0] for g in ("train", "probe") if g in f and "step" in f[g]),
                             default=0)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise CorruptFileError(f"{path}: run file is damaged, cannot resume it ({e})") from None
        if checkpoint_path(path).exists():
            ckpt = load_checkpoint(checkpoint_path(path))
            if run_id is not None and ckpt.get("run_id", run_id) != run_id:
                ckpt = None  # left by an earlier run of the same name (killed before this one's first)
        if ckpt is None and logged and not restart:
            raise UserError(f"{path} has no checkpoint to continue from, so its {logged} logged rows would be "
                            "recomputed from step 0; pass --restart to do that")
        if steps is not None:
            done = int(ckpt["step"]) if ckpt else 0
            if steps < done:
                raise UserError(f"--steps {steps} is fewer than the {done} steps {path} has already done")
            stored["steps"] = steps
        cfg = TrainConfig(**stored)
        _check_plugins_unchanged(cfg, recorded)
    else:
        validate(cfg)
        path = Path(cfg.out) if cfg.out else default_out(cfg)
        _check_out(cfg, path, overwrite)
    (result,) = _train([cfg], [path], overwrite=overwrite, resume_ckpt=ckpt, resuming=resuming,
                       progress=progress, probe=probe)
    if result.status == "diverged":
        raise result.error
    return result


def _check_plugins_unchanged(cfg: TrainConfig, recorded: dict[str, Any]) -> None:
    """A resumed run must see the same plug-in model file and .npz data as when it started."""
    from .plugins import _sha256, check_unchanged, model_factory

    if "model_source" in recorded:
        check_unchanged(recorded["model_source"], model_factory(cfg.model)[1], "model")
    data = recorded.get("dataset") or {}
    if isinstance(data, dict) and data.get("sha256") and data.get("path"):
        if not Path(data["path"]).is_file():
            raise UserError(f"data file {data['path']} of this run no longer exists; it cannot be resumed")
        check_unchanged(data, {"sha256": _sha256(data["path"]), "path": data["path"]}, "data file")


#: the hyper-parameters an in-process sweep may vary between its copies
SWEEP_FIELDS = ("lr", "momentum")


def sweep_configs(cfg: TrainConfig, lrs: list[float] | None = None,
                  momenta: list[float] | None = None) -> list[TrainConfig]:
    """The configs of a sweep: every combination of `lrs` × `momenta` (None = the value of `cfg`).

    Each copy writes its own file, named from `cfg.out` (or the default name) by inserting the swept
    values before the suffix: runs/x.h5 → runs/x-lr0.001.h5, runs/x-lr0.001-m0.9.h5.
    """
    validate(cfg)
    lr_values = list(lrs) if lrs else [cfg.lr]
    mom_values = list(momenta) if momenta else [cfg.momentum]
    for name, values in (("lr", lr_values), ("momentum", mom_values)):
        if len(set(values)) != len(values):
            raise UserError(f"--{name} lists a value twice ({values}); give each value once")
    base = Path(cfg.out) if cfg.out else None
    out = []
    for lr in lr_values:
        for mom in mom_values:
            c = validate(replace(cfg, lr=lr, momentum=mom, out=None))
            tag = (f"-lr{lr:g}" if lrs and len(lr_values) > 1 else "") + \
                  (f"-m{mom:g}" if momenta and len(mom_values) > 1 else "")
            p = default_out(c) if base is None else base
            if tag and base is not None:
                p = base.with_name(f"{base.stem}{tag}{base.suffix or '.h5'}")
            elif tag and momenta and len(mom_values) > 1:  # the default name carries lr, not momentum
                p = p.with_name(f"{p.stem}{f'-m{mom:g}'}{p.suffix}")
            out.append(replace(c, out=str(p)))
    return out


def train_sweep(cfgs: list[TrainConfig], *, overwrite: bool = False, progress: bool = True,
                probe: Any = "default") -> list[RunResult]:
    """Train K copies that differ only in lr/momentum together in one process (θ stacked as (K, d)).

    Each copy sees the same data, initialisation and direction stream as a separate run of its config
    (one u per query is drawn and shared by all copies) and writes its own run file (its config is that
    of the equivalent single run, so each file can be resumed alone). A copy that diverges is recorded
    as diverged in its file and dropped; the others go on. Returns one `RunResult` per copy, in order.
    """
    if not cfgs:
        raise UserError("a sweep needs at least one configuration")
    for c in cfgs:
        validate(c)
    ref = {k: v for k, v in cfgs[0].to_dict().items() if k not in (*SWEEP_FIELDS, "out")}
    for c in cfgs[1:]:
        diff = sorted(k for k, v in c.to_dict().items() if k not in (*SWEEP_FIELDS, "out") and ref[k] != v)
        if diff:
            raise UserError(f"the copies of a sweep may differ only in {', '.join(SWEEP_FIELDS)}; "
                            f"they also differ in {', '.join(diff)}")
    paths = [Path(c.out) if c.out else default_out(c) for c in cfgs]
    if len(set(paths)) != len(paths):
        raise UserError("two copies of the sweep would write the same file; give each copy its own --out")
    for c, p in zip(cfgs, paths):
        _check_out(c, p, overwrite)
    if len(cfgs) > 1 and probe not in ("default", None):
        raise UserError("a sweep builds one probe per copy; pass probe='default' or None")
    return _train(list(cfgs), paths, overwrite=overwrite, resume_ckpt=None, resuming=False,
                  progress=progress, probe=probe)


#: the tool's own output directory: made on demand (other directories must exist, so a typo is not silently
#: turned into a new tree)
RUNS_DIR = Path("runs")


def _check_out(cfg: TrainConfig, path: Path, overwrite: bool) -> None:
    if (cfg.out is None or path.parent == RUNS_DIR) and not path.parent.exists():
        check_writable(path.parent, overwrite=False)  # runs/ is made once the run is known to be valid
    else:
        check_writable(path, overwrite)


@dataclass
class _Copy:
    """One trained copy of a (possibly one-copy) run: its config, file, writer, probe and bookkeeping."""

    cfg: TrainConfig
    path: Path
    optimizer: Optimizer  # scalar hyper-parameters: what the probe and the file describe
    writer: Any = None
    probe: Any = None
    loss0: float = float("nan")
    wall_offset: float = 0.0
    last: tuple[float, float] = (float("nan"), float("nan"))
    probe_seconds: float = 0.0
    error: DivergedError | None = None
    run_id: str | None = None  # also in the checkpoint: a checkpoint left by another run is never used


def _train(cfgs: list[TrainConfig], paths: list[Path], *, overwrite: bool, resume_ckpt: dict | None,
           resuming: bool, progress: bool, probe: Any) -> list[RunResult]:
    """The one training loop, for K ≥ 1 copies. K = 1 keeps θ of shape (d,); K > 1 stacks (K, d).

    SIGINT/SIGTERM (handlers installed for the run, main thread only) stop it at a consistent point:
    every copy is checkpointed at that step, its file marked `interrupted`, and `RunInterrupted` raised.
    """
    with Guard() as guard:
        return _train_guarded(cfgs, paths, overwrite=overwrite, resume_ckpt=resume_ckpt, resuming=resuming,
                              progress=progress, probe=probe, guard=guard)


def _train_guarded(cfgs: list[TrainConfig], paths: list[Path], *, overwrite: bool, resume_ckpt: dict | None,
                   resuming: bool, progress: bool, probe: Any, guard: Guard) -> list[RunResult]:
    setup = build(cfgs[0])
    obj = setup.objective
    stacked = len(cfgs) > 1
    copies = [_Copy(replace(setup.config, lr=c.lr, momentum=c.momentum, out=c.out), p,
                    setup.optimizer if not stacked else _make_optimizer(c))
              for c, p in zip(cfgs, paths)]
    for c in copies:
        c.path.parent.mkdir(parents=True, exist_ok=True)
    cfg = copies[0].cfg
    if stacked:
        theta = setup.theta.expand(len(copies), -1).clone()
        opt = _stack_optimizers([c.optimizer for c in copies])
    else:
        theta, opt = setup.theta, setup.optimizer
    state = opt.init(theta)
    log_every = cfg.log_every or (1 if not opt.zeroth_order else 10)
    start = 0
    ckpt = resume_ckpt
    if ckpt is not None:
        start = int(ckpt["step"])
        theta.copy_(ckpt["theta"].to(theta.device))
        for part, tensors in ckpt["state"].items():
            for name, t in tensors.items():
                state[part][name].copy_(t.to(theta.device))

    alive = list(range(len(copies)))  # copy index of each row of θ

    def view(i: int) -> tuple[torch.Tensor, dict]:
        """θ and optimizer state of copy alive[i] (views: they follow the updates)."""
        if not stacked:
            return theta, state
        return theta[i], {part: {n: t[i] for n, t in v.items()} for part, v in state.items()}

    loss0_all = obj.evaluate(theta)[0] if not resuming else None
    # the free curvature monitor: central-difference ZO runs, sampled on every logged step (L(θ) known there)
    zo_monitor = (ZOTraceMonitor(cfg.zo_trace_window)
                  if opt.zeroth_order and getattr(opt.source, "difference", "") == "central" else None)
    writers_open: list[Any] = []
    try:
        for i, c in enumerate(copies):
            th_i, _ = view(i)
            c.probe = _default_probe(c.cfg, setup, c.optimizer, th_i) if probe == "default" else probe
            if not resuming:
                c.loss0 = float(loss0_all[i] if stacked else loss0_all)
                attrs = {"config": c.cfg.to_dict(), "seed": c.cfg.seed,
                         "loss_convention": obj.loss_spec.convention,
                         "optimizer_config": c.optimizer.config(), "dataset": setup.dataset.meta,
                         "n_params": obj.dim, "n_train": int(setup.dataset.x_train.shape[0]),
                         "initial_loss": c.loss0, "log_every": log_every, "microbatch_used": obj.microbatch or 0,
                         "query_mode": _query_mode(opt, obj, theta), "run_id": uuid.uuid4().hex,
                         **environment(setup.device)}
                if setup.model_source:
                    attrs["model_source"] = setup.model_source
                if stacked:
                    attrs["sweep"] = {"copies": [str(x.path) for x in copies], "index": i}
                c.writer = RunWriter.create(c.path, attrs, overwrite=overwrite)
            else:
                try:
                    c.writer = RunWriter.resume(c.path, start)
                except (OSError, RuntimeError, KeyError, ValueError) as e:
                    raise CorruptFileError(f"{c.path}: run file is damaged, cannot resume it ({e}); "
                                           "the file was left as it was") from None
                c.loss0 = float(c.writer.f.attrs["initial_loss"])
                wt = c.writer.f["train/wall_time"]
                c.wall_offset = float(wt[-1]) if wt.shape[0] else 0.0
                c.writer.set_attrs("/", environment(setup.device))
            writers_open.append(c.writer)
            rid = c.writer.f.attrs.get("run_id")
            c.run_id = rid.decode() if isinstance(rid, bytes) else rid
            for name, dtype in (("step", "i8"), ("loss", "f8"), ("accuracy", "f8"), ("wall_time", "f8")):
                c.writer.declare("train", name, dtype)
            if resuming and zo_monitor is not None and "zo_trace_raw" not in c.writer.f["train"] \
                    and c.writer.f["train/step"].shape[0]:
                zo_monitor = None  # a file from before the monitor: its /train rows must stay equally long
            if zo_monitor is not None:
                for name in ZO_COLUMNS:
                    c.writer.declare("train", name, "f8", attrs=_zo_attrs(name, c.cfg))
                if resuming:
                    zo_monitor.restore(i, c.writer.f["train/zo_trace_raw"][()])
            if c.probe is not None:
                c.probe.declare(c.writer)
                if ckpt is not None and "probe" in ckpt:
                    c.probe.load_state_dict(ckpt["probe"])
            c.writer.start()
    except BaseException:
        for w in writers_open:
            w.discard() if not w.started else _close_quietly(w)
        raise

    def checkpoint(step: int, i: int, probe_state: dict | None = None, kept: bool = False) -> None:
        c = copies[alive[i]]
        c.writer.flush()  # the file holds every row before `step` when the checkpoint names `step`
        extra = {"config": c.cfg.to_dict(), "run_id": c.run_id}
        if c.probe is not None:
            extra["probe"] = probe_state if probe_state is not None else c.probe.state_dict()
        th_i, st_i = view(i)
        ck = Path(f"{c.path}.step{step}.ckpt") if kept else checkpoint_path(c.path)
        try:
            save_checkpoint(ck, step, th_i, st_i, extra)
        except (OSError, RuntimeError) as e:  # disk full, file-size limit, ... (torch.save: RuntimeError)
            ck.with_name(ck.name + ".tmp").unlink(missing_ok=True)
            raise UserError(write_error_message(ck, e) + "; the previous checkpoint is kept") from None

    def drop(rows: list[int]) -> None:
        """Remove diverged copies from the stack; the others continue unchanged."""
        nonlocal theta, state, opt
        keep = [i for i in range(len(alive)) if i not in rows]
        for i in sorted(rows, reverse=True):
            del alive[i]
        if not alive:
            return
        idx = torch.tensor(keep, device=theta.device)
        theta = theta.index_select(0, idx)
        state = {part: {n: t.index_select(0, idx) for n, t in v.items()} for part, v in state.items()}
        last = opt.last_direction
        opt = _stack_optimizers([copies[j].optimizer for j in alive], source=opt.source)
        opt.last_direction = None if last is None else last.index_select(0, idx)

    bar = _progress(progress, start, cfg.steps)
    cost_said = False
    t0 = time.perf_counter()
    step = start
    last_checkpoint = time.monotonic()
    probed = False  # a probe ran in the step before: checkpoint now, so that no probe is ever lost
    pre_probe: dict[int, dict] = {}  # copy -> probe state before its probe at this step
    try:
        for step in range(start, cfg.steps + 1):
            pre_probe = {}
            guard.check()  # SIGINT/SIGTERM received since the last step: stop here (checkpoint below)
            fixed = cfg.checkpoint_every is not None and step % cfg.checkpoint_every == 0
            if (step == start and resume_ckpt is None) or step != start and (
                    fixed or probed or time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS):
                for i in range(len(alive)):
                    checkpoint(step, i)
                last_checkpoint = time.monotonic()
            probed = False
            keep = cfg.keep_checkpoints_every
            if keep and step % keep == 0 and (step != start or not resuming):  # θ_step for `eos-probe edge`
                for i in range(len(alive)):
                    checkpoint(step, i, kept=True)
            final = step == cfg.steps
            log_due = step % log_every == 0 or final
            metrics = None
            if log_due and (final or not opt.source.evaluates_loss):
                metrics = obj.evaluate(theta)
            for i, j in enumerate(alive):
                c = copies[j]
                if c.probe is not None and c.probe.due(step, final):
                    tp = time.perf_counter()
                    th_i, st_i = view(i)
                    if stacked and opt.last_direction is not None:
                        c.optimizer.last_direction = opt.last_direction[i]
                    pre_probe[j] = c.probe.state_dict()  # what a checkpoint at this step holds
                    crash_point("probe")
                    with guard.interruptible():  # a probe may take minutes: a signal cuts it short
                        prow = c.probe.run(step=step, theta=th_i, state=st_i, optimizer=c.optimizer, objective=obj,
                                           writer=guard.shielded(c.writer), config=c.cfg)
                    c.writer.flush()
                    c.probe_seconds += time.perf_counter() - tp
                    probed = True
                    if progress and not cost_said:
                        cost_said = True
                        bar.write(_probe_cost_line(prow, time.perf_counter() - tp, obj, th_i, cfg, opt,
                                                   log_every, len(alive)))
            zo_sample = None
            if not final:
                info = opt.step(obj, theta, state, step)
                if log_due and metrics is None:
                    metrics = (info["loss"], info["accuracy"])
                if log_due and zo_monitor is not None:
                    zo_sample = opt.source.curvature_sample(info, metrics[0])
            if log_due:
                losses = metrics[0].tolist() if stacked else [float(metrics[0])]
                accs = metrics[1].tolist() if stacked else [float(metrics[1])]
                wall = time.perf_counter() - t0
                diverged = []
                for i, j in enumerate(alive):
                    c = copies[j]
                    c.last = (losses[i], accs[i])
                    row = {"step": step, "loss": losses[i], "accuracy": accs[i], "wall_time": c.wall_offset + wall}
                    if zo_monitor is not None:
                        sample = math.nan if zo_sample is None else float(zo_sample[i] if stacked else zo_sample)
                        row.update(zo_monitor.update(j, sample))
                    c.writer.append("train", row)
                    try:
                        _check_divergence(losses[i], c.loss0, c.cfg.divergence_factor, step)
                    except DivergedError as e:
                        c.error = e
                        c.writer.finish("diverged", e.reason, e.step, _timing(wall, c.probe_seconds))
                        diverged.append(i)
                if diverged:
                    drop(diverged)
                    if not alive:
                        break
                first = copies[alive[0]].last
                bar.set_postfix_str(f"loss {first[0]:.4g} acc {first[1]:.3f}" +
                                    (f" ({len(alive)} copies)" if stacked else ""), refresh=False)
            if not final:
                bar.update(1)
        for i in range(len(alive)):
            checkpoint(cfg.steps, i)
    except RunInterrupted as e:
        # θ is θ_step (signals wait for step boundaries; a cut-short probe never changes θ): checkpoint
        # here with each probe's state from before this step's probe, which is redone on resume
        bar.close()
        e.step, e.paths = step, [copies[j].path for j in alive]
        wall = time.perf_counter() - t0
        for i, j in enumerate(alive):
            checkpoint(step, i, pre_probe.get(j))
            copies[j].writer.finish("interrupted", e.args[0], step, _timing(wall, copies[j].probe_seconds))
        raise
    except BaseException:
        bar.close()
        for j in alive:  # keep what was measured; each run stays resumable from its last checkpoint
            _close_quietly(copies[j].writer)
        raise
    bar.close()
    seconds = time.perf_counter() - t0
    results = []
    for j, c in enumerate(copies):
        if c.error is None:
            c.writer.finish("finished", "", cfg.steps, _timing(seconds, c.probe_seconds))
            results.append(RunResult(c.path, "finished", cfg.steps - start, c.last[0], c.last[1], seconds,
                                     c.probe_seconds))
        else:
            results.append(RunResult(c.path, "diverged", c.error.step - start, c.last[0], c.last[1], seconds,
                                     c.probe_seconds, c.error.reason, c.error))
    crash_point("finished")
    return results


def _close_quietly(writer: RunWriter) -> None:
    """Write what a failing run buffered, if the disk lets us (the failure itself is what gets reported)."""
    try:
        writer.close()
    except (UserError, OSError):
        pass
def _probe_cost_line(row: dict, seconds: float, obj: Objective, theta: torch.Tensor, cfg: TrainConfig,
                     opt: Optimizer, log_every: int, copies: int) -> str:
    """One line after the first probe: its cost in full-batch forward passes and the share of the run
    it implies (step cost in forwards: 2q central / q+1 forward ZO, plus the loss log every `log_every`;
    first order counted as 3, a forward+backward)."""
    from .budget import forward_seconds, step_forwards

    fwd = forward_seconds(obj, theta)
    fe = seconds / fwd if fwd > 0 else math.nan
    step = step_forwards(opt, log_every)
    share = fe / (fe + cfg.probe_every * step) if math.isfinite(fe) else math.nan
    nhvp = int(sum(v for k, v in row.items() if k.endswith("_nhvp") and np.ndim(v) == 0 and np.isfinite(v)))
    per = " per copy" if copies > 1 else ""
    return (f"probe cost: one probe = {fe:,.0f} forward passes{per} ({seconds:.1f} s, {nhvp} HVPs); one step = "
            f"{step:.2g} forwards; every {cfg.probe_every} steps -> expected probe share {100 * share:.0f}%")


def _zo_attrs(name: str, cfg: TrainConfig) -> dict[str, Any]:
    adam = cfg.optimizer.removeprefix("zo-") == "adam"
    return {"description": ZO_DESCRIPTIONS[name], "window": cfg.zo_trace_window, "mu": cfg.mu,
            "directions": cfg.directions,
            "operator": "H" + (" (the plain Hessian: ZO directions are isotropic in theta-space, "
                               "so not P^-1 H under Adam)" if adam else "")}


def _timing(seconds: float, probe_seconds: float) -> dict[str, float]:
    return {"train_seconds": seconds, "probe_seconds": probe_seconds,
            "probe_share": probe_seconds / seconds if seconds > 0 else 0.0}


def _query_mode(opt: Optimizer, obj: Objective, theta: torch.Tensor) -> str:
    src = opt.source
    if not hasattr(src, "batch_queries"):
        return "none"
    return "batched" if src.batch_queries(obj, theta) else "loop"


def _make_optimizer(cfg: TrainConfig) -> Optimizer:
    return make_optimizer(cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, momentum_style=cfg.momentum_style,
                          beta2=cfg.beta2, eps=cfg.eps, queries=cfg.queries, mu=cfg.mu,
                          directions=cfg.directions, difference=cfg.difference, seed=cfg.seed,
                          cocd_block=cfg.cocd_block, cocd_gamma=cfg.cocd_gamma, cocd_eps=cfg.cocd_eps,
                          cocd_memory=cfg.cocd_memory, weight_decay=cfg.weight_decay)


def _stack_optimizers(opts: list[Optimizer], source: Any = None) -> Optimizer:
    """One optimizer for stacked copies: the first copy's source (directions shared by all copies, as K
    separate runs of one seed draw them) and the copies' rules stacked row by row."""
    from .optim.rules import stack_rules

    source = source if source is not None else opts[0].source
    if hasattr(source, "shared_directions"):
        source.shared_directions = True
    return Optimizer(opts[0].preset, source, stack_rules([o.rule for o in opts]))


def _check_divergence(loss: float, loss0: float, factor: float, step: int) -> None:
    if not math.isfinite(loss):
        raise DivergedError(f"diverged at step {step}: loss is {loss}", step, "non-finite loss")
    if loss > factor * max(loss0, 1e-12):
        raise DivergedError(f"diverged at step {step}: loss {loss:.4g} exceeds {factor:g} x initial loss {loss0:.4g}",
                            step, f"loss exceeded {factor:g} x initial loss")


def _default_probe(cfg: TrainConfig, setup: Setup, optimizer: Optimizer | None = None,
                   theta: torch.Tensor | None = None):
    try:
        from .probe import build_probe
    except ImportError:  # the probe module is optional for the bare trainer
        return None
    return build_probe(cfg, objective=setup.objective, optimizer=optimizer or setup.optimizer,
                       theta=setup.theta if theta is None else theta)


class _NoBar:
    def write(self, s: str) -> None: ...
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str, refresh: bool = True) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, start: int, total: int):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.05)
