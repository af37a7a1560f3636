"""The metric registry and the `Metric` base class every probe metric derives from.

`METRICS` maps a metric's name to its class in registration order, which is also the order the probe
computes them in: a shared quantity (a Lanczos run, a deflated probe set) is made — and its products
charged — by the first metric that asks for it (``probe.shared``). The built-in metrics are registered in
one fixed list in ``probe.metrics``; a plug-in registers more with `@register_metric`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import UserError, did_you_mean

if TYPE_CHECKING:
    from .context import ProbeContext

#: name -> metric class, in the order metrics are computed (shared quantities are made by the first user)
METRICS: dict[str, type["Metric"]] = {}


def register_metric(cls: type["Metric"]) -> type["Metric"]:
    """Class decorator: make a metric available to `--probe` under `cls.name`.

    Args:
        cls: a `Metric` subclass with a non-empty class attribute `name`.

    Returns:
        `cls` itself (registered after every metric registered before it).

    Raises:
        TypeError: `cls` has no `name`.
    """
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    METRICS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Column:
    """One /probe dataset written by a metric: `shape` is the shape of one row."""

    name: str
    dtype: str = "f8"
    shape: tuple[int, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)


class Metric:
    """Base class: `name`, `description`, option `defaults`, `columns()` and `compute(ctx) -> row`.

    `compute` returns a dict keyed by column name (without "step"). Spectrum metrics (`spectrum = True`)
    return {"nodes": ..., "weights": ..., "nhvp": ...} and are written to /spectra/<name>.

    Args:
        run_settings: the probe's settings (config dict, dim, band, objective, optimizer, θ; see `build_probe`).
        **options: the metric's options from its spec; unknown keys are refused.

    Raises:
        UserError: an unknown option or an invalid value (`check`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    adam_only: ClassVar[bool] = False
    spectrum: ClassVar[bool] = False
    operator: ClassVar[str] = "H"

    def __init__(self, run_settings: dict[str, Any], **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise UserError(f"probe metric {self.name!r} has no option {', '.join(unknown)}; valid options: {valid}"
                            + did_you_mean(unknown[0], self.defaults))
        self.options = {**self.defaults, **options}
        self.run = run_settings
        self.check()

    def check(self) -> None:
        """Validate options (raise UserError)."""

    @property
    def operator_name(self) -> str:
        """The operator as written to the file's attributes."""
        return "H" if self.operator == "H" else "P^-1/2 H P^-1/2 (Adam's P; spectrum of P^-1 H)"

    def columns(self) -> list[Column]:
        """The /probe datasets this metric writes: value, `_err`, `_nhvp` (subclasses add more)."""
        base = {"description": self.description, "operator": self.operator_name,
                "options": dict(self.options)}
        return [Column(self.name, attrs=base),
                Column(f"{self.name}_err", attrs={"description": f"uncertainty of {self.name}"}),
                Column(f"{self.name}_nhvp", "i8", attrs={"description": f"Hessian-vector products spent on {self.name}"})]

    def spectrum_shape(self) -> tuple[int, ...]:
        """Row shape of a spectrum metric's nodes and weights."""
        raise NotImplementedError

    def compute(self, ctx: "ProbeContext") -> dict[str, Any]:  # pragma: no cover - abstract
        """This probe step's row, keyed by column name."""
        raise NotImplementedError

    def nan_row(self) -> dict[str, Any]:
        """The row logged where θ is not finite: NaN values, zero counts."""
        if self.spectrum:
            shape = self.spectrum_shape()
            return {"nodes": np.full(shape, np.nan), "weights": np.full(shape, np.nan), "nhvp": 0}
        return {c.name: (np.full(c.shape, np.nan) if c.dtype == "f8" else np.zeros(c.shape, c.dtype))
                for c in self.columns()}


def positive_int(metric: str, key: str, value: Any, minimum: int = 1) -> None:
    """Check a metric option is an integer ≥ `minimum` (a bool is not); raises UserError naming the metric."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"probe metric {metric!r}: {key} must be an integer >= {minimum}, got {value!r}")


def positive_float(metric: str, key: str, value: Any, allow_none: bool = False) -> None:
    """Check a metric option is a finite number > 0 (or None if allowed); raises UserError naming the metric."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise UserError(f"probe metric {metric!r}: {key} must be a positive number, got {value!r}")
