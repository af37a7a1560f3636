"""Run configuration: one dataclass, validated with one clear message per mistake, loadable from TOML."""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError, did_you_mean
from .zo_monitor import DEFAULT_WINDOW as ZO_WINDOW
from .presets import (DEFAULT_DIRECTIONS, DEFAULT_MOMENTUM, DIFFERENCES, DIRECTIONS, GROUP_KEYS, GROUP_RULES,
                      GROUP_SOURCES, MOMENTUM_STYLES, NAMES, PRESETS, check_lr, preset)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the `tomli` package (setup.cfg requires it there)
    import tomli as tomllib

DEVICES = ("auto", "cpu", "cuda")

#: default step size per optimizer (the presets' `lr`; why these values: `eos_probe.presets.PRESETS`)
DEFAULT_LR = {name: p.lr for name, p in PRESETS.items()}
DTYPES = ("float32", "float64")
#: the probe's share of the wall time under probe_every "auto" (eos_probe.probe.schedule)
DEFAULT_PROBE_BUDGET = 0.2


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
    momentum: float | None = None
    momentum_style: str = "heavy_ball"
    beta2: float = 0.999
    eps: float = 1e-8
    queries: int = 1
    mu: float = 1e-3
    directions: str = DEFAULT_DIRECTIONS
    difference: str = "central"
    steps: int = 300
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    microbatch: int | None = None
    log_every: int | None = None  # default: 1 for first-order (free), 10 for ZO (one extra forward)
    checkpoint_every: int | None = None  # None: after every probe and every 5 min of work (train.py)
    keep_checkpoints_every: int | None = None  # also keep RUN.h5.step<N>.ckpt every N steps (eos-probe edge)
    probe_every: str | int = "auto"  # "auto": on the wall-time budget `probe_budget` (eos_probe.probe.schedule); N: every N steps
    probe_budget: float | None = None  # auto: the probe's share of the wall time (default DEFAULT_PROBE_BUDGET)
    threads: int | None = None  # intra-op CPU threads (default: from the model's size, `default_threads`)
    probe: list[str] | None = None  # default per optimizer (see eos_probe.probe)
    divergence_factor: float = 1e3
    out: str | None = None
    # coherent coordinate descent (optimizer cocd / bccd, docs/theory.md §5d)
    cocd_block: int | None = None  # B coordinates refreshed per step (default ⌈1 % of d⌉)
    cocd_gamma: float | None = None  # decay γ of stale estimates (default 0.99 cocd, 0 bccd)
    cocd_eps: float = 0.1  # central-difference radius ε
    cocd_memory: int | None = None  # keep only the m most recent estimates (B <= m < d)
    weight_decay: float = 0.0  # g = G + weight_decay·θ (cocd / bccd only)
    zo_trace_window: int = ZO_WINDOW  # ZO runs: the largest window of the /train/zo_trace monitor, in logged samples
    probe_memory: str | None = None  # probe peak-memory budget, e.g. "2GB" (default 2 GB; eos_probe.budget)
    # shaped and grouped optimizers (docs/theory.md §5a-5b)
    norm_match: bool = False  # two-point ZO: divide the estimate by √κ (zo-gd-nm always does)
    rise_blocks: str | int = "tensor"  # rise: one block per parameter tensor, or chunks of N coordinates
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # zo-fc, hybrid: [groups.<name>] tables
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


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every field that can be checked without loading data or models (those check themselves)."""
    from .losses import LOSSES

    def choice(name: str, value: str, options) -> None:
        if value not in options:
            raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(options)}"
                            + did_you_mean(value, options))

    choice("optimizer", cfg.optimizer, NAMES)
    choice("loss", cfg.loss, LOSSES)
    choice("directions", cfg.directions, DIRECTIONS)
    choice("difference", cfg.difference, DIFFERENCES)
    choice("momentum style", cfg.momentum_style, MOMENTUM_STYLES)
    choice("device", cfg.device, DEVICES)
    choice("dtype", cfg.dtype, DTYPES)
    p = preset(cfg.optimizer)
    if cfg.lr is None:
        cfg.lr = p.lr
    check_lr(cfg.lr)
    _positive("mu", cfg.mu)
    _positive("eps", cfg.eps)
    _positive("divergence factor", cfg.divergence_factor)
    for name in ("steps", "queries"):
        _positive(name, getattr(cfg, name))
    _validate_schedule(cfg)
    for name in ("n_per_class", "microbatch", "log_every", "checkpoint_every", "keep_checkpoints_every"):
        _positive(name, getattr(cfg, name), allow_none=True)
    if isinstance(cfg.zo_trace_window, bool) or not isinstance(cfg.zo_trace_window, int) or cfg.zo_trace_window < 1:
        raise UserError(f"zo_trace_window must be a positive number of logged steps, got {cfg.zo_trace_window}")
    if cfg.probe_memory is not None:
        from .budget import parse_bytes

        parse_bytes(cfg.probe_memory)
    if cfg.momentum is not None and not (0.0 <= cfg.momentum < 1.0):
        raise UserError(f"momentum must lie in [0, 1), got {cfg.momentum}")
    if not (0.0 <= cfg.beta2 < 1.0):
        raise UserError(f"beta2 must lie in [0, 1), got {cfg.beta2}")
    if cfg.seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {cfg.seed}")
    _validate_cocd(cfg)
    _validate_shaping(cfg)
    p.check_momentum(cfg.momentum)
    from .tasks import validate_tasks

    validate_tasks(cfg)
    return cfg


def log_interval(cfg: TrainConfig, zeroth_order: bool) -> int:
    """Logging interval: `log_every`, else 1 for first-order runs (the loss comes free with the gradient) and
    10 for zeroth-order ones (each log costs one forward)."""
    return cfg.log_every or (10 if zeroth_order else 1)


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


def _validate_shaping(cfg: TrainConfig) -> None:
    """norm_match, rise_blocks and groups: each only where its optimizer uses it, with valid values."""
    from .optim.shaping import rise_blocks

    p = preset(cfg.optimizer)
    if not isinstance(cfg.norm_match, bool):
        raise UserError(f"norm_match must be true or false, got {cfg.norm_match!r}")
    if cfg.norm_match and p.source != "two_point":
        raise UserError(f"norm_match applies to the two-point ZO optimizers only, not {cfg.optimizer}")
    if cfg.rise_blocks != "tensor":
        if p.source != "rise":
            raise UserError(f"rise_blocks applies to the rise optimizer only, not {cfg.optimizer}")
        rise_blocks([1], cfg.rise_blocks)  # "tensor" or a positive chunk length
    if cfg.groups and not p.grouped:
        raise UserError(f"[groups] tables apply to the grouped optimizers (zo-fc, hybrid) only, not {cfg.optimizer}")
    if p.grouped:
        group_tables(cfg)


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
    for key in ("lr", "mu", "until", "momentum", "clip", "queries"):
        v = out[key]
        if key == "clip" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{where}: {key} must be a number, got {v!r}")
    _positive(f"{where}: lr", out["lr"])
    _positive(f"{where}: mu", out["mu"])
    _positive(f"{where}: clip", out["clip"], allow_none=True)
    if not isinstance(out["queries"], int) or out["queries"] < 1:
        raise UserError(f"{where}: queries must be a positive integer, got {out['queries']!r}")
    if not 0.0 < out["until"] <= 1.0:
        raise UserError(f"{where}: until (fraction of each task after which it is frozen) must lie in (0, 1], "
                        f"got {out['until']}")
    if rule == "gd" and out["momentum"] != 0:
        raise UserError(f"{where}: rule gd takes no momentum (got {out['momentum']}); use rule = \"heavy_ball\"")
    if not 0.0 <= out["momentum"] < 1.0:
        raise UserError(f"{where}: momentum must lie in [0, 1), got {out['momentum']}")
    if out["directions"] not in DIRECTIONS:
        raise UserError(f"{where}: unknown directions {out['directions']!r}; choose one of {', '.join(DIRECTIONS)}")
    return out


def _validate_cocd(cfg: TrainConfig) -> None:
    """CoCD options: ranges here; B > d and m >= d once the model is built (they need d)."""
    given = [n for n in ("cocd_block", "cocd_gamma", "cocd_memory") if getattr(cfg, n) is not None]
    if cfg.cocd_eps != 0.1:
        given.append("cocd_eps")
    if cfg.weight_decay:
        given.append("weight_decay")
    p = preset(cfg.optimizer)
    if p.source != "cocd":
        if given:
            raise UserError(f"{', '.join(given)} apply to the cocd and bccd optimizers only, not {cfg.optimizer}")
        return
    p.check_momentum(cfg.momentum)
    if cfg.cocd_block is not None and cfg.cocd_block < 1:
        raise UserError(f"cocd block size B must be a positive integer, got {cfg.cocd_block}")
    if cfg.cocd_gamma is not None and not (0.0 <= cfg.cocd_gamma <= 1.0):
        raise UserError(f"cocd gamma must lie in [0, 1], got {cfg.cocd_gamma}")
    if cfg.optimizer == "bccd" and cfg.cocd_gamma not in (None, 0, 0.0):
        raise UserError(f"bccd is CoCD with gamma = 0 (got gamma {cfg.cocd_gamma:g}); use cocd for gamma > 0")
    _positive("cocd eps", cfg.cocd_eps)
    if cfg.cocd_memory is not None and cfg.cocd_memory < 1:
        raise UserError(f"cocd memory budget must be a positive integer, got {cfg.cocd_memory}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UserError(f"weight decay must be a non-negative finite number, got {cfg.weight_decay}")
