"""The run's theory setting as the probe needs it: its band (T, c) and the keywords of `theory.ms_terms`.

The config → theory translation lives in the run-file reader today (``run.band_for``, ``run.band_settings``);
this module is the only place the probe calls it. TODO(lead): switch both to ``theory.Setting.from_config``.
"""
from __future__ import annotations

from typing import Any


def band_for_config(config: dict[str, Any], dim: int | None):
    """The theory's `Band` (threshold T, c, conventions, warnings) for a run's config dict and dimension."""
    from ..run import band_for

    return band_for(config, dim)


def theory_keywords(config: dict[str, Any], dim: int | None) -> dict[str, Any]:
    """Keyword arguments of `theory.band` / `theory.ms_terms` (lr, optimizer, queries, momentum, ...)."""
    from ..run import band_settings

    return band_settings(config, dim)


def band_formula(band) -> str:
    """The band's conditions in words, stored beside it under /bands."""
    if band.kind == "classical":
        return f"first order: {band.quantity} < T"
    return (f"necessary: {band.quantity} < T; sufficient: {band.quantity} + c*{band.lambda_max_quantity} < T; "
            f"exact: S(lr) < 1 (probe/ms_margin)")
