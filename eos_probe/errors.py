"""The library's exceptions, each with the exit code the command line uses for it.

Hierarchy (the CLI maps every `EosProbeError` to one line on stderr and its `exit_code`, in `cli.main`)::

    EosProbeError                  base; exit 2
    ├── UserError                  what was asked for cannot be done (bad flag, missing file, ...); exit 2
    │   ├── InvalidValueError      a bad argument value; also a ValueError, so library callers can catch that
    │   └── CorruptFileError       a run file that cannot be read as an eos-probe run; exit 4
    └── DivergedError              training stopped on a non-finite or exploding loss; exit 3

Numerical code (curvature, theory, optim) raises `InvalidValueError`; it never needs to know about the CLI.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

#: exit codes used by every verb of the command line
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_CORRUPT = 4


class EosProbeError(Exception):
    """Base of every error eos-probe raises on purpose; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_USER_ERROR


class UserError(EosProbeError):
    """A mistake in what the user asked for (bad flag, missing file, ...): exit code 2."""

    exit_code = EXIT_USER_ERROR


class InvalidValueError(UserError, ValueError):
    """An argument with a value outside its domain (lr ≤ 0, unknown method, wrong shape): exit code 2."""


class CorruptFileError(UserError):
    """A run file that cannot be read as an eos-probe run (truncated, damaged, foreign): exit code 4."""

    exit_code = EXIT_CORRUPT


class DivergedError(EosProbeError):
    """Training stopped because the loss became non-finite or exploded: exit code 3.

    Attributes: `step` (the step at which it was detected) and `reason` (recorded in the run file).
    """

    exit_code = EXIT_DIVERGED

    def __init__(self, message: str, step: int, reason: str):
        super().__init__(message)
        self.step = step
        self.reason = reason


def did_you_mean(word: object, options: Iterable[object]) -> str:
    """"; did you mean 'x'?" for the closest of `options` to a mistyped `word` (difflib), else ""."""
    names = [str(o) for o in options]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    if not close:  # a case slip ("Adam") or a prefix the ratio rates low ("lambda" for "lambda_max")
        low = str(word).lower()
        close = [n for n in names if n.lower() == low] or [n for n in names if len(low) >= 3 and n.startswith(low)][:1]
    return f"; did you mean {close[0]!r}?" if close else ""
