"""The HDF5 run file: one self-describing file per run (layout in README.md, "The run file").

Series live in groups (`/train`, `/probe`, `/spectra/<name>`); each such group has a `step` dataset
and every dataset in it has one row per entry of `step`. Datasets are chunked and appendable; rows are
buffered in memory and written in blocks (at every probe, checkpoint and at least every
`flush_seconds`), after which the file is flushed. While training, the file is in SWMR mode so a
reader (`eos_probe.load`) can watch a live run and never sees a half-written row.

HDF5 cannot add objects in SWMR mode, so every series is declared before `start_swmr()`; the final
status (finished / diverged and why) is written as attributes after SWMR mode is closed. A run with no
`status` attribute was interrupted (or is still running).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import CorruptFileError, UserError

SCHEMA_VERSION = 1
SERIES_GROUPS = ("train", "probe")  # plus every group under /spectra
_CHUNK_ROWS = 256


def _series_groups(f: h5py.File) -> list[str]:
    names = [g for g in SERIES_GROUPS if g in f]
    if "spectra" in f:
        names += [f"spectra/{k}" for k in f["spectra"]]
    return names


class RunWriter:
    """Appends series to a run file. Use `create` for a new run, `resume` to continue one."""

    def __init__(self, path: Path, f: h5py.File, flush_seconds: float = 5.0) -> None:
        self.path = path
        self.f = f
        self.flush_seconds = flush_seconds
        self._pending: dict[str, dict[str, list]] = {}
        self._last_flush = time.monotonic()
        self.swmr = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, attrs: dict[str, Any], *, overwrite: bool = False,
               flush_seconds: float = 5.0) -> "RunWriter":
        """Create a new run file; refuse to replace an existing one unless `overwrite`."""
        path = Path(path)
        check_writable(path, overwrite)
        tmp = path.with_name(path.name + ".tmp")
        f = h5py.File(tmp, "w", libver="latest")
        for k, v in attrs.items():
            f.attrs[k] = _attr(v)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["resumed"] = 0
        f.create_group("train")
        f.flush()
        f.close()
        fsync_path(tmp)
        os.replace(tmp, path)  # an existing run is only replaced once the new header is complete
        return cls(path, h5py.File(path, "r+", libver="latest"), flush_seconds)

    @classmethod
    def resume(cls, path: str | Path, upto_step: int, *, flush_seconds: float = 5.0) -> "RunWriter":
        """Reopen a run to continue from `upto_step`: rows with step ≥ upto_step are dropped (they will be
        recomputed identically). The file is rewritten to a temporary name and renamed over the old one,
        so a crash here leaves the old file intact (this also clears the SWMR flag of a killed writer)."""
        path = Path(path)
        src = open_run(path)
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w", libver="latest") as dst:
            for k, v in src.attrs.items():
                if k not in ("status", "stop_reason", "stop_step"):
                    dst.attrs[k] = v
            dst.attrs["resumed"] = int(src.attrs.get("resumed", 0)) + 1
            for extra in ("bands",):
                if extra in src:
                    src.copy(src[extra], dst, name=extra)
            for g in _series_groups(src):
                steps = src[g]["step"][()]
                keep = steps < upto_step
                grp = dst.require_group(g)
                for k, v in src[g].attrs.items():
                    grp.attrs[k] = v
                for name, ds in src[g].items():
                    data = ds[()][keep[: ds.shape[0]]] if ds.shape[0] == steps.shape[0] else ds[()][:0]
                    out = grp.create_dataset(name, data=data, maxshape=(None, *ds.shape[1:]),
                                             chunks=(_CHUNK_ROWS, *ds.shape[1:]), dtype=ds.dtype)
                    for k, v in ds.attrs.items():
                        out.attrs[k] = v
            dst.flush()
        src.close()
        fsync_path(tmp)
        os.replace(tmp, path)
        return cls(path, h5py.File(path, "r+", libver="latest"), flush_seconds)

    # ------------------------------------------------------------------ declaring series
    def declare(self, group: str, name: str, dtype: Any = "f8", shape: tuple[int, ...] = (),
                attrs: dict[str, Any] | None = None) -> None:
        """Create an appendable dataset group/name with rows of `shape` (no-op if it exists)."""
        if self.swmr:
            raise RuntimeError(f"cannot declare {group}/{name} after SWMR mode started")
        grp = self.f.require_group(group)
        if name not in grp:
            ds = grp.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape),
                                    chunks=(_CHUNK_ROWS if not shape else max(1, 4096 // max(1, int(np.prod(shape)))),
                                            *shape), dtype=dtype)
            for k, v in (attrs or {}).items():
                ds.attrs[k] = _attr(v)

    def set_attrs(self, obj: str, attrs: dict[str, Any]) -> None:
        if self.swmr:
            raise RuntimeError("cannot write attributes in SWMR mode")
        target = self.f.require_group(obj) if obj not in ("", "/") else self.f
        for k, v in attrs.items():
            target.attrs[k] = _attr(v)

    def start_swmr(self) -> None:
        self.f.flush()
        self.f.swmr_mode = True
        self.swmr = True

    # ------------------------------------------------------------------ writing
    def append(self, group: str, row: dict[str, Any]) -> None:
        """Buffer one row of `group` (every declared dataset of the group must be given)."""
        buf = self._pending.setdefault(group, {})
        for k, v in row.items():
            buf.setdefault(k, []).append(v)
        if time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows; `step` is written last so a reader never sees a step without its row."""
        for group, cols in self._pending.items():
            if not cols:
                continue
            grp = self.f[group]
            names = sorted(cols, key=lambda n: n == "step")
            for name in names:
                values = np.asarray(cols[name])
                ds = grp[name]
                n0 = ds.shape[0]
                ds.resize(n0 + len(values), axis=0)
                ds[n0:] = values
                ds.flush() if self.swmr else None
        self._pending = {}
        self.f.flush()
        self._last_flush = time.monotonic()

    def finish(self, status: str, reason: str = "", step: int | None = None,
               attrs: dict[str, Any] | None = None) -> None:
        """Flush, leave SWMR mode and record how the run ended."""
        self.flush()
        self.f.close()
        with _open_for_update(self.path) as f:
            f.attrs["status"] = status
            f.attrs["stop_reason"] = reason
            if step is not None:
                f.attrs["stop_step"] = int(step)
            for k, v in (attrs or {}).items():
                f.attrs[k] = _attr(v)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.f.close()


