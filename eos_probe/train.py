"""The one full-batch training loop, for every model and optimizer.

Per step t (θ_t = parameters before update t):
  checkpoint θ_t (every `checkpoint_every`) → log loss/accuracy of θ_t (every `log_every`) →
  probe θ_t (every `probe_every`) → update θ_t → θ_{t+1}.
The final θ_T is logged, probed (when due) and checkpointed, so `--resume --steps T'` can extend a run.
Every random draw is seeded from (seed, step, purpose), so probing or resuming never changes the trajectory.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import DEFAULT_LR, TrainConfig, validate
from .errors import CorruptFileError, DivergedError, UserError
from .objective import LOSS_CONVENTIONS, Objective
from .optim import Optimizer, make_optimizer
from .store import RunWriter, check_writable, fsync_path, open_run


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

    @property
    def steps_per_second(self) -> float:
        return self.steps_done / self.seconds if self.seconds > 0 else float("nan")


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

    validate(cfg)
    if cfg.model not in MODELS:
        raise UserError(f"unknown model {cfg.model!r}; choose one of {', '.join(sorted(MODELS))}")
    kind = MODELS[cfg.model].kind
    data_name = cfg.data or ("sort" if kind == "sequence" else "fashion4")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        exact_float32()
    dtype = getattr(torch, cfg.dtype)
    ds = load_dataset(data_name, data_dir=cfg.data_dir, n_per_class=cfg.n_per_class, classes=cfg.classes,
                      seed=cfg.seed, **cfg.data_args)
    if ds.kind != kind:
        raise UserError(f"model {cfg.model!r} takes {kind} data but dataset {data_name!r} is {ds.kind} data")
    model = build_model(cfg.model, input_shape=tuple(ds.input_shape), num_classes=ds.num_classes,
                        seed=cfg.seed, dtype=dtype, **cfg.model_args).to(device)
    x = ds.x_train.to(device=device, dtype=dtype if ds.kind == "image" else None)
    y = ds.y_train.to(device)
    objective = Objective(model, x, y, loss=cfg.loss, num_classes=ds.num_classes, microbatch=cfg.microbatch)
    optimizer = make_optimizer(cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, momentum_style=cfg.momentum_style,
                               beta2=cfg.beta2, eps=cfg.eps, queries=cfg.queries, mu=cfg.mu,
                               directions=cfg.directions, difference=cfg.difference, seed=cfg.seed)
    return Setup(replace(cfg, data=data_name), device, ds, model, objective, optimizer, objective.initial_theta())


def environment(device: torch.device) -> dict[str, Any]:
    import h5py
    import numpy

    env = {"eos_probe": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "h5py": h5py.__version__, "python": platform.python_version(), "platform": platform.platform()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"versions": env, "device": f"{device.type}: {name}", "threads": torch.get_num_threads()}


def checkpoint_path(run_path: str | Path) -> Path:
    return Path(str(run_path) + ".ckpt")


def save_checkpoint(path: Path, step: int, theta: torch.Tensor, state: dict, extra: dict) -> None:
    """Write atomically: temp file, fsync, rename — a crash mid-write leaves the previous checkpoint usable."""
    tmp = path.with_name(path.name + ".tmp")
    payload = {"step": step, "theta": theta.detach().cpu(),
               "state": {k: {n: t.detach().cpu() for n, t in v.items()} for k, v in state.items()},
               **extra}
    torch.save(payload, tmp)
    fsync_path(tmp)
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
    return Path("runs") / f"{cfg.model}-{cfg.optimizer}-lr{lr:g}-s{cfg.seed}.h5"


def train(cfg: TrainConfig | None, *, overwrite: bool = False, resume: str | Path | None = None,
          steps: int | None = None, progress: bool = True, probe: Any = "default") -> RunResult:
    """Train a run (or continue one with `resume`) and write its HDF5 file; returns a summary.

    With `resume`, the run's recorded config is used (`cfg` is ignored) and `steps` may extend it; the
    run continues from its last checkpoint, or from step 0 if it was killed before the first one
    (everything is seeded, so that is the same run). Raises `DivergedError` (after recording the
    reason in the file) if the loss blows up.
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
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise CorruptFileError(f"{path}: run file is damaged, cannot resume it ({e})") from None
        if checkpoint_path(path).exists():
            ckpt = load_checkpoint(checkpoint_path(path))
        if steps is not None:
            done = int(ckpt["step"]) if ckpt else 0
            if steps < done:
                raise UserError(f"--steps {steps} is fewer than the {done} steps {path} has already done")
            stored["steps"] = steps
        cfg = TrainConfig(**stored)
    else:
        validate(cfg)
        path = Path(cfg.out) if cfg.out else default_out(cfg)
        if cfg.out is None and not path.parent.exists():
            check_writable(path.parent, overwrite=False)  # runs/ is made once the run is known to be valid
        else:
            check_writable(path, overwrite)
    setup = build(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = setup.config
    obj, opt, theta = setup.objective, setup.optimizer, setup.theta
    state = opt.init(theta)
    log_every = cfg.log_every or (1 if not opt.zeroth_order else 10)
    start = 0
    if ckpt is not None:
        start = int(ckpt["step"])
        theta.copy_(ckpt["theta"].to(theta.device))
        for part, tensors in ckpt["state"].items():
            for name, t in tensors.items():
                state[part][name].copy_(t.to(theta.device))
    if probe == "default":
        probe = _default_probe(cfg, setup)

    if not resuming:
        loss0 = float(obj.evaluate(theta)[0])
        attrs = {"config": cfg.to_dict(), "seed": cfg.seed, "loss_convention": LOSS_CONVENTIONS[cfg.loss],
                 "optimizer_config": opt.config(), "dataset": setup.dataset.meta, "n_params": obj.dim,
                 "n_train": int(setup.dataset.x_train.shape[0]), "initial_loss": loss0, "log_every": log_every,
                 **environment(setup.device)}
        writer = RunWriter.create(path, attrs, overwrite=overwrite)
        wall_offset = 0.0
    else:
        try:
            writer = RunWriter.resume(path, start)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise CorruptFileError(f"{path}: run file is damaged, cannot resume it ({e}); "
                                   "the file was left as it was") from None
        loss0 = float(writer.f.attrs["initial_loss"])
        wt = writer.f["train/wall_time"]
        wall_offset = float(wt[-1]) if wt.shape[0] else 0.0
        writer.set_attrs("/", environment(setup.device))
    for name, dtype in (("step", "i8"), ("loss", "f8"), ("accuracy", "f8"), ("wall_time", "f8")):
        writer.declare("train", name, dtype)
    if probe is not None:
        probe.declare(writer)
        if ckpt is not None and "probe" in ckpt:
            probe.load_state_dict(ckpt["probe"])
    writer.start_swmr()

    ckpt_file = checkpoint_path(path)

    def checkpoint(step: int) -> None:
        writer.flush()  # the file holds every row before `step` when the checkpoint names `step`
        extra = {"config": cfg.to_dict()}
        if probe is not None:
            extra["probe"] = probe.state_dict()
        save_checkpoint(ckpt_file, step, theta, state, extra)

    bar = _progress(progress, start, cfg.steps)
    t0 = time.perf_counter()
    probe_seconds = 0.0
    last = (float("nan"), float("nan"))
    step = start
    try:
        for step in range(start, cfg.steps + 1):
            if step % cfg.checkpoint_every == 0 and step != start:
                checkpoint(step)
            final = step == cfg.steps
            log_due = step % log_every == 0 or final
            metrics = None
            if log_due and (final or not opt.source.evaluates_loss):
                metrics = obj.evaluate(theta)
            if probe is not None and probe.due(step, final):
                tp = time.perf_counter()
                probe.run(step=step, theta=theta, state=state, optimizer=opt, objective=obj, writer=writer,
                          config=cfg)
                writer.flush()
                probe_seconds += time.perf_counter() - tp
            if not final:
                info = opt.step(obj, theta, state, step)
                if log_due and metrics is None:
                    metrics = (info["loss"], info["accuracy"])
            if log_due:
                loss, acc = float(metrics[0]), float(metrics[1])
                last = (loss, acc)
                writer.append("train", {"step": step, "loss": loss, "accuracy": acc,
                                        "wall_time": wall_offset + time.perf_counter() - t0})
                _check_divergence(loss, loss0, cfg.divergence_factor, step)
                bar.set_postfix_str(f"loss {loss:.4g} acc {acc:.3f}", refresh=False)
            if not final:
                bar.update(1)
        checkpoint(cfg.steps)
    except DivergedError as e:
        bar.close()
        writer.finish("diverged", e.reason, e.step)
        raise
    except BaseException:
        bar.close()
        writer.close()  # keep what was measured; the run stays resumable from its last checkpoint
        raise
    bar.close()
    seconds = time.perf_counter() - t0
    writer.finish("finished", "", cfg.steps, {"train_seconds": seconds, "probe_seconds": probe_seconds})
    return RunResult(path, "finished", cfg.steps - start, last[0], last[1], seconds, probe_seconds)


def _check_divergence(loss: float, loss0: float, factor: float, step: int) -> None:
    if not math.isfinite(loss):
        raise DivergedError(f"diverged at step {step}: loss is {loss}", step, "non-finite loss")
    if loss > factor * max(loss0, 1e-12):
        raise DivergedError(f"diverged at step {step}: loss {loss:.4g} exceeds {factor:g} x initial loss {loss0:.4g}",
                            step, f"loss exceeded {factor:g} x initial loss")


def _default_probe(cfg: TrainConfig, setup: Setup):
    try:
        from .probe import build_probe
    except ImportError:  # the probe module is optional for the bare trainer
        return None
    return build_probe(cfg, setup)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str, refresh: bool = True) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, start: int, total: int):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.05)
