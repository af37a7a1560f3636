"""The run's band (T, c) as the probe stores it under /bands, from the theory's `Setting.from_config`."""
from __future__ import annotations

from typing import Any


def band_for_config(config: dict[str, Any], dim: int | None):
    """The theory's `Band` (threshold T, c, conventions, warnings) for a run's config dict and dimension."""
    from ..theory import band_for

    return band_for(config, dim)


def band_formula(band) -> str:
    """The band's conditions in words, stored beside it under /bands."""
    if band.kind == "classical":
        return f"first order: {band.quantity} < T"
    return (f"necessary: {band.quantity} < T; sufficient: {band.quantity} + c*{band.lambda_max_quantity} < T; "
            f"exact: S(lr) < 1 (probe/ms_margin)")
