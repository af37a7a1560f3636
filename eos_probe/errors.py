"""Exceptions that the command line turns into one clear line and an exit code."""
from __future__ import annotations

#: exit codes used by every verb of the command line
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_CORRUPT = 4


class UserError(Exception):
    """A mistake in what the user asked for (bad flag, missing file, ...): exit code 2."""

    exit_code = EXIT_USER_ERROR


class CorruptFileError(UserError):
    """A run file that cannot be read as an eos-probe run (truncated, damaged, foreign)."""

    exit_code = EXIT_CORRUPT


class DivergedError(Exception):
    """Training stopped because the loss became non-finite or exploded: exit code 3."""

    exit_code = EXIT_DIVERGED

    def __init__(self, message: str, step: int, reason: str):
        super().__init__(message)
        self.step = step
        self.reason = reason
