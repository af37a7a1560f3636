"""From `--probe` specs to a `Probe`: the default metric list, spec parsing and validation.

A spec is `name` or `name:key=value:key=value`, e.g. `trace:method=ggn+residual:n_matvec=20`; values are
Python literals where they parse as one (`8`, `1e-3`, `None`, `[1, 4]`), strings otherwise.
"""
from __future__ import annotations

import ast
from typing import Any

from ..config import log_interval
from ..errors import UserError, did_you_mean
from ..presets import PRESETS
from .metrics import BUILTIN as _BUILTIN  # noqa: F401  (importing it registers the built-in metrics)
from .bands import band_for_config
from .registry import METRICS, Metric
from .runner import Probe


def _preconditioned(optimizer: str) -> bool:
    p = PRESETS.get(optimizer)  # an unknown name is validated elsewhere; it has no preconditioner here
    return p is not None and p.preconditioned


def _zeroth_order(name: str, optimizer: Any) -> bool:
    if optimizer is not None:
        return bool(optimizer.zeroth_order)
    p = PRESETS.get(name)
    return bool(p is not None and p.zeroth_order)


def default_metrics(optimizer: str) -> list[str]:
    """Default `--probe` list: cheap enough to leave on (docs/theory.md §4 quantities a band plot needs).

    Args:
        optimizer: the run's optimizer name (e.g. "zo-adam").

    Returns:
        Metric names: lambda_max and trace; ms_margin for two-point ZO runs with a band; the P⁻¹H metrics
        for Adam.
    """
    metrics = ["lambda_max", "trace"]
    p = PRESETS.get(optimizer)
    # S(η) is the band of a two-point ZO run; grouped/RISE presets have no spectral band (presets.Preset.has_band)
    if p is not None and p.source == "two_point" and p.has_band:
        metrics.append("ms_margin")
    if _preconditioned(optimizer):
        metrics += ["precond_lambda_max", "precond_trace", "commutator_ratio"]
    return metrics


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`name:key=value:key=value` → (name, options); values parsed as Python literals where possible.

    Raises:
        UserError: an option without `=`.
    """
    parts = [p.strip() for p in str(spec).split(":")]
    name, opts = parts[0], {}
    for item in parts[1:]:
        if "=" not in item:
            raise UserError(f"probe metric spec {spec!r}: expected name:key=value[:key=value], got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        try:
            opts[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            opts[k] = v
    return name, opts


def build_probe(cfg, setup=None, *, objective=None, optimizer=None, theta=None) -> Probe | None:
    """The probe for a run config (None if `cfg.probe == []`): metrics parsed and validated up front.

    Args:
        cfg: the validated `TrainConfig` (`cfg.probe` None = `default_metrics`).
        setup: the trainer's `Setup` (or pass `objective`, `optimizer`, `theta`).

    Returns:
        The `Probe` with its metrics in registration order, or None when no metric is asked for.

    Raises:
        UserError: an unknown metric, a bad option, a metric listed twice, or an Adam-only metric on another
            optimizer.
    """
    specs = default_metrics(cfg.optimizer) if cfg.probe is None else list(cfg.probe)
    if not specs:
        return None
    if setup is not None:
        objective = objective if objective is not None else setup.objective
        optimizer = optimizer if optimizer is not None else setup.optimizer
        theta = theta if theta is not None else setup.theta
    adam = _preconditioned(cfg.optimizer)
    settings = {"config": cfg.to_dict(), "dim": objective.dim, "preconditioned": adam,
                "band": band_for_config(cfg.to_dict(), objective.dim), "objective": objective, "optimizer": optimizer,
                "theta": theta, "probe_budget": getattr(cfg, "probe_budget", None),
                "log_every": log_interval(cfg, _zeroth_order(cfg.optimizer, optimizer))}
    seen: dict[str, Metric] = {}
    for spec in specs:
        name, opts = parse_spec(spec)
        if name not in METRICS:
            raise UserError(f"unknown probe metric {name!r}; choose from {', '.join(METRICS)} (or 'none')"
                            + did_you_mean(name, METRICS))
        cls = METRICS[name]
        if cls.adam_only and not adam:
            raise UserError(f"probe metric {name!r} needs an Adam optimizer (adam, zo-adam), not {cfg.optimizer}; "
                            f"drop it from --probe")
        if name in seen:
            raise UserError(f"probe metric {name!r} is listed twice in --probe")
        seen[name] = cls(settings, **opts)
    order = list(METRICS)
    metrics = sorted(seen.values(), key=lambda m: order.index(m.name))
    return Probe(metrics, cfg.probe_every, settings)
