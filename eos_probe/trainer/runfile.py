"""One copy's run file: created or resumed, logged to, finished. Its checkpoints are written by
`eos_probe.trainer.checkpointing` in the format of `eos_probe.checkpoint`."""
from __future__ import annotations

import platform
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..config import TrainConfig
from ..errors import CorruptFileError, DivergedError, UserError
from ..optim import Optimizer
from ..presets import preset
from ..store import RunWriter
from ..zo_monitor import COLUMNS as ZO_COLUMNS
from ..zo_monitor import DESCRIPTIONS as ZO_DESCRIPTIONS
from ..zo_monitor import ZOTraceMonitor
from .copies import CopyStack


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device name and thread count, as recorded in a run file's attributes."""
    import h5py
    import numpy

    env = {"eos_probe": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "h5py": h5py.__version__, "python": platform.python_version(), "platform": platform.platform()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine() or "cpu")
    return {"versions": env, "device": f"{device.type}: {name}", "threads": torch.get_num_threads()}


def timing(seconds: float, probe_seconds: float) -> dict[str, float]:
    """The timing attributes a finished, diverged or interrupted run file records."""
    return {"train_seconds": seconds, "probe_seconds": probe_seconds,
            "probe_share": probe_seconds / seconds if seconds > 0 else 0.0}


def zo_attrs(name: str, cfg: TrainConfig) -> dict[str, Any]:
    """The attributes of the ZO-trace monitor's column `name`."""
    adam = preset(cfg.optimizer).preconditioned
    return {"description": ZO_DESCRIPTIONS[name], "window": cfg.zo_trace_window, "mu": cfg.mu,
            "directions": cfg.directions,
            "operator": "H" + (" (the plain Hessian: ZO directions are isotropic in theta-space, "
                               "so not P^-1 H under Adam)" if adam else "")}


def query_mode(opt: Optimizer, obj: Any, theta: torch.Tensor) -> str:
    """How the source evaluates its queries on this objective: batched, loop, or none (first order)."""
    src = opt.source
    if not hasattr(src, "batch_queries"):
        return "none"
    return "batched" if src.batch_queries(obj, theta) else "loop"


@dataclass
class RunFile:
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
    monitor: dict[str, float] | None = None  # the ZO monitor's last row (and its noise s.d.), for the probe schedule

    def open(self, attrs: dict[str, Any], *, overwrite: bool) -> None:
        """Create the run file with its attributes (`initial_loss` among them)."""
        self.loss0 = attrs["initial_loss"]
        self.writer = RunWriter.create(self.path, attrs, overwrite=overwrite)

    def resume(self, start: int, device: torch.device) -> None:
        """Reopen the run file, keeping its rows before step `start`.

        Raises:
            CorruptFileError: the file cannot be read (it is left as it was).
        """
        try:
            self.writer = RunWriter.resume(self.path, start)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise CorruptFileError(f"{self.path}: run file is damaged, cannot resume it ({e}); "
                                   "the file was left as it was") from None
        self.loss0 = float(self.writer.f.attrs["initial_loss"])
        wt = self.writer.f["train/wall_time"]
        self.wall_offset = float(wt[-1]) if wt.shape[0] else 0.0
        self.writer.set_attrs("/", environment(device))

    def declare(self, index: int, zo_monitor: ZOTraceMonitor | None, *, resuming: bool,
                probe_state: dict | None) -> ZOTraceMonitor | None:
        """Declare the /train columns and the probe's, restore the monitor and probe state, start writing.

        Args:
            index: the copy's index (its slot in the monitor).
            zo_monitor: the ZO-trace monitor, None if the run has none.
            resuming: the file was resumed (the monitor continues from its recorded raw samples).
            probe_state: the probe state of the checkpoint resumed from, if any.

        Returns:
            the monitor, or None where a resumed file predates it (its /train rows must stay equally long).
        """
        rid = self.writer.f.attrs.get("run_id")
        self.run_id = rid.decode() if isinstance(rid, bytes) else rid
        for name, dtype in (("step", "i8"), ("loss", "f8"), ("accuracy", "f8"), ("wall_time", "f8")):
            self.writer.declare("train", name, dtype)
        if resuming and zo_monitor is not None and "zo_trace_raw" not in self.writer.f["train"] \
                and self.writer.f["train/step"].shape[0]:
            zo_monitor = None
        if zo_monitor is not None:
            rows = self.writer.f["train/step"].shape[0]
            for name in ZO_COLUMNS:
                self.writer.declare("train", name, "f8", attrs=zo_attrs(name, self.cfg))
                ds = self.writer.f["train"][name]
                if ds.shape[0] < rows:  # a column newer than the resumed file: NaN for the rows before it
                    have = ds.shape[0]
                    ds.resize((rows,))
                    ds[have:] = np.nan
            if resuming:
                zo_monitor.restore(index, self.writer.f["train/step"][()], self.writer.f["train/zo_trace_raw"][()])
        if self.probe is not None:
            self.probe.declare(self.writer)
            if probe_state is not None:
                self.probe.load_state_dict(probe_state)
        self.writer.start()
        return zo_monitor

    def log(self, row: dict[str, Any]) -> None:
        """Append one /train row."""
        self.writer.append("train", row)

    def finish(self, status: str, reason: str, step: int, seconds: float) -> None:
        """Record the run's end (finished, diverged or interrupted) with its timing."""
        self.writer.finish(status, reason, step, timing(seconds, self.probe_seconds))

    def close_quietly(self) -> None:
        """Write what a failing run buffered, if the disk lets us (the failure itself is what gets reported)."""
        close_quietly(self.writer)


