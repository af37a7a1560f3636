"""Where a plug-in came from, so a run file can name it and `--resume` can refuse a changed one.

Shared by the model plug-ins (`eos_probe.models.plugins`) and the data plug-ins (`eos_probe.data.plugins`):
the SHA-256 of a file, installed entry points by group and name, and the check that a resumed run sees the
same plug-in content as when it started. A leaf: it imports nothing of the package but the errors.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

from .errors import UserError


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def entry_point(group: str, name: str) -> importlib.metadata.EntryPoint | None:
    """The installed entry point `name` of `group`, or None."""
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name == name:
            return ep
    return None


def entry_point_names(group: str) -> list[str]:
    """Names registered by installed packages under an entry-point group."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=group)})


def check_unchanged(stored: dict[str, Any] | None, current: dict[str, Any] | None, what: str) -> None:
    """Refuse to resume a run whose plug-in file changed since it started (the run would not be one run).

    Raises:
        UserError: the recorded and the current SHA-256 differ.
    """
    if not stored or not current:
        return
    old, new = stored.get("sha256"), current.get("sha256")
    if old and new and old != new:
        src = current.get("source") or current.get("path") or current.get("spec")
        raise UserError(f"{what} {src} changed since the run started (sha256 {old[:12]}… now {new[:12]}…); "
                        "restore it, or start a new run")
