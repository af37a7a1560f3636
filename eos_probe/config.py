"""Run configuration: one dataclass, validated with one clear message per mistake, loadable from TOML."""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .budget import parse_bytes
from .errors import UserError, did_you_mean
from .loss_names import LOSSES
from .presets import (DEFAULT_MOMENTUM, GROUP_KEYS, GROUP_RULES, GROUP_SOURCES, NAMES, OPTIONS, check_lr, default,
                      preset)
from .tasks import validate_tasks
from .zo_monitor import DEFAULT_WINDOW as ZO_WINDOW

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the `tomli` package (setup.cfg requires it there)
    import tomli as tomllib

DEVICES = ("auto", "cpu", "cuda")

DTYPES = ("float32", "float64")
#: the probe's share of the wall time under probe_every "auto" (eos_probe.probe.schedule)
DEFAULT_PROBE_BUDGET = 0.2
#: the logging interval when none is given: first order logs for free (the gradient's forward gives the loss),
#: zeroth order pays one forward per log
LOG_EVERY_FO, LOG_EVERY_ZO = 1, 10


@dataclass
class TrainConfig:
    """Everything that defines a training run. Field names are the TOML keys and the CLI flags."""

    model: str = "cnn"
    data: str | None = None  # default: fashion4 for image models, sort for sequence models
    data_dir: str | None = None
    n_per_class: int | None = None
    classes: list[int] | None = None
    data_args: dict[str, Any] = field(default_factory=dict)  # extra dataset options, e.g. sort n_train
    loss: str = "mse"
    model_args: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "zo-gd"
    lr: float | None = None  # default per optimizer: its preset's lr (eos_probe.presets)
    # the optimizer's options (eos_probe.presets.OPTIONS states each default once; None: the preset's own)
    momentum: float | None = default("momentum")
    momentum_style: str = default("momentum_style")
    beta2: float = default("beta2")
    eps: float = default("eps")
    queries: int = default("queries")
    mu: float = default("mu")
    directions: str = default("directions")
    difference: str = default("difference")
    steps: int = 300
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    microbatch: int | None = None
    log_every: int | None = None  # default: LOG_EVERY_FO for first order, LOG_EVERY_ZO for zeroth order
    checkpoint_every: int | None = None  # None: after every probe and every 5 min of work (train.py)
    keep_checkpoints_every: int | None = None  # also keep RUN.h5.step<N>.ckpt every N steps (eos-probe edge)
    probe_every: str | int = "auto"  # "auto": on the wall-time budget `probe_budget` (eos_probe.probe.schedule); N: every N steps
    probe_budget: float | None = None  # auto: the probe's share of the wall time (default DEFAULT_PROBE_BUDGET)
    threads: int | None = None  # intra-op CPU threads (default: the free cores at the start, `default_threads`)
    probe: list[str] | None = None  # default per optimizer (see eos_probe.probe)
    divergence_factor: float = 1e3
    out: str | None = None
    cocd_block: int | None = default("cocd_block")
    cocd_gamma: float | None = None  # None: the preset's (cocd 0.99; bccd fixes 0)
    cocd_eps: float = default("cocd_eps")
    cocd_memory: int | None = default("cocd_memory")
    weight_decay: float = default("weight_decay")
    norm_match: bool = default("norm_match")
    rise_blocks: str | int = default("rise_blocks")
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # zo-fc, hybrid: [groups.<name>] tables
    optimizer_args: dict[str, Any] = field(default_factory=dict)  # options of eos_probe.presets.OPTIONS without a field
    zo_trace_window: int = ZO_WINDOW  # ZO runs: the largest window of the /train/zo_trace monitor, in logged samples
    probe_memory: str | None = None  # probe peak-memory budget, e.g. "2GB" (default 2 GB; eos_probe.budget)
    # task sequences (class-incremental continual learning, eos_probe.tasks; docs/theory.md §5b)
    tasks: list[list[int]] | str | None = None  # class splits, "0,1;2,3" or [[0, 1], [2, 3]]
    task_steps: list[int] | None = None  # updates per task (default `steps` each; 0 = already trained)
    mask_old_logits: bool | None = None  # leave earlier tasks' class outputs out of the loss (default: ce only)
    init_from: str | None = None  # start θ from this finished run file's final checkpoint

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _expected(name: str) -> tuple[type, ...]:
    ann = str(_FIELDS[name].type)
    if ann.startswith("bool"):
        return (bool,)
    if ann == "str | int":
        return (str, int)
    if ann.startswith("list"):
        return (list, str) if "| str" in ann else (list,)
    if ann.startswith("dict"):
        return (dict,)
    if "float" in ann:
        return (float, int)
    if "int" in ann:
        return (int,)
    return (str,)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The parsed TOML file at `path`; a missing or malformed file is one-line UserError naming `what`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {p} is not valid TOML: {e}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; unknown keys and wrong types are user errors (one line each, first one raised)."""
    p = Path(path)
    raw = read_toml(p)
    if "train" in raw:  # a [train] table; [groups.<name>] tables may sit beside it
        raw = {**raw["train"], **({"groups": raw["groups"]} if "groups" in raw else {})}
    for key, value in raw.items():
        if key not in _FIELDS:
            hint = did_you_mean(key, _FIELDS)  # a typo gets its near match, not a list of every key
            raise UserError(f"config file {p}: unknown key {key!r}"
                            + (hint or f"; valid keys: {', '.join(sorted(_FIELDS))}"))
        types = _expected(key)
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise UserError(f"config file {p}: key {key!r} must be of type {types[0].__name__}, "
                            f"got {type(value).__name__} {value!r}")
    return raw


def _positive(name: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a positive finite number, got {value}")


def optimizer_options(cfg: TrainConfig) -> dict[str, Any]:
    """The config's values of every optimizer option (`eos_probe.presets.OPTIONS`): its fields, and
    `optimizer_args` for options without one.

    Raises:
        UserError: `optimizer_args` names an unknown option, or one that has its own field.
    """
    out = {name: getattr(cfg, name) for name in OPTIONS if name in _FIELDS}
    for key, value in cfg.optimizer_args.items():
        if key in out:
            raise UserError(f"optimizer_args: {key} has its own key; set {key} = {value!r} directly")
        if key not in OPTIONS:
            raise UserError(f"optimizer_args: unknown optimizer option {key!r}" + did_you_mean(key, OPTIONS))
        out[key] = value
    return out


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every field that can be checked without loading data or models (those check themselves); fill lr
    with the preset's default and normalise the task fields. Returns `cfg`."""
    for name, value, options in (("optimizer", cfg.optimizer, NAMES), ("loss", cfg.loss, LOSSES),
                                 ("device", cfg.device, DEVICES), ("dtype", cfg.dtype, DTYPES)):
        if value not in options:
            raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(options)}"
                            + did_you_mean(value, options))
    p = preset(cfg.optimizer)
    if cfg.lr is None:
        cfg.lr = p.lr
    check_lr(cfg.lr)
    p.resolve(optimizer_options(cfg))  # every option's domain, and what this optimizer takes, fixes or refuses
    if p.grouped:
        group_tables(cfg)
    _positive("divergence factor", cfg.divergence_factor)
    _positive("steps", cfg.steps)
    _validate_schedule(cfg)
    for name in ("n_per_class", "microbatch", "log_every", "checkpoint_every", "keep_checkpoints_every"):
        _positive(name, getattr(cfg, name), allow_none=True)
    if isinstance(cfg.zo_trace_window, bool) or not isinstance(cfg.zo_trace_window, int) or cfg.zo_trace_window < 1:
        raise UserError(f"zo_trace_window must be a positive number of logged steps, got {cfg.zo_trace_window}")
    if cfg.probe_memory is not None:
        parse_bytes(cfg.probe_memory)
    if cfg.seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {cfg.seed}")
    validate_tasks(cfg)
    return cfg


