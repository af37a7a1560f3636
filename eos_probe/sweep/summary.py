"""`load_sweep(DIR)`: one row per point of a sweep, read from its manifest and run files."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from .driver import read_manifest

#: the columns after the swept settings, in order
COLUMNS = ["name", "status", "stop_reason", "divergence_step", "steps_done", "eta", "threshold", "trace_over_T",
           "quantity", "s_eta", "eta_lambda_max", "final_loss", "final_accuracy", "probe_share", "error", "file"]


def _last_finite(values: Any) -> float:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(a[-1]) if a.size else math.nan


def point_row(path: Path) -> dict[str, Any]:
    """The summary quantities of one run file (NaN where the run did not measure them)."""
    from ..run import Run

    run = Run.from_file(path)
    band = run.band()
    cur = run.curvature()
    lr = run.lr
    row: dict[str, Any] = {"status": run.status, "stop_reason": run.stop_reason,
                           "divergence_step": int(run.attrs["stop_step"]) if run.status == "diverged"
                           and "stop_step" in run.attrs else math.nan,
                           "steps_done": run.steps_done, "eta": lr, "threshold": band.threshold,
                           "quantity": band.quantity}
    # ZO: Tr(·)/T, for ZO-GD q = 1 exactly Tr(H)·η/(2q); first order: λ_max/T (the classical edge)
    curv = cur["trace"] if band.kind != "classical" else cur["lambda_max"]
    row["trace_over_T"] = _last_finite(curv) / band.threshold
    row["s_eta"] = _last_finite(run.probe["ms_margin"]) if "ms_margin" in run.probe else math.nan
    row["eta_lambda_max"] = lr * _last_finite(cur["lambda_max"])
    tr = run.train
    row["final_loss"] = _last_finite(tr["loss"]) if "loss" in tr else math.nan
    row["final_accuracy"] = _last_finite(tr["accuracy"]) if "accuracy" in tr else math.nan
    row["probe_share"] = float(run.attrs.get("probe_share", math.nan))
    return row


def load_sweep(out_dir: str | Path) -> pd.DataFrame:
    """A DataFrame with one row per point: its swept settings, then `COLUMNS`.

    Statuses come from the run files (the truth; the manifest may lag behind a killed driver): finished,
    diverged, interrupted (no status: resumed by the next `eos-probe sweep`), missing (never started) or
    failed (the error the last sweep reported).
    """
    from ..errors import CorruptFileError

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    keys = list(manifest.get("sweep", {}))
    rows = []
    for e in manifest.get("points", []):
        row: dict[str, Any] = {k: _hashable(e["settings"].get(k)) for k in keys}
        row.update({c: math.nan for c in COLUMNS})
        path = out_dir / e["file"]
        row.update(name=e["name"], file=str(path), error=e.get("error", "") or "")
        if not path.exists():
            row["status"] = "failed" if e.get("status") == "failed" else "missing"
        else:
            try:
                row.update(point_row(path))
            except (CorruptFileError, UserError, OSError) as err:
                row.update(status="unreadable", error=str(err))
            if e.get("status") == "failed" and row["status"] not in ("finished", "diverged"):
                row["status"] = "failed"
        rows.append(row)
    return pd.DataFrame(rows, columns=keys + COLUMNS)


def _hashable(v: Any) -> Any:
    """Lists/dicts as compact strings, so that settings can be grouped on."""
    if isinstance(v, (list, dict)):
        from .spec import _fmt

        return _fmt(v)
    return v


def format_summary(df: pd.DataFrame) -> str:
    """A plain-text table for the terminal."""
    cols = [c for c in df.columns if c not in ("file", "name", "stop_reason", "quantity", "threshold", "error")]
    with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200,
                           "display.float_format", lambda x: f"{x:.4g}"):
        text = df[cols].to_string(index=False)
    errors = [f"  {r['name']}: {r['error']}" for _, r in df.iterrows() if r["error"]]
    return text + ("\nerrors:\n" + "\n".join(errors) if errors else "")
