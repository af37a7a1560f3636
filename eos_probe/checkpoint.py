"""Checkpoint files: where they live, how they are written (atomically) and read. The store layer.

A checkpoint (`<run>.h5.ckpt`) holds θ, the optimizer state, the probe state, the config and the run id at a
step whose rows are all in the run file. The trainer writes it (`eos_probe.trainer.checkpointing`); resuming,
`init_from` (`load_init`) and `eos-probe edge` (`eos_probe.sweep.edge`) read it, so it sits here, below all
of them, and imports nothing of the trainer.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .reading import open_run
from .store import crash_point, fsync_path


def checkpoint_path(run_path: str | Path) -> Path:
    """The resume checkpoint next to a run file: `<run_path>.ckpt`."""
    return Path(str(run_path) + ".ckpt")


def kept_checkpoint_path(run_path: str | Path, step: int) -> Path:
    """A checkpoint kept for `eos-probe edge` (`--keep-checkpoints-every`): `<run_path>.step<step>.ckpt`."""
    return Path(f"{run_path}.step{int(step)}.ckpt")


def save_checkpoint(path: Path, step: int, theta: torch.Tensor, state: dict, extra: dict) -> None:
    """Write a checkpoint atomically: temp file, fsync, rename — a crash mid-write leaves the previous one usable.

    Args:
        path: where the checkpoint goes.
        step: the step whose θ it holds (θ before update `step`).
        theta: the parameters, shape (d,).
        state: the optimizer state, {part: {name: tensor}}.
        extra: further entries (config, run id, probe state).

    Raises:
        OSError, RuntimeError: the write failed (disk full, file-size limit, ...).
    """
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
    """Read a checkpoint written by `save_checkpoint`.

    Raises:
        UserError: there is no such file, or it cannot be read.
    """
    if not path.exists():
        raise UserError(f"no checkpoint {path} next to the run file; it cannot be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a damaged file
        raise UserError(f"checkpoint {path} is damaged and cannot be read ({type(e).__name__})") from None


def load_init(path: str | Path, dim: int, like: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """θ of a finished run's final checkpoint (`init_from`), as a tensor like `like`, and its provenance.

    Raises:
        UserError: no such run file or checkpoint, a run that did not finish, or a θ of another size.
    """
    path = Path(path)
    with open_run(path) as f:
        status = f.attrs.get("status", "interrupted")
        status = status.decode() if isinstance(status, bytes) else str(status)
        stop = int(f.attrs.get("stop_step", -1))
        run_id = f.attrs.get("run_id")
    if status != "finished":
        raise UserError(f"init_from {path}: that run is {status}, not finished; finish it (--resume) first")
    ckpt = load_checkpoint(checkpoint_path(path))
    run_id = run_id.decode() if isinstance(run_id, bytes) else run_id
    if int(ckpt["step"]) != stop or (run_id is not None and ckpt.get("run_id", run_id) != run_id):
        raise UserError(f"init_from {path}: its checkpoint is not the run's final one (step {int(ckpt['step'])}, "
                        f"run ended at {stop})")
    theta = ckpt["theta"]
    if theta.dim() != 1 or theta.shape[0] != dim:
        raise UserError(f"init_from {path}: its θ has {theta.numel()} parameters, this model has {dim}; "
                        "use the same model and classes")
    info = {"path": str(path), "run_id": run_id, "step": int(ckpt["step"])}
    return theta.to(device=like.device, dtype=like.dtype).clone(), info