def log_interval(cfg: TrainConfig, zeroth_order: bool) -> int:
    """Logging interval: `log_every`, else 1 for first-order runs (the loss comes free with the gradient) and
    10 for zeroth-order ones (each log costs one forward)."""
    return cfg.log_every or (LOG_EVERY_ZO if zeroth_order else LOG_EVERY_FO)


def _validate_schedule(cfg: TrainConfig) -> None:
    """probe_every is "auto" or a positive step count; probe_budget a share in (0, 1), with "auto" only;
    threads a positive count."""
    if cfg.probe_every != "auto":
        if isinstance(cfg.probe_every, str) and cfg.probe_every.strip().isdigit():
            cfg.probe_every = int(cfg.probe_every)
        if isinstance(cfg.probe_every, bool) or not isinstance(cfg.probe_every, int) or cfg.probe_every < 1:
            raise UserError(f"probe_every must be 'auto' or a positive number of steps, got {cfg.probe_every!r}")
        if cfg.probe_budget is not None:
            raise UserError(f"probe_budget applies to probe_every 'auto', not to a fixed probe_every "
                            f"{cfg.probe_every}; drop one of them")
    b = cfg.probe_budget
    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 < b < 1.0):
        raise UserError(f"probe_budget must be a share of the wall time in (0, 1), e.g. 0.2, got {b!r}")
    _positive("threads", cfg.threads, allow_none=True)


