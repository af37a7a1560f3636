"""Run configuration: one dataclass, validated with one clear message per mistake, loadable from TOML."""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda")

#: default step size per optimizer. First order: inside the classical edge of the default CNN at
#: initialisation (λ_max ≈ 3.4 on fashion4). Zeroth order: the literature's scale (ZO-GDM η = 1e-4 at
#: β = 0.9, docs/theory.md §6), i.e. T = 2q(1−β)/η = 2000 for both ZO-GD and ZO-GDM. On an H100 check, ZO-GD at
#: η = 0.05 and 0.01 diverged within 100 steps on the CNN, ViT and MLP: Tr(H) is far larger than λ_max.
DEFAULT_LR = {"gd": 0.05, "gdm": 0.005, "adam": 1e-3, "zo-gd": 1e-3, "zo-gdm": 1e-4, "zo-adam": 1e-4,
              "cocd": 0.01, "bccd": 0.01}  # CoCD: the reference setting of docs/theory.md §5d
DTYPES = ("float32", "float64")


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
    lr: float | None = None  # default per optimizer: DEFAULT_LR
    momentum: float | None = None
    momentum_style: str = "heavy_ball"
    beta2: float = 0.999
    eps: float = 1e-8
    queries: int = 1
    mu: float = 1e-3
    directions: str = "gaussian"
    difference: str = "central"
    steps: int = 300
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    microbatch: int | None = None
    log_every: int | None = None  # default: 1 for first-order (free), 10 for ZO (one extra forward)
    checkpoint_every: int | None = None  # None: after every probe and every 5 min of work (train.py)
    keep_checkpoints_every: int | None = None  # also keep RUN.h5.step<N>.ckpt every N steps (eos-probe edge)
    probe_every: int = 100
    probe: list[str] | None = None  # default per optimizer (see eos_probe.probe)
    divergence_factor: float = 1e3
    out: str | None = None
    # coherent coordinate descent (optimizer cocd / bccd, docs/theory.md §5d)
    cocd_block: int | None = None  # B coordinates refreshed per step (default ⌈1 % of d⌉)
    cocd_gamma: float | None = None  # decay γ of stale estimates (default 0.99 cocd, 0 bccd)
    cocd_eps: float = 0.1  # central-difference radius ε
    cocd_memory: int | None = None  # keep only the m most recent estimates (B <= m < d)
    weight_decay: float = 0.0  # g = G + weight_decay·θ (cocd / bccd only)
    zo_trace_window: int = 50  # ZO runs: logged samples in the /train/zo_trace window (eos_probe.zo_monitor)
    probe_memory: str | None = None  # probe peak-memory budget, e.g. "2GB" (default 2 GB; eos_probe.budget)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _expected(name: str) -> tuple[type, ...]:
    ann = str(_FIELDS[name].type)
    if ann.startswith("list"):
        return (list,)
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
    raw = raw.get("train", raw)  # accept a [train] table or top-level keys
    for key, value in raw.items():
        if key not in _FIELDS:
            raise UserError(f"config file {p}: unknown key {key!r}; valid keys: {', '.join(sorted(_FIELDS))}")
        types = _expected(key)
        if isinstance(value, bool) or not isinstance(value, types):
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
    from .objective import LOSSES
    from .optim import DIFFERENCES, DIRECTIONS, MOMENTUM_STYLES, PRESETS

    def choice(name: str, value: str, options) -> None:
        if value not in options:
            raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")

    choice("optimizer", cfg.optimizer, PRESETS)
    choice("loss", cfg.loss, LOSSES)
    choice("directions", cfg.directions, DIRECTIONS)
    choice("difference", cfg.difference, DIFFERENCES)
    choice("momentum style", cfg.momentum_style, MOMENTUM_STYLES)
    choice("device", cfg.device, DEVICES)
    choice("dtype", cfg.dtype, DTYPES)
    if cfg.lr is None:
        cfg.lr = DEFAULT_LR[cfg.optimizer]
    _positive("lr", cfg.lr)
    _positive("mu", cfg.mu)
    _positive("eps", cfg.eps)
    _positive("divergence factor", cfg.divergence_factor)
    for name in ("steps", "queries", "probe_every"):
        _positive(name, getattr(cfg, name))
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
    if cfg.momentum is not None and cfg.momentum > 0 and cfg.optimizer.removeprefix("zo-") == "gd":
        raise UserError(f"optimizer {cfg.optimizer} takes no momentum (got {cfg.momentum}); use {cfg.optimizer}m")
    return cfg


def _validate_cocd(cfg: TrainConfig) -> None:
    """CoCD options: ranges here; B > d and m >= d once the model is built (they need d)."""
    from .optim import COCD_PRESETS

    given = [n for n in ("cocd_block", "cocd_gamma", "cocd_memory") if getattr(cfg, n) is not None]
    if cfg.cocd_eps != 0.1:
        given.append("cocd_eps")
    if cfg.weight_decay:
        given.append("weight_decay")
    if cfg.optimizer not in COCD_PRESETS:
        if given:
            raise UserError(f"{', '.join(given)} apply to the cocd and bccd optimizers only, not {cfg.optimizer}")
        return
    if cfg.momentum not in (None, 0, 0.0):
        raise UserError(f"optimizer {cfg.optimizer} takes no momentum (got {cfg.momentum})")
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
