"""Click callbacks shared by the verbs."""
from __future__ import annotations

import math

import click


def finite(ctx, param, value):
    """Reject inf/NaN for a float option (click's FLOAT type accepts them) with click's one-line error."""
    if value is not None and isinstance(value, float) and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}")
    return value
