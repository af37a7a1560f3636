"""The `Dataset` every loader returns, and the small checks and paths the loaders share."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError, did_you_mean


@dataclass
class Dataset:
    """A whole dataset held in memory.

    Images: ``x`` float32 ``(n, C, H, W)`` standardised, ``y`` int64 class labels ``(n,)``.
    Sequences: ``x`` int64 tokens ``(n, L)``, ``y`` int64 next tokens ``(n, L)`` with ``-1`` marking
    positions that are not in the loss. ``num_classes`` is the number of classes (images) or the
    vocabulary size, i.e. the output size per position (sequences). ``meta`` is JSON-serialisable
    provenance: source, licence, checksums, subset rule, normalisation.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple
    kind: str
    meta: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:  # the default repr would print every tensor
        return (
            f"Dataset({self.name!r}, kind={self.kind!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes})"
        )


def cache_dir() -> Path:
    """Where downloads go by default: ``$XDG_CACHE_HOME/eos-probe`` or ``~/.cache/eos-probe``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "eos-probe"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_extra_kw(name: str, kw: dict, allowed: Sequence[str]) -> None:
    """Reject keyword options a loader does not know, naming the ones it does."""
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        ok = ", ".join(allowed) if allowed else "none"
        raise UserError(f"dataset {name!r} got unknown option(s) {', '.join(unknown)}; accepted: {ok}"
                        + did_you_mean(unknown[0], allowed))


def positive_int(value: Any, what: str, *, allow_none: bool = False) -> int | None:
    """``value`` as an int > 0 (bools and non-integral numbers rejected)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    if value <= 0:
        raise UserError(f"{what} must be a positive integer, got {value}")
    return int(value)
