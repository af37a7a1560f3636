"""eos-probe: Hessian diagnostics and edge-of-stability analysis of zeroth-order optimization."""
from __future__ import annotations

__version__ = "0.1.0"


def load(path):  # noqa: ANN001 - re-exported lazily so `import eos_probe` stays light
    """Open a run file written by `eos-probe train` (see `eos_probe.store.load`)."""
    from .store import load as _load

    return _load(path)


def load_sweep(path):  # noqa: ANN001 - lazy, like `load`
    """One row per point of a sweep directory written by `eos-probe sweep` (see `eos_probe.sweep.load_sweep`)."""
    from .sweep.summary import load_sweep as _load_sweep

    return _load_sweep(path)