def close_quietly(writer: RunWriter) -> None:
    """Close `writer`, ignoring a failing disk (the failure that got us here is what gets reported)."""
    try:
        writer.close()
    except (UserError, OSError):
        pass


def open_files(files: list[RunFile], stack: CopyStack, setup: Any, *, start: int, resuming: bool,
               overwrite: bool, ckpt: dict | None, zo_monitor: ZOTraceMonitor | None,
               log_every: int) -> ZOTraceMonitor | None:
    """Create (or resume) each copy's run file and declare its columns; on failure none is left half-made.

    Args:
        files: the copies, in stack order.
        stack: their parameters (initial θ, or θ restored from `ckpt`).
        setup: the run's `eos_probe.train.Setup` (objective, dataset, device, model source).
        start: the step the run starts at (the checkpoint's when resuming).
        resuming: reopen the files instead of creating them.
        overwrite: replace existing files.
        ckpt: the checkpoint resumed from, if any (its probe state is restored into the copies' probes).
        zo_monitor: the ZO-trace monitor, None if the run has none.
        log_every: the logging interval recorded in the files.

    Returns:
        the monitor, or None where a resumed file predates it.
    """
    obj = setup.objective
    loss0 = obj.evaluate(stack.theta)[0] if not resuming else None
    opened: list[Any] = []
    try:
        for i, f in enumerate(files):
            if not resuming:
                f.path.parent.mkdir(parents=True, exist_ok=True)  # runs/ (other directories exist: _check_out)
                f.open(_new_attrs(f, i, files, setup, stack, loss0, log_every), overwrite=overwrite)
            else:
                f.resume(start, setup.device)
            opened.append(f.writer)
            zo_monitor = f.declare(i, zo_monitor, resuming=resuming,
                                   probe_state=ckpt["probe"] if ckpt is not None and "probe" in ckpt else None)
    except BaseException:
        for w in opened:
            w.discard() if not w.started else close_quietly(w)
        raise
    return zo_monitor


def _new_attrs(f: RunFile, i: int, files: list[RunFile], setup: Any, stack: CopyStack, loss0: torch.Tensor,
               log_every: int) -> dict[str, Any]:
    """The attributes of a new run file for copy i."""
    obj = setup.objective
    attrs = {"config": f.cfg.to_dict(), "seed": f.cfg.seed, "loss_convention": obj.loss_spec.convention,
             "optimizer_config": f.optimizer.config(), "dataset": setup.dataset.meta,
             "n_params": obj.dim, "n_train": int(setup.dataset.x_train.shape[0]),
             "initial_loss": float(loss0[i] if stack.stacked else loss0), "log_every": log_every,
             "microbatch_used": obj.microbatch or 0, "query_mode": query_mode(stack.opt, obj, stack.theta),
             "run_id": uuid.uuid4().hex, **environment(setup.device)}
    if setup.model_source:
        attrs["model_source"] = setup.model_source
    if getattr(setup, "init_from", None):  # θ_0 came from another run's final checkpoint (eos_probe.tasks)
        attrs["init_from"] = setup.init_from
    if stack.stacked:
        attrs["sweep"] = {"copies": [str(x.path) for x in files], "index": i}
    return attrs
