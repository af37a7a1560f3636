"""eos-probe: Hessian diagnostics and edge-of-stability analysis of zeroth-order optimization.

Python API (imported on first use, so `import eos_probe` stays light)::

    H = eos_probe.hessian(model, loss_fn, (x, y))       # matrix-free Hessian operator
    eos_probe.lambda_max(H), eos_probe.top_k(H, 5), eos_probe.trace(H), eos_probe.density(H)
    eos_probe.commutator_ratio(H, p), eos_probe.ms_margin(H, optimizer="zo-gd", lr=1e-3)
    run = eos_probe.load("runs/quickstart.h5")          # a run file written by `eos-probe train`
"""
from __future__ import annotations

from ._version import __version__


def load(path):  # noqa: ANN001 - imports the reader on first use, so `import eos_probe` stays light
    """Open a run file written by `eos-probe train` (see `eos_probe.run.load`)."""
    from .run import load as _load

    return _load(path)


_API = ("hessian", "lambda_max", "top_k", "trace", "density", "commutator_ratio", "ms_margin", "Estimate",
        "HessianOperator")


def load_sweep(path):  # noqa: ANN001 - lazy, like `load`
    """One row per point of a sweep directory written by `eos-probe sweep` (see `eos_probe.sweep.load_sweep`)."""
    from .sweep.summary import load_sweep as _load_sweep

    return _load_sweep(path)


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'eos_probe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", "load", "load_sweep", *_API]
