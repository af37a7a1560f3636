"""Click pieces shared by the verbs, and the help texts generated from the registries.

Names, choices and defaults on the command line come from the registries (`eos_probe.presets`, the config's
field defaults, `eos_probe.models.MODELS`, `eos_probe.data.DATASETS`, `eos_probe.loss_names`,
`eos_probe.probe.METRICS`), never typed beside them. Registries that import torch are read only when help is
shown (`GeneratedHelp`), so defining a command stays light.
"""
from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

import click

from ..config import TrainConfig
from ..errors import UserError
from ..presets import OPTIONS, PRESETS, Option


def finite(ctx, param, value):
    """Reject inf/NaN for a float option (click's FLOAT type accepts them) with click's one-line error."""
    if value is not None and isinstance(value, float) and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}")
    return value


def parse_kv(flag: str, items: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` items as a dict (values parsed as Python literals where they are, else strings)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


class GeneratedHelp(click.Option):
    """A click option whose help text is made by `help_from()` when help is shown: the registry it reads may
    import torch, which defining the command must not."""

    def __init__(self, *args: Any, help_from: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._help_from = help_from

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if self._help_from is not None:
            self.help, self._help_from = self._help_from(), None
        return super().get_help_record(ctx)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "always" if value else "never"
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_default(name: str) -> Any:
    """The default of a `TrainConfig` field (what the CLI says a flag defaults to)."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()


def option_help(opt: Option) -> str:
    """The help of an optimizer option: the presets that take it, its text, its default and what presets fix."""
    takers = [n for n, p in PRESETS.items() if opt.name in p.options]
    notes = [f"{n}: {_fmt(v)}" for n, p in PRESETS.items() for k, v in (*p.fixed, *p.defaults) if k == opt.name]
    if opt.default is not None and opt.domain != "flag" and "(default" not in opt.help:
        notes.insert(0, f"default {_fmt(opt.default)}")
    return f"{', '.join(takers)}: {opt.help}" + (f" ({'; '.join(notes)})" if notes else "") + "."


#: click parameter types by option domain
_TYPES = {"fraction": float, "unit": float, "positive": float, "nonnegative": float, "count": int, "blocks": str}


def optimizer_options(skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorator: one flag per optimizer option of `eos_probe.presets.OPTIONS` (but `skip` and the config-only
    ``groups``), with its type, choices and generated help; every default is None (the config's applies)."""

    def decorate(f: Callable) -> Callable:
        for opt in reversed(list(OPTIONS.values())):
            if opt.name in skip or opt.domain == "tables":
                continue
            flag = "--" + opt.name.replace("_", "-")
            kw: dict[str, Any] = {"help": option_help(opt)}
            if opt.domain == "choice":
                kw["type"] = click.Choice(list(opt.choices))
            elif opt.domain == "flag":
                kw.update(is_flag=True, default=None)
            else:
                kw["type"] = _TYPES[opt.domain]
                if kw["type"] is float:
                    kw["callback"] = finite
            f = click.option(flag, **kw)(f)
        return f

    return decorate


def presets_help() -> str:
    """The --optimizer help: every preset and what it is, and the default."""
    names = " | ".join(PRESETS)
    return (f"{names} (default {config_default('optimizer')}): "
            + "; ".join(f"{n} = {p.description}" for n, p in PRESETS.items()) + ".")


def lr_help() -> str:
    """The --lr help with each preset's default step size."""
    per = ", ".join(f"{n} {_fmt(p.lr)}" for n, p in PRESETS.items())
    return ("Step size η, or a comma list to train a sweep of copies together, one file each "
            f"(default per optimizer: {per}).")


def models_help() -> str:
    """The --model help: the registered models and the plug-in forms."""
    from ..models import MODELS

    return (" | ".join(MODELS) + f" (default {config_default('model')}), or your own: path/to/file.py:factory, "
            "package.module:factory or an `eos_probe.models` entry point; factory(input_shape, num_outputs, "
            "**model_args) returns an nn.Module.")


def datasets_help() -> str:
    """The --data help: the registered datasets, the default per model kind, and the plug-in forms."""
    from ..data import DATASETS, default_dataset

    kinds = ", ".join(f"{default_dataset(k)} for {k} models" for k in dict.fromkeys(s.kind for s in DATASETS.values()))
    return (" | ".join(DATASETS) + f" (default: {kinds}), or your own: path/to/file.npz (arrays x, y, optional "
            "x_test, y_test; integer y = classes, float y = regression) or an `eos_probe.datasets` entry point.")


def losses_help() -> str:
    """The --loss help: each built-in loss's convention."""
    from ..loss_names import LOSS_CONVENTIONS

    return "; ".join(f"{n}: {c}" for n, c in LOSS_CONVENTIONS.items()) + f" (default {config_default('loss')})."


def metrics_help() -> str:
    """The --probe help: every registered probe metric and the defaults."""
    from ..probe import METRICS, default_metrics

    by_default: dict[tuple[str, ...], list[str]] = {}
    for name in PRESETS:
        by_default.setdefault(tuple(default_metrics(name)), []).append(name)
    defaults = "; ".join(f"{', '.join(names)}: {','.join(ms)}" for ms, names in by_default.items())
    return ("Comma list of probe metrics with options as name:key=value, or 'none'. Metrics: "
            + ", ".join(METRICS) + f". Default per optimizer: {defaults}. The metric reference lists every option.")