def _open_for_update(path: Path, wait_seconds: float = 60.0) -> h5py.File:
    """Open r+ once no reader holds the file: a reader (a notebook watching the run, `eos-probe plot`)
    keeps a shared lock for the moment it reads, which makes an exclusive open fail with EAGAIN."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.01
    while True:
        try:
            return h5py.File(path, "r+", libver="latest")
        except OSError as e:
            if "lock" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 0.5)


def fsync_path(path: Path) -> None:
    """Force a closed file's bytes to disk (before an atomic rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(path: Path, overwrite: bool) -> None:
    """User errors for an output path we must not or cannot write (checked before any work)."""
    if path.exists() and not overwrite:
        raise UserError(f"output file {path} already exists; pass --overwrite to replace it or --resume to continue it")
    if path.exists() and path.is_dir():
        raise UserError(f"output path {path} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output directory {parent} is not writable")


def _attr(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if v is None:
        return "null"
    return v


def open_run(path: str | Path) -> h5py.File:
    """Open a run file for reading, also while a writer holds it (SWMR) or after a writer was killed.

    Raises one clear `UserError`/`CorruptFileError` for a missing, truncated or foreign file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"run file {path} does not exist")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a run file")
    errors: list[str] = []
    f = None
    # A plain open first: it rejects a truncated file at once, whereas an SWMR open of one succeeds and
    # then retries every metadata read for minutes. A file held by a live (or killed) SWMR writer refuses
    # the plain open (lock / consistency flags); only then is it opened as an SWMR reader.
    for kwargs in ({}, {"swmr": True}):
        try:
            f = h5py.File(path, "r", libver="latest", **kwargs)
            break
        except OSError as e:
            errors.append(str(e))
            if "truncated file" in str(e) or "file signature not found" in str(e):
                break
    if f is None:
        msg = errors[-1].split("(")[0].strip() if errors else "unknown error"
        detail = errors[-1][errors[-1].find("(") + 1:].rstrip(")") if "(" in errors[-1] else ""
        raise CorruptFileError(f"{path} cannot be read as HDF5 (truncated or corrupt file?): {detail or msg}")
    if "schema_version" not in f.attrs or "train" not in f:
        f.close()
        raise CorruptFileError(f"{path} is an HDF5 file but not an eos-probe run (no schema_version or /train)")
    return f


def load(path: str | Path):
    """Load a run file into a `Run` (see `eos_probe.run.Run`)."""
    from .run import Run

    return Run.from_file(path)
