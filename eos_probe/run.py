"""`Run`: a run file loaded for analysis (`eos_probe.load(path)`)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import CorruptFileError, UserError
from .store import open_run


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{" :
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class Run:
    """A run file in memory: `config` (dict), `attrs`, `train` and `probe` (DataFrames), spectra arrays."""

    path: Path
    attrs: dict[str, Any]
    train: pd.DataFrame
    probe: pd.DataFrame
    _spectra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return self.attrs.get("config", {})

    @property
    def status(self) -> str:
        """finished | diverged | interrupted (killed, or still running)."""
        return self.attrs.get("status", "interrupted")

    @property
    def spectra_names(self) -> list[str]:
        return sorted(self._spectra)

    def spectra(self, name: str) -> dict[str, np.ndarray]:
        """{"step": (n,), "nodes": (n, k), "weights": (n, k)} of a logged spectrum (e.g. "density")."""
        if name not in self._spectra:
            raise UserError(f"{self.path}: no spectrum {name!r}; available: {', '.join(self.spectra_names) or 'none'}")
        return self._spectra[name]

    @classmethod
    def from_file(cls, path: str | Path) -> "Run":
        path = Path(path)
        f = open_run(path)
        try:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            train = _frame(f, "train", path)
            probe = _frame(f, "probe", path) if "probe" in f else pd.DataFrame({"step": np.zeros(0, int)})
            spectra = {}
            if "spectra" in f:
                for name, grp in f["spectra"].items():
                    spectra[name] = _consistent_rows({k: ds[()] for k, ds in grp.items()}, path, f"spectra/{name}")
        except (OSError, KeyError, ValueError) as e:
            raise CorruptFileError(f"{path}: run file is damaged and cannot be read completely ({e})") from None
        finally:
            f.close()
        return cls(path, attrs, train, probe, spectra)


def _consistent_rows(cols: dict[str, np.ndarray], path: Path, group: str) -> dict[str, np.ndarray]:
    """Cut every column to the rows that have a step (a live writer writes `step` last)."""
    if "step" not in cols:
        raise CorruptFileError(f"{path}: group /{group} has no step dataset")
    n = min(len(v) for v in cols.values())
    return {k: v[:n] for k, v in cols.items()}


def _frame(f, group: str, path: Path) -> pd.DataFrame:
    cols = _consistent_rows({k: ds[()] for k, ds in f[group].items() if ds.ndim == 1}, path, group)
    return pd.DataFrame(cols)
