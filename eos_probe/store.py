"""The HDF5 run file: one self-describing file per run (layout in README.md, "The run file").

Series live in groups (`/train`, `/probe`, `/spectra/<name>`); each such group has a `step` dataset
and every dataset in it has one row per entry of `step`. Datasets are chunked and appendable; rows are
buffered in memory and written in blocks (at every probe, checkpoint and at least every `flush_seconds`).

The file at the run's path is never open for writing: each block is applied to an in-memory copy of the
file, whose bytes are written to `RUN.h5.tmp`, fsynced and renamed over the run file (copy-on-write). So the
file is a complete, closed HDF5 file at every instant — a reader (`eos_probe.load`, plain
`h5py.File(path, "r")`, a notebook watching a live run) needs no SWMR mode and no lock, and a writer killed
at any moment (even mid-write) leaves the previous version intact (at worst a stale `RUN.h5.tmp`). HDF5
itself never writes to disk, so a full disk is a plain OSError from one Python write, never a half-closed
HDF5 handle. The price is reading and writing the file once per block: milliseconds for the few-MB files a
run writes.

The run's final status (finished / diverged / interrupted and why) is written as attributes; a run with no
`status` attribute was killed (or is still running).
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from .errors import UserError
from .reading import SCHEMA_VERSION, open_run

SERIES_GROUPS = ("train", "probe")  # plus every group under /spectra
_CHUNK_ROWS = 256


def _series_groups(f: h5py.File) -> list[str]:
    names = [g for g in SERIES_GROUPS if g in f]
    if "spectra" in f:
        names += [f"spectra/{k}" for k in f["spectra"]]
    return names


class RunWriter:
    """Appends series to a run file. Use `create` for a new run, `resume` to continue one.

    Between `create`/`resume` and `start` the writer sets the file up (declares series, writes attributes)
    on an open temporary copy; `start` publishes it. After that every `flush`/`finish` is one atomic
    replacement of the run file (see the module docstring).
    """

    def __init__(self, path: Path, f: h5py.File | None, flush_seconds: float = 5.0) -> None:
        self.path = path
        self.f = f  # the temporary copy while setting up, None once started
        self.flush_seconds = flush_seconds
        self._pending: dict[str, dict[str, list]] = {}
        self._last_flush = time.monotonic()
        self.started = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, attrs: dict[str, Any], *, overwrite: bool = False,
               flush_seconds: float = 5.0) -> "RunWriter":
        """Create a new run file; refuse to replace an existing one unless `overwrite`.

        The header (attributes, empty /train) is published at once, before any long work, so the file
        exists and reads as an interrupted run from its first instant."""
        path = Path(path)
        check_writable(path, overwrite)
        buf = io.BytesIO()
        with h5py.File(buf, "w", libver="latest") as f:
            for k, v in attrs.items():
                f.attrs[k] = _attr(v)
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["resumed"] = 0
            for name, dtype in (("step", "i8"), ("loss", "f8"), ("accuracy", "f8"), ("wall_time", "f8")):
                f.create_dataset(f"train/{name}", shape=(0,), maxshape=(None,), chunks=(_CHUNK_ROWS,),
                                 dtype=dtype)
        _publish(buf.getvalue(), path)  # an existing run is only replaced once the new header is complete
        return cls(path, _in_memory(buf.getvalue()), flush_seconds)

    @classmethod
    def resume(cls, path: str | Path, upto_step: int, *, flush_seconds: float = 5.0) -> "RunWriter":
        """Reopen a run to continue from `upto_step`: rows with step ≥ upto_step are dropped (they will be
        recomputed identically). The trimmed copy replaces the run file only at `start`, so a crash before
        that leaves the old file as it was."""
        path = Path(path)
        src = open_run(path)
        try:
            dst = _in_memory(None)
            for k, v in src.attrs.items():
                if k not in ("status", "stop_reason", "stop_step"):
                    dst.attrs[k] = v
            dst.attrs["resumed"] = int(src.attrs.get("resumed", 0)) + 1
            for extra in ("bands", "tasks"):  # whole tables (`put`): kept; their writer resets what it redoes
                if extra in src:
                    src.copy(src[extra], dst, name=extra)
            for g in _series_groups(src):
                if "step" not in src[g]:
                    continue
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
        finally:
            src.close()
        return cls(path, dst, flush_seconds)

    # ------------------------------------------------------------------ declaring series
    def declare(self, group: str, name: str, dtype: Any = "f8", shape: tuple[int, ...] = (),
                attrs: dict[str, Any] | None = None) -> None:
        """Create an appendable dataset group/name with rows of `shape` (no-op if it exists)."""
        if self.started:
            raise RuntimeError(f"cannot declare {group}/{name} after the run started")
        grp = self.f.require_group(group)
        if name not in grp:
            ds = grp.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape),
                                    chunks=(_CHUNK_ROWS if not shape else max(1, 4096 // max(1, int(np.prod(shape)))),
                                            *shape), dtype=dtype)
            for k, v in (attrs or {}).items():
                ds.attrs[k] = _attr(v)

    def set_attrs(self, obj: str, attrs: dict[str, Any]) -> None:
        if self.started:
            raise RuntimeError("cannot write attributes after the run started")
        target = self.f.require_group(obj) if obj not in ("", "/") else self.f
        for k, v in attrs.items():
            target.attrs[k] = _attr(v)

    def put(self, group: str, data: dict[str, Any], attrs: dict[str, Any] | None = None) -> None:
        """Write whole datasets of `group` (replacing them), e.g. a table filled in as the run goes: on the set-up
        copy before `start`, after it as one atomic replacement of the run file (with the buffered rows)."""
        def write(f: h5py.File) -> None:
            grp = f.require_group(group)
            for name, value in data.items():
                arr = np.asarray(value)
                if name in grp and grp[name].shape == arr.shape and grp[name].dtype == arr.dtype:
                    grp[name][...] = arr
                else:
                    if name in grp:
                        del grp[name]
                    grp.create_dataset(name, data=arr)
            for k, v in (attrs or {}).items():
                grp.attrs[k] = _attr(v)

        if self.f is not None:
            write(self.f)
            return
        with self._update() as f:
            self._write_rows(f)
            write(f)
        self._last_flush = time.monotonic()

    def start(self) -> None:
        """Publish the set-up file (atomically); from now on rows are appended by whole-file replacement."""
        if self.started:
            return
        self._write_rows(self.f)
        data = _close_memory(self.f)
        self.f = None
        _publish(data, self.path)
        self.started = True
        self._last_flush = time.monotonic()

    # ------------------------------------------------------------------ writing
    def append(self, group: str, row: dict[str, Any]) -> None:
        """Buffer one row of `group` (every declared dataset of the group must be given)."""
        buf = self._pending.setdefault(group, {})
        for k, v in row.items():
            buf.setdefault(k, []).append(v)
        if time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (one atomic replacement of the run file; nothing to do without rows)."""
        if self.f is not None:
            self._write_rows(self.f)
        elif any(self._pending.values()):
            with self._update() as f:
                self._write_rows(f)
        self._last_flush = time.monotonic()

    def finish(self, status: str, reason: str = "", step: int | None = None,
               attrs: dict[str, Any] | None = None) -> None:
        """Write the buffered rows and record how the run ended (finished / diverged / interrupted)."""
        if not self.started:
            self.start()
        with self._update() as f:
            self._write_rows(f)
            f.attrs["status"] = status
            f.attrs["stop_reason"] = reason
            if step is not None:
                f.attrs["stop_step"] = int(step)
            for k, v in (attrs or {}).items():
                f.attrs[k] = _attr(v)

    def close(self) -> None:
        """Write what is buffered (publishing the set-up if `start` was not called); no status is recorded."""
        if not self.started:
            self.start()
        else:
            self.flush()

    def discard(self) -> None:
        """Abandon a set-up that never started: the run file stays as it was (e.g. a failed resume)."""
        if self.f is not None:
            f, self.f = self.f, None
            f.close()
        self._pending = {}

    def _write_rows(self, f: h5py.File) -> None:
        for group, cols in self._pending.items():
            if not cols:
                continue
            grp = f[group]
            for name in sorted(cols, key=lambda n: n == "step"):
                values = np.asarray(cols[name])
                ds = grp[name]
                n0 = ds.shape[0]
                ds.resize(n0 + len(values), axis=0)
                ds[n0:] = values
        self._pending = {}

    @contextlib.contextmanager
    def _update(self) -> Iterator[h5py.File]:
        """Read the run file into memory, let the caller change it, publish the result (write, fsync, rename)."""
        with _write_errors(self.path):
            f = _in_memory(self.path.read_bytes())
        try:
            yield f
            crash_point("write")  # the new version being made, nothing written yet
        except BaseException:
            f.close()
            raise
        _publish(_close_memory(f), self.path)


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _in_memory(data: bytes | None) -> h5py.File:
    """An HDF5 file held in memory: a copy of `data`, or a new empty file."""
    buf = io.BytesIO(data or b"")
    f = h5py.File(buf, "r+" if data else "w", libver="latest")
    f._eos_buffer = buf  # keep the buffer with the file object
    return f


