"""Sweeps over any train option: a grid from a TOML file, run by a local process pool or Ray.

`run_sweep` (driver), `load_sweep` (summary DataFrame), `load_sweep_config` / `parse_sweep` (the file).
Ray is optional (`pip install -e '.[ray]'`) and imported only by the Ray engine.
"""
from __future__ import annotations

from .driver import MANIFEST, SweepReport, read_manifest, run_sweep
from .spec import Point, SweepSpec, load_sweep_config, packs, parse_sweep, point_name
from .summary import load_sweep

__all__ = ["MANIFEST", "Point", "SweepReport", "SweepSpec", "load_sweep", "load_sweep_config", "packs",
           "parse_sweep", "point_name", "read_manifest", "run_sweep"]
