"""Opening a run file for reading, shared by the writer (`eos_probe.store`) and the reader (`eos_probe.run`).

It sits below both, so the reader (`eos_probe.run`) never imports the writer (`eos_probe.store`).
"""
from __future__ import annotations

from pathlib import Path

import h5py

from .errors import CorruptFileError, UserError

#: the version of the run-file layout (docs/reference/run-file.md) that the writer, the probe and the reader share
SCHEMA_VERSION = 1


def open_run(path: str | Path) -> h5py.File:
    """Open a run file for reading, also while a run is writing it or after its writer was killed.

    The writer only ever replaces the file whole (module docstring), so the file is opened without HDF5's
    file lock: the lock could only make a reader wait for nothing or fail. Files written by versions that
    used SWMR mode are opened as SWMR readers when a plain open refuses. Raises one clear
    `UserError`/`CorruptFileError` for a missing, truncated or foreign file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"run file {path} does not exist")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a run file")
    errors: list[str] = []
    f = None
    # A plain open first: it rejects a truncated file at once, whereas an SWMR open of one succeeds and
    # then retries every metadata read for minutes.
    for kwargs in ({}, {"swmr": True}):
        try:
            f = h5py.File(path, "r", libver="latest", locking=False, **kwargs)
            break
        except OSError as e:
            errors.append(str(e))
            if "truncated file" in str(e) or "file signature not found" in str(e):
                break
    if f is None:
        msg = errors[0].split("(")[0].strip() if errors else "unknown error"
        detail = errors[0][errors[0].find("(") + 1:].rstrip(")") if "(" in errors[0] else ""
        hint = ""
        if "already open for write" in errors[0]:  # only files of versions before copy-on-write writing
            hint = "; it was written in place by a writer that was killed: `h5clear -s FILE` clears the flag"
        raise CorruptFileError(f"{path} cannot be read as HDF5 (truncated or corrupt file?): {detail or msg}{hint}")
    if "schema_version" not in f.attrs or "train" not in f:
        f.close()
        raise CorruptFileError(f"{path} is an HDF5 file but not an eos-probe run (no schema_version or /train)")
    return f
