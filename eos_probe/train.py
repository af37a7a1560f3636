"""The one full-batch training loop, for every model and optimizer.

Per step t (θ_t = parameters before update t):
  checkpoint θ_t (at step 0, after a step with a probe, every 5 minutes, every `checkpoint_every` if set) →
  log loss/accuracy of θ_t (every `log_every`) → probe θ_t (every `probe_every`) → update θ_t → θ_{t+1}.
The final θ_T is logged, probed (when due) and checkpointed, so `--resume --steps T'` can extend a run.
Every random draw is seeded from (seed, step, purpose), so probing or resuming never changes the trajectory.

The same loop trains K ≥ 1 copies: a sweep over lr/momentum (`train_sweep`) stacks θ as (K, d), draws one
direction per query for all copies (as K separate runs of one seed would) and gives each copy its own run
file, probe and checkpoint; a copy that diverges is recorded in its file and dropped from the stack.

This module validates a config once, builds its run (`eos_probe.build`) and assembles the loop from the parts
in `eos_probe.trainer` (the stacked copies, their run files, the hooks and the checkpoint policy).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .build import Setup, assemble, default_threads, optimizer_for
from .checkpoint import checkpoint_path, load_checkpoint
from .config import TrainConfig, log_interval, validate
from .errors import CorruptFileError, DivergedError, UserError
from .interrupt import Guard
from .models.plugins import model_factory
from .presets import preset
from .probe import build_probe
from .provenance import check_unchanged, sha256_file
from .reading import open_run
from .store import check_writable, crash_point
from .trainer.checkpointing import CheckpointHook, CheckpointPolicy
from .trainer.copies import CopyStack
from .trainer.hooks import (DivergenceHook, InterruptHook, LogHook, ProbeHook, ProgressHook, ScheduleHook,
                            StepContext, TrackHook, progress_bar)
from .trainer.loop import run_loop
from .trainer.price import probe_price_line
from .trainer.runfile import RunFile, open_files
from .trainer.tasks import TaskHook
from .zo_monitor import ZOTraceMonitor

@dataclass
class RunResult:
    """What one copy's `train` call ended with.

    `steps_done` is the run's total (its last step, counted from step 0 even after a resume);
    `session_steps` the steps this call trained, over which `seconds` and `steps_per_second` are measured.
    `regression`: float targets, so `final_accuracy` is NaN and meaningless.
    """

    path: Path
    status: str  # finished | diverged
    steps_done: int
    final_loss: float
    final_accuracy: float
    seconds: float
    probe_seconds: float
    reason: str = ""
    error: DivergedError | None = None
    session_steps: int | None = None  # None: the whole run (no resume)
    regression: bool = False

    def __post_init__(self) -> None:
        if self.session_steps is None:
            self.session_steps = self.steps_done

    @property
    def resumed(self) -> bool:
        """Whether this call continued a run that had already trained some steps."""
        return self.session_steps != self.steps_done

    @property
    def steps_per_second(self) -> float:
        return self.session_steps / self.seconds if self.seconds > 0 else float("nan")

    @property
    def probe_share(self) -> float:
        """Fraction of the wall time spent in the probe."""
        return self.probe_seconds / self.seconds if self.seconds > 0 else 0.0


def default_out(cfg: TrainConfig) -> Path:
    lr = cfg.lr if cfg.lr is not None else preset(cfg.optimizer).lr
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
    if resume is not None:
        path = Path(resume)
        cfg, ckpt = _resume_point(path, steps, restart)
    else:
        validate(cfg)
        path = Path(cfg.out) if cfg.out else default_out(cfg)
        _check_out(cfg, path, overwrite)
    (result,) = _train([cfg], [path], overwrite=overwrite, resume_ckpt=ckpt, resuming=resume is not None,
                       progress=progress, probe=probe)
    if result.status == "diverged":
        raise result.error
    return result


def _resume_point(path: Path, steps: int | None, restart: bool) -> tuple[TrainConfig, dict | None]:
    """The validated config of a run file to resume (its steps extended to `steps`) and its checkpoint (None:
    start again from step 0).

    Raises:
        CorruptFileError: the file cannot be read.
        UserError: no config, no checkpoint for logged rows without `restart`, `steps` fewer than done or
            given to a task sequence, or a changed plug-in.
    """
    ckpt = None
    try:
        with open_run(path) as f:
            if "config" not in f.attrs:
                raise UserError(f"{path} has no recorded config; it cannot be resumed")
            stored = json.loads(f.attrs["config"])
            recorded = {k: json.loads(f.attrs[k]) for k in ("model_source", "dataset") if k in f.attrs}
            run_id = f.attrs.get("run_id")
            threads = f.attrs.get("threads")  # the run's thread count: a resume keeps it (bits depend on it)
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
    if steps is not None and stored.get("tasks"):
        raise UserError(f"{path} trains a task sequence: its task_steps fix its length, so --steps cannot "
                        "change it; start a run with init_from to train further")
    if steps is not None:
        done = int(ckpt["step"]) if ckpt else 0
        if steps < done:
            raise UserError(f"--steps {steps} is fewer than the {done} steps {path} has already done")
        stored["steps"] = steps
    if stored.get("threads") is None and threads is not None:
        stored["threads"] = int(threads)
    cfg = validate(TrainConfig(**stored))
    _check_plugins_unchanged(cfg, recorded)
    return cfg, ckpt


def _check_plugins_unchanged(cfg: TrainConfig, recorded: dict[str, Any]) -> None:
    """A resumed run must see the same plug-in model file and .npz data as when it started."""
    if "model_source" in recorded:
        check_unchanged(recorded["model_source"], model_factory(cfg.model)[1], "model")
    data = recorded.get("dataset") or {}
    if isinstance(data, dict) and data.get("sha256") and data.get("path"):
        if not Path(data["path"]).is_file():
            raise UserError(f"data file {data['path']} of this run no longer exists; it cannot be resumed")
        check_unchanged(data, {"sha256": sha256_file(data["path"]), "path": data["path"]}, "data file")


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
            c = replace(cfg, lr=lr, momentum=mom, out=None)  # validated once, by train_sweep
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


def _train(cfgs: list[TrainConfig], paths: list[Path], *, overwrite: bool, resume_ckpt: dict | None,
           resuming: bool, progress: bool, probe: Any) -> list[RunResult]:
    """The one training loop, for K ≥ 1 copies. K = 1 keeps θ of shape (d,); K > 1 stacks (K, d).

    SIGINT/SIGTERM (handlers installed for the run, main thread only) stop it at a consistent point:
    every copy is checkpointed at that step, its file marked `interrupted`, and `RunInterrupted` raised.
    """
    old_threads = torch.get_num_threads()
    try:
        with Guard() as guard:
            return _train_guarded(cfgs, paths, overwrite=overwrite, resume_ckpt=resume_ckpt, resuming=resuming,
                                  progress=progress, probe=probe, guard=guard)
    finally:
        torch.set_num_threads(old_threads)


def _train_guarded(cfgs: list[TrainConfig], paths: list[Path], *, overwrite: bool, resume_ckpt: dict | None,
                   resuming: bool, progress: bool, probe: Any, guard: Guard) -> list[RunResult]:
    """Build the copies, open their files and run the loop with the standard hooks (see `_train`). The configs
    are validated already: they are assembled, not validated again."""
    setup = assemble(cfgs[0])
    obj = setup.objective
    if setup.device.type == "cpu":
        torch.set_num_threads(cfgs[0].threads or default_threads())
    optimizers = [setup.optimizer] if len(cfgs) == 1 else \
        [optimizer_for(c, setup.model, setup.schedule.progress) for c in cfgs]
    files = [RunFile(replace(setup.config, lr=c.lr, momentum=c.momentum, out=c.out), p, o)
             for c, p, o in zip(cfgs, paths, optimizers)]
    cfg = files[0].cfg
    stack = CopyStack(setup.theta, optimizers)
    log_every = log_interval(cfg, stack.opt.zeroth_order)
    start = stack.restore(resume_ckpt) if resume_ckpt is not None else 0
    tasks = TaskHook(setup.tasks, start=start, resuming=resuming) if setup.tasks is not None else None
    if tasks is not None:
        tasks.prepare(obj)  # the first step's task: the initial loss and the probe see its data
    # the free curvature monitor: central-difference ZO runs, sampled on every logged step (L(θ) known there)
    zo_monitor = (ZOTraceMonitor(cfg.zo_trace_window) if stack.opt.zeroth_order
                  and getattr(stack.opt.source, "difference", "") == "central" else None)
    for i, f in enumerate(files):  # a bad --probe spec fails here, before any file or directory is made
        f.probe = _default_probe(f.cfg, setup, f.optimizer, stack.view(i)[0]) if probe == "default" else probe
    zo_monitor = open_files(files, stack, setup, start=start, resuming=resuming, overwrite=overwrite,
                            ckpt=resume_ckpt, zo_monitor=zo_monitor, log_every=log_every)
    if progress and files[0].probe is not None:  # the price before the first probe is paid
        print(probe_price_line(files[0].probe, obj, stack.theta, cfg, stack.opt, log_every))
    bar = progress_bar(progress, start, setup.schedule.total)
    policy = CheckpointPolicy.for_run(cfg, from_checkpoint=resume_ckpt is not None, resuming=resuming)
    hooks = [InterruptHook(guard), *([tasks] if tasks is not None else []), CheckpointHook(policy),
             LogHook(log_every, zo_monitor), ProbeHook(guard, bar.write if progress else None, log_every),
             TrackHook(guard), ScheduleHook(), DivergenceHook(), ProgressHook(bar)]
    ctx = StepContext(stack, files, obj, start, setup.schedule.total, time.perf_counter())
    run_loop(ctx, hooks)
    return _results(files, start, ctx.steps, time.perf_counter() - ctx.t0, regression=obj.loss_spec.regression)


def _results(files: list[RunFile], start: int, steps: int, seconds: float,
             regression: bool = False) -> list[RunResult]:
    """Mark the surviving copies finished; one `RunResult` per copy, in order (steps counted from 0,
    those of this session from `start`)."""
    results = []
    for f in files:
        if f.error is None:
            f.finish("finished", "", steps, seconds)
            results.append(RunResult(f.path, "finished", steps, f.last[0], f.last[1], seconds, f.probe_seconds,
                                     session_steps=steps - start, regression=regression))
        else:
            results.append(RunResult(f.path, "diverged", f.error.step, f.last[0], f.last[1], seconds,
                                     f.probe_seconds, f.error.reason, f.error, session_steps=f.error.step - start,
                                     regression=regression))
    crash_point("finished")
    return results


def _default_probe(cfg: TrainConfig, setup: Setup, optimizer: Any = None, theta: torch.Tensor | None = None) -> Any:
    """The probe the config asks for (its default metrics unless `probe` lists others), for one copy."""
    return build_probe(cfg, objective=setup.objective, optimizer=optimizer or setup.optimizer,
                       theta=setup.theta if theta is None else theta)


