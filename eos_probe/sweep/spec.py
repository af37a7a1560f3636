"""A sweep file: a base run config plus a `[sweep]` table of lists, expanded into points and packs.

    model = "cnn"                 # any key of `eos-probe train --config` (TrainConfig), except `out`
    steps = 300
    [sweep]
    lr = [0.001, 0.002, 0.004]    # one list per swept option; the grid is their product
    seed = [0, 1]
    zip = [["lr", "seed"]]        # optional: options listed together vary together (equal lengths)

`model_args` / `data_args` entries are dicts merged into the base dicts. Each point writes one run file named
from its settings (`lr0.001-seed0.h5`); points whose configs differ only in lr/momentum form a *pack*
that trains as stacked copies in one process (`eos_probe.train.train_sweep`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import _FIELDS, TrainConfig, _expected, validate
from ..errors import UserError, did_you_mean

#: options that stacked copies may differ in (eos_probe.train.SWEEP_FIELDS)
PACKABLE = ("lr", "momentum")
_MERGED = ("model_args", "data_args")


@dataclass
class Point:
    """One run of the sweep: the swept settings, the full config and its run file name."""

    name: str
    settings: dict[str, Any]
    config: dict[str, Any]  # TrainConfig as a dict, `out` set to the run file

    @property
    def file(self) -> str:
        return self.config["out"]

    def pack_key(self) -> str:
        """Points with equal keys can share one process (they differ only in lr/momentum)."""
        rest = {k: v for k, v in self.config.items() if k not in (*PACKABLE, "out")}
        return json.dumps(rest, sort_keys=True, default=str)


@dataclass
class SweepSpec:
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    zips: list[list[str]] = field(default_factory=list)
    source: str = ""

    def points(self, out_dir: str | Path) -> list[Point]:
        """Every point of the grid (zip groups vary together), in a stable order."""
        out_dir = Path(out_dir)
        groups: list[list[str]] = [list(z) for z in self.zips]
        zipped = {k for z in groups for k in z}
        groups += [[k] for k in self.axes if k not in zipped]
        factors = [[dict(zip(g, vals)) for vals in zip(*(self.axes[k] for k in g))] for g in groups]
        points, names = [], set()
        for combo in itertools.product(*factors):
            settings: dict[str, Any] = {}
            for part in combo:
                settings.update(part)
            settings = {k: settings[k] for k in self.axes}  # the order of the [sweep] table
            cfg = dict(self.base)
            for k, v in settings.items():
                cfg[k] = {**cfg.get(k, {}), **v} if k in _MERGED else v
            name = point_name(settings)
            if name in names:
                raise UserError(f"{self.source}: two points of the sweep have the same settings ({name}); "
                                "give each value once")
            names.add(name)
            cfg["out"] = str(out_dir / f"{name}.h5")
            try:
                full = validate(TrainConfig(**cfg)).to_dict()
            except UserError as e:
                raise UserError(f"{self.source}: point {name}: {e}") from None
            points.append(Point(name, settings, full))
        return points


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "_".join(f"{k}{_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "_".join(_fmt(x) for x in v)
    if v is None:
        return "none"
    return str(v)


def point_name(settings: dict[str, Any]) -> str:
    """A file-system safe name from the settings, e.g. lr0.001-momentum0.9-seed1 (hashed if very long)."""
    if not settings:
        return "base"
    parts = []
    for k, v in settings.items():
        if k in _MERGED:
            parts.append(_fmt(v))
        else:
            parts.append(f"{k}{_fmt(v)}")
    name = re.sub(r"[^A-Za-z0-9._+-]", "", "-".join(parts).replace(" ", ""))
    if len(name) > 120:
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
        name = f"{name[:100]}-{digest}"
    return name


def _check_value(where: str, key: str, value: Any) -> None:
    types = _expected(key)
    if isinstance(value, bool) or not isinstance(value, types):
        raise UserError(f"{where}: key {key!r} must be of type {types[0].__name__}, got {type(value).__name__} {value!r}")


def parse_sweep(raw: dict[str, Any], source: str = "sweep config") -> SweepSpec:
    """Check a parsed sweep file (one clear line per mistake) and return its spec."""
    raw = dict(raw)
    table = raw.pop("sweep", None)
    figure = raw.pop("figure", None)  # read by the gallery (eos_probe.gallery), not a train option
    if figure is not None and not isinstance(figure, dict):
        raise UserError(f"{source}: [figure] must be a table (kind, title, ...), got {figure!r}")
    raw = raw.pop("train", raw) if "train" in raw and isinstance(raw["train"], dict) else raw
    if table is None or not isinstance(table, dict):
        raise UserError(f"{source}: no [sweep] table; add one with a list per swept option, e.g. lr = [0.001, 0.002]")
    valid = ", ".join(sorted(k for k in _FIELDS if k != "out"))
    for key, value in raw.items():
        if key not in _FIELDS:
            raise UserError(f"{source}: unknown key {key!r}" + (did_you_mean(key, [k for k in _FIELDS if k != "out"]) or f"; valid keys: {valid}"))
        if key == "out":
            raise UserError(f"{source}: 'out' is set per point by the sweep; use --out-dir for the directory")
        _check_value(source, key, value)
    table = dict(table)
    zips = table.pop("zip", [])
    if not isinstance(zips, list) or not all(isinstance(z, list) and z and all(isinstance(k, str) for k in z)
                                             for z in zips):
        raise UserError(f"{source}: [sweep] zip must be a list of lists of option names, e.g. zip = [[\"lr\", \"seed\"]]")
    if not table:
        raise UserError(f"{source}: the [sweep] table lists no option to sweep")
    axes: dict[str, list[Any]] = {}
    for key, values in table.items():
        if key not in _FIELDS or key == "out":
            raise UserError(f"{source}: unknown option {key!r} in [sweep]"
                            + (did_you_mean(key, [k for k in _FIELDS if k != "out"]) or f"; valid options: {valid}"))
        if not isinstance(values, list):
            raise UserError(f"{source}: [sweep] {key} must be a list of values, got {values!r}")
        if not values:
            raise UserError(f"{source}: [sweep] {key} is an empty list; give at least one value")
        for v in values:
            _check_value(f"{source}: [sweep] {key}", key, v)
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UserError(f"{source}: [sweep] {key} lists a value twice ({values})")
        axes[key] = list(values)
    seen: set[str] = set()
    for z in zips:
        for k in z:
            if k not in axes:
                raise UserError(f"{source}: zip names {k!r}, which is not a list in [sweep]")
            if k in seen:
                raise UserError(f"{source}: option {k!r} appears in two zip groups")
            seen.add(k)
        lengths = {len(axes[k]) for k in z}
        if len(lengths) != 1:
            raise UserError(f"{source}: zip group {z} has lists of different lengths "
                            f"({', '.join(f'{k}: {len(axes[k])}' for k in z)})")
    return SweepSpec(raw, axes, zips, source)


def load_sweep_config(path: str | Path) -> SweepSpec:
    """Read and check a sweep TOML file."""
    from ..config import read_toml

    return parse_sweep(read_toml(path, "sweep config"), str(path))


def packs(points: list[Point]) -> list[list[Point]]:
    """Group points that can train as stacked copies in one process (same config up to lr/momentum)."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.pack_key(), []).append(p)
    return list(groups.values())


__all__ = ["Point", "SweepSpec", "load_sweep_config", "packs", "parse_sweep", "point_name"]