def _close_memory(f: h5py.File) -> bytes:
    buf = f._eos_buffer
    f.close()
    return buf.getvalue()


def _publish(data: bytes, path: Path) -> None:
    """Write `data` as the new run file atomically: temporary file, fsync, rename."""
    tmp = _tmp_path(path)
    with _write_errors(path):
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        crash_point("publish")  # the new version complete, not yet renamed
        os.replace(tmp, path)


def crash_point(name: str) -> None:
    """Fault injection for the crash-matrix test (tests/test_crash_matrix.py), a no-op unless
    EOS_PROBE_CRASH_AT="name:n[:delay]" is set: SIGKILL this process the n-th time it reaches `name`
    (after `delay` seconds, from a timer thread, so the kill lands in the middle of what follows)."""
    spec = os.environ.get("EOS_PROBE_CRASH_AT")
    if not spec:
        return
    point, n, *rest = spec.split(":")
    if point != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] != int(n):
        return
    delay = float(rest[0]) if rest else 0.0
    if delay <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()


_crash_counts: dict[str, int] = {}


#: errno → the words a user needs (anything else: the system's own message)
_ERRNO_WORDS = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file size limit exceeded",
                errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def write_error_message(path: Path, e: BaseException) -> str:
    """One line for a failed write of `path` (OSError from the OS, h5py or torch.save)."""
    code = getattr(e, "errno", None)
    if not code:
        m = re.search(r"errno = (\d+)", str(e))
        code = int(m.group(1)) if m else None
    words = _ERRNO_WORDS.get(code) or (os.strerror(code).lower() if code else str(e).split("\n")[0])
    return f"cannot write {path}: {words}"


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """A failed write → one-line UserError (disk full, size limit, read-only file system, ...)."""
    try:
        yield
    except (OSError, RuntimeError) as e:  # h5py reports some failed writes (on close) as RuntimeError
        raise UserError(write_error_message(path, e)) from None


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
    # permissions are not the whole story (/proc, /sys, a read-only mount, root): try it
    probe = parent / f".{path.name}.{os.getpid()}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise UserError(f"output directory {parent} cannot hold a run file ({write_error_message(path, e).split(': ', 1)[1]})") from None
    try:
        block = b"\0" * 4096  # a full disk or a file-size limit shows here, before any work
        while block:  # a write that reaches the limit is short; the next one fails
            block = block[os.write(fd, block):]
    except OSError as e:
        raise UserError(write_error_message(path, e)) from None
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def _attr(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if v is None:
        return "null"
    return v
