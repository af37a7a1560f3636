"""`Run`: a run file loaded for analysis (`eos_probe.load(path)`).

A `Run` is a snapshot: reading a live run gives every row of its last flush, cut to the rows whose
`step` is present (the writer writes `step` last), so all columns of a group have the same length.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import CorruptFileError, UserError
from .presets import PRESETS
from .reading import open_run
from .theory.stability import COCD_BAND_WARNING, COCD_BANDLESS  # noqa: F401 - re-exported from their old home
from .theory.stability import Band, band_for

if TYPE_CHECKING:
    from .theory.states import StabilityVerdict


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, str) and v == "null":
        return None
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO":
        return [_decode(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class Run:
    """A run file in memory.

    `config` (dict), `attrs` (every root attribute, JSON decoded), `train` and `probe` (DataFrames with
    one column per 1-D series; multi-dimensional probe series via `probe_array`), spectra via `spectra`,
    the stability band via `band()` and the one stability verdict per probe via `verdicts()` (`verdict()`: the last).
    """

    path: Path
    attrs: dict[str, Any]
    train: pd.DataFrame
    probe: pd.DataFrame
    _spectra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _bands: dict[str, Any] = field(default_factory=dict, repr=False)
    _probe_attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    _series_attrs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _tasks: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the tracking rows between certified probes (`--probe-every auto`: warm λ_max, the monitor's trace and the
    #: bracket [s_lo, s_hi] on S(η); `eos_probe.probe.track`), None for fixed schedules
    track: pd.DataFrame | None = None

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> dict[str, Any]:
        return self.attrs.get("config", {})

    @property
    def status(self) -> str:
        """finished | diverged | interrupted (killed, or still running)."""
        return self.attrs.get("status", "interrupted")

    @property
    def stop_reason(self) -> str:
        return self.attrs.get("stop_reason", "")

    @property
    def optimizer(self) -> str:
        return self.config.get("optimizer", "?")

    @property
    def lr(self) -> float:
        return float(self.config.get("lr", math.nan))

    @property
    def preconditioned(self) -> bool:
        """Adam runs: the band is about P⁻¹H, so plots and verdicts use the `precond_*` series."""
        p = PRESETS.get(self.optimizer)
        return p is not None and p.preconditioned

    @property
    def regression(self) -> bool:
        """Trained on float targets, so its accuracy column is NaN (as recorded by the data or the loss)."""
        ds = self.attrs.get("dataset")
        if isinstance(ds, dict) and ds.get("task") == "regression":
            return True
        return "regression" in str(self.attrs.get("loss_convention", ""))

    @property
    def steps_done(self) -> int:
        """Last logged step (-1 if nothing was logged yet)."""
        steps = self.train["step"] if "step" in self.train else []
        return int(steps.iloc[-1]) if len(steps) else -1

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def metrics(self) -> list[str]:
        """Names of the probe metrics in the file (value columns, without _err/_nhvp/... companions)."""
        return list(self._probe_attrs.get("metrics", []))

    @property
    def probe_info(self) -> dict[str, Any]:
        """Attributes of /probe: metrics, specs (options), probe_every, hvp_backend, seeding."""
        return dict(self._probe_attrs)

    def series_attrs(self, name: str) -> dict[str, Any]:
        """Attributes of /probe/<name> (description, operator, method, ...)."""
        return dict(self._series_attrs.get(name, {}))

    def label(self) -> str:
        """Short legend label: optimizer and step size (with β, q where they are not the defaults)."""
        cfg = self.config
        parts = [self.optimizer, f"η={self.lr:g}"]
        p = PRESETS.get(self.optimizer)
        if p is not None and p.takes_momentum:
            beta = cfg.get("momentum")
            beta = p.momentum if beta is None else beta
            parts.append(f"β={beta:g}" if not self.preconditioned else f"β₁={beta:g}")
        if p is not None and p.source == "two_point" and int(cfg.get("queries", 1)) != 1:
            parts.append(f"q={int(cfg['queries'])}")
        return ", ".join(parts)

    # ------------------------------------------------------------------ data
    @property
    def spectra_names(self) -> list[str]:
        return sorted(self._spectra)

    def spectra(self, name: str) -> dict[str, np.ndarray]:
        """{"step": (n,), "nodes": (n, p, k), "weights": (n, p, k), ...} of a logged spectrum ("density")."""
        if name not in self._spectra:
            raise UserError(f"{self.path}: no spectrum {name!r}; available: {', '.join(self.spectra_names) or 'none'}"
                            f" (train with --probe density to log one)")
        return self._spectra[name]

    def probe_array(self, name: str) -> np.ndarray:
        """A probe series as an array with one row per probe step (also multi-dimensional ones: top_k)."""
        if name in self._arrays:
            return self._arrays[name]
        if name in self.probe:
            return self.probe[name].to_numpy()
        raise UserError(f"{self.path}: no probe series {name!r}; available: "
                        f"{', '.join(sorted(set(self.probe.columns) | set(self._arrays))) or 'none'}")

    def has(self, *names: str) -> bool:
        """Whether every named probe series exists and has at least one row."""
        return all((n in self.probe or n in self._arrays) for n in names) and len(self.probe) > 0

    @property
    def tasks(self) -> pd.DataFrame | None:
        """The task sequence's accuracy/loss table in long form (None for a run without tasks).

        One row per (after, task) pair, T×T rows: `after` = t (θ after training task t, at step `step` =
        its end boundary), `task` = j (evaluated on task j's test split; with class-incremental masking on the outputs of tasks 0..t), `accuracy`, `loss`
        (NaN where row t was not reached yet), `classes` (task j's dataset class ids, as "0,1"). The docs/theory.md
        §5b summary is in `.attrs`: average_accuracy, last_accuracy, forgetting (and boundaries, task_steps).
        The T×T table: `run.tasks.pivot(index="after", columns="task", values="accuracy")`.
        """
        if not self._tasks:
            return None
        acc, loss = self._tasks["accuracy"], self._tasks["loss"]
        T = acc.shape[0]
        bounds = [int(b) for b in self._tasks["boundaries"]]
        classes = self._tasks["attrs"].get("classes") or [[] for _ in range(T)]
        after, task = np.repeat(np.arange(T), T), np.tile(np.arange(T), T)
        out = pd.DataFrame({"after": after, "task": task, "step": np.asarray(bounds[1:])[after],
                            "accuracy": acc.reshape(-1), "loss": loss.reshape(-1),
                            "classes": [",".join(map(str, classes[j])) for j in task]})
        out.attrs = {k: self._tasks["attrs"].get(k, math.nan)
                     for k in ("average_accuracy", "last_accuracy", "forgetting")}
        out.attrs.update(boundaries=bounds, task_steps=[int(v) for v in self._tasks["task_steps"]])
        return out

    # ------------------------------------------------------------------ theory
    def band(self):
        """The stability band of this run (`eos_probe.theory.Band`): as stored in /bands, else from the config."""
        stored = self._bands
        if stored and {f.name for f in fields(Band)} <= set(stored):
            kw = {f.name: stored[f.name] for f in fields(Band)}
            kw["warnings"] = tuple(kw["warnings"] or ())
            kw["c"] = None if kw["c"] is None or (isinstance(kw["c"], float) and math.isnan(kw["c"])) else kw["c"]
            return Band(**kw)
        return band_for(self.config, self.attrs.get("n_params"))

    def curvature(self) -> pd.DataFrame:
        """step, trace, trace_err, lambda_max, lambda_max_err of the operator the band is about
        (P^-1/2 H P^-1/2 for Adam runs, H otherwise); missing series are NaN."""
        prefix = "precond_" if self.preconditioned else ""
        out = pd.DataFrame({"step": self.probe["step"].to_numpy()})
        for col in ("trace", "trace_err", "lambda_max", "lambda_max_err"):
            name = prefix + col
            out[col] = self.probe[name].to_numpy() if name in self.probe else np.full(len(out), np.nan)
        return out

    def verdicts(self) -> pd.DataFrame:
        """Per probe step: the one stability verdict (:func:`eos_probe.theory.states.classify`).

        Columns: ``step``; ``state`` ("stable" | "edge" | "unstable" | "indefinite" | "band", "" where nothing
        usable was measured); ``basis`` ("S" from ms_margin, "lambda_max" for first-order runs, "bounds" from
        Tr and λ_max alone); ``verdict``, the words shown ("stable", "at the edge", "stable (sufficient
        bound)", "band: necessary bound only", "unstable (necessary bound violated)", "indefinite", ...);
        ``evidence`` and ``note``; ``S``, ``S_err``, ``S_neg``, ``S_neg_err``; and the bounds' margins
        ``necessary_margin``, ``sufficient_margin`` (T − Tr and T − (Tr + cλ_max); positive: the bound holds).

        Theory: [docs/theory.md#verdicts][verdicts].
        """
        from .theory.states import classify_row

        band = self.band()
        prefix = "precond_" if self.preconditioned else ""
        cols = ["state", "basis", "verdict", "evidence", "note", "S", "S_err", "S_neg", "S_neg_err",
                "necessary_margin", "sufficient_margin"]
        rows = []
        for _, row in self.probe.iterrows():
            d = classify_row(band, row, prefix).as_dict()
            rows.append([d[c] for c in cols])
        out = pd.DataFrame(rows, columns=cols)
        out.insert(0, "step", self.probe["step"].to_numpy())
        return out

    def verdict(self) -> "StabilityVerdict | None":
        """The verdict at the last probe that has one (None before the first)."""
        v = self.verdicts()
        done = v[v["state"] != ""]
        if not len(done):
            return None
        from .theory.states import classify_row

        i = done.index[-1]
        return classify_row(self.band(), self.probe.iloc[i], "precond_" if self.preconditioned else "")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(cls, path: str | Path) -> "Run":
        path = Path(path)
        f = open_run(path)
        try:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            train = _frame(f, "train", path)
            arrays: dict[str, np.ndarray] = {}
            probe_attrs: dict[str, Any] = {}
            series_attrs: dict[str, dict[str, Any]] = {}
            if "probe" in f and "step" in f["probe"]:
                probe = _frame(f, "probe", path)
                cols = _consistent_rows({k: ds[()] for k, ds in f["probe"].items()}, path, "probe")
                arrays = {k: v for k, v in cols.items() if v.ndim > 1}
                probe_attrs = {k: _decode(v) for k, v in f["probe"].attrs.items()}
                series_attrs = {k: {a: _decode(v) for a, v in ds.attrs.items()} for k, ds in f["probe"].items()}
            else:
                probe = pd.DataFrame({"step": np.zeros(0, np.int64)})
            spectra = {}
            if "spectra" in f:
                for name, grp in f["spectra"].items():
                    spectra[name] = _consistent_rows({k: ds[()] for k, ds in grp.items()}, path, f"spectra/{name}")
            bands = {k: _decode(v) for k, v in f["bands"].attrs.items()} if "bands" in f else {}
            tasks = ({**{k: ds[()] for k, ds in f["tasks"].items()},
                      "attrs": {k: _decode(v) for k, v in f["tasks"].attrs.items()}} if "tasks" in f else {})
            track = _frame(f, "track", path) if "track" in f and "step" in f["track"] else None
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise CorruptFileError(f"{path}: run file is damaged and cannot be read completely ({e})") from None
        finally:
            f.close()
        return cls(path, attrs, train, probe, spectra, arrays, bands, probe_attrs, series_attrs, tasks, track)


def _consistent_rows(cols: dict[str, np.ndarray], path: Path, group: str) -> dict[str, np.ndarray]:
    """Cut every column to the rows that have a step (a live writer writes `step` last)."""
    if "step" not in cols:
        raise CorruptFileError(f"{path}: group /{group} has no step dataset")
    n = min(len(v) for v in cols.values())
    return {k: v[:n] for k, v in cols.items()}


def load(path: str | Path) -> Run:
    """Load a run file into a :class:`Run` (the same as `eos_probe.load` and `eos_probe.store.load`).

    Raises:
        UserError: a missing file; CorruptFileError: a file that is not a readable eos-probe run.
    """
    return Run.from_file(path)


def _frame(f, group: str, path: Path) -> pd.DataFrame:
    cols = _consistent_rows({k: ds[()] for k, ds in f[group].items()}, path, group)
    return pd.DataFrame({k: v for k, v in cols.items() if v.ndim == 1})
