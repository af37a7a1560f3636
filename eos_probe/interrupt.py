"""SIGINT / SIGTERM during training: stop at a consistent point, checkpoint, say how to resume.

A signal never interrupts an update, a file write or a checkpoint half-way (that would leave θ or the
files inconsistent): the handler only records it, and the training loop stops at its next step boundary.
Probes are the exception — one can take many minutes — so a probe may be cut short: the loop then
checkpoints the step the probe was measuring, with the probe state from before it (the probe is redone
on resume).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Iterator

#: signals that stop a run cleanly (Ctrl-C, `kill`, `timeout`, batch schedulers)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """Training stopped by a signal after checkpointing; a KeyboardInterrupt so notebooks treat it as one.

    Raised by the training loop once every run file is marked `interrupted` and checkpointed at `step`.
    """

    def __init__(self, signum: int, step: int | None = None, paths: list[Path] | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.step = step
        self.paths = list(paths or [])

    @property
    def exit_code(self) -> int:
        """128 + signal number, as a shell reports a process killed by it (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum

    def message(self) -> str:
        resume = "; ".join(f"eos-probe train --resume {p}" for p in self.paths)
        return f"interrupted at step {self.step} — resume with: {resume}"


class Guard:
    """Installs the SIGINT/SIGTERM handlers for the duration of a run (main thread only; elsewhere a no-op).

    `check()` raises `RunInterrupted` if a signal came; inside `interruptible()` a signal raises at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._immediate = False
        self._old: dict[int, object] = {}

    def _handler(self, signum: int, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.signum is None:
            self.signum = signum
        if self._immediate:
            self._immediate = False  # raise once; the clean-up that follows must not be cut short
            raise RunInterrupted(self.signum)

    def __enter__(self) -> "Guard":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def check(self) -> None:
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stretch (a file write) that a signal must not cut; one received meanwhile is raised after it."""
        was, self._immediate = self._immediate, False
        try:
            yield
        finally:
            self._immediate = was
        if was and self.signum is not None:
            self._immediate = False
            raise RunInterrupted(self.signum)

    def shielded(self, obj):
        """`obj` with every method call run `deferred` (the writer a cut-short probe appends to)."""
        return _Shielded(self, obj)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A stretch of read-only work (a probe) that a signal may cut short."""
        self.check()
        self._immediate = True
        try:
            yield
        finally:
            self._immediate = False


class _Shielded:
    def __init__(self, guard: Guard, obj) -> None:
        self._guard, self._obj = guard, obj

    def __getattr__(self, name: str):
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._guard.deferred():
                return attr(*args, **kwargs)

        return call