def group_tables(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """The groups of a grouped preset, validated and filled: the preset's own groups updated key by key
    by the config's ``[groups.<name>]`` tables (new names add groups). Omitted keys: directions, queries
    and mu from the run's settings, lr the run's lr, momentum 0.9 for heavy_ball and adam (0 for gd),
    no clip, until 1 (never frozen).

    Raises:
        UserError: no groups, a table that is not a table, an unknown key, a group without a source, a bad value.
    """
    p = preset(cfg.optimizer)
    if not isinstance(cfg.groups, dict):
        raise UserError(f"groups must be [groups.<name>] tables, got {cfg.groups!r}")
    tables = {n: dict(t) for n, t in p.group_defaults}
    for name, table in cfg.groups.items():
        if not isinstance(table, dict):
            raise UserError(f"group {name!r} must be a [groups.{name}] table of settings, got {table!r}")
        tables[name] = {**tables.get(name, {}), **table}
    if not tables:
        raise UserError(f"optimizer {cfg.optimizer} needs parameter groups: add [groups.<name>] tables "
                        "(source, rule, lr, ...) to the config file")
    return {name: _group_table(cfg, name, t) for name, t in tables.items()}


def _group_table(cfg: TrainConfig, name: str, t: dict[str, Any]) -> dict[str, Any]:
    """One group's settings checked and filled (see `group_tables`)."""
    where = f"group {name!r}"
    unknown = sorted(set(t) - set(GROUP_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}"
                        + (did_you_mean(unknown[0], GROUP_KEYS) or f"; valid keys: {', '.join(GROUP_KEYS)}"))
    if "source" not in t:
        raise UserError(f"{where} has no source; set source = \"exact\" or \"two_point\"")
    src, rule = t["source"], t.get("rule", "gd")
    if src not in GROUP_SOURCES:
        raise UserError(f"{where}: unknown source {src!r}; choose one of {', '.join(GROUP_SOURCES)}"
                        + did_you_mean(src, GROUP_SOURCES))
    if rule not in GROUP_RULES:
        raise UserError(f"{where}: unknown rule {rule!r}; choose one of {', '.join(GROUP_RULES)}"
                        + did_you_mean(rule, GROUP_RULES))
    zo_keys = sorted(k for k in ("directions", "queries", "mu") if k in t)
    if src == "exact" and zo_keys:
        raise UserError(f"{where}: {', '.join(zo_keys)} apply to two_point groups only (source is exact)")
    out = {"source": src, "rule": rule, "lr": t.get("lr", cfg.lr), "clip": t.get("clip"),
           "until": t.get("until", 1.0), "directions": t.get("directions", cfg.directions),
           "queries": t.get("queries", cfg.queries), "mu": t.get("mu", cfg.mu),
           "momentum": t.get("momentum", 0.0 if rule == "gd" else DEFAULT_MOMENTUM)}
    for key in ("lr", "until", "clip"):
        v = out[key]
        if key == "clip" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{where}: {key} must be a number, got {v!r}")
    _positive(f"{where}: lr", out["lr"])
    _positive(f"{where}: clip", out["clip"], allow_none=True)
    for key in ("mu", "queries", "momentum", "directions"):  # the domains the run's own options have
        OPTIONS[key].check(out[key], where=f"{where}: ")
    if not 0.0 < out["until"] <= 1.0:
        raise UserError(f"{where}: until (fraction of each task after which it is frozen) must lie in (0, 1], "
                        f"got {out['until']}")
    if rule == "gd" and out["momentum"] != 0:
        raise UserError(f"{where}: rule gd takes no momentum (got {out['momentum']}); use rule = \"heavy_ball\"")
    return out
