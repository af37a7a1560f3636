"""The probe's memory budget, in bytes a user can check (`--probe-memory 2GB`). A leaf: no package imports
but the errors. What a probe costs is measured by the trainer (`eos_probe.trainer.price`) and the bench
(`eos_probe.bench_probe`)."""
from __future__ import annotations

import re

from .errors import UserError

#: default peak-memory budget of one probe (on top of the model and data), in bytes
DEFAULT_PROBE_MEMORY = 2 * 2**30

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """'2GB', '512MB', '1.5g', 3e9 → bytes (binary units: 1 GB = 2**30 B). Raises UserError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise UserError(f"probe memory must be a size such as 2GB or 512MB, got {text!r}")
        value, unit = float(m.group(1)), m.group(2).lower()
    n = int(value * _UNITS[unit])
    if n < 16 * 2**20:
        raise UserError(f"probe memory must be at least 16MB, got {text!r}")
    return n
