"""The probe: curvature measured every N steps and appended to the run file (docs/theory.md §4).

A metric is a small class registered by name (``registry``: one registry, `METRICS`; the built-in metrics by
theme under ``metrics``); the trainer only knows the `Probe` interface (``runner``: `declare`, `due`, `run`,
`state_dict`, `load_state_dict`), so adding a metric never edits it. `build_probe` (``spec``) turns the
`--probe` specs into a `Probe`; a metric sees one `ProbeContext` per step (``context``).

Metric specs on the command line are `name` or `name:key=value:key=value`, e.g.
`--probe lambda_max,trace:method=hutch++:n_matvec=60,top_k:k=8`.

Determinism. Every random draw of the probe at step t comes from generators seeded with
`stream_seed(stream_seed(seed, t, PURPOSE_PROBE), crc32(quantity), 0)`: one stream per quantity
(`lanczos/H`, `rest/H`, `density/H`, ...), and probing never touches the training streams. The Lanczos run
and the deflated probe set are shared between metrics with the union of their options (``shared``), so a
metric's value can depend on which other metrics run; the file records the resolved options. Lanczos
warm-start vectors and the chosen HVP back end are part of `state_dict()`, so a resumed run logs bitwise the
same probe values as an uninterrupted one (same device and threads).
"""
from __future__ import annotations

from .context import ProbeContext
from .metrics import (TRACE_METHODS, CoCDEdge, CoCDStaleness, CommutatorRatio, Density, DirCurvature, EntkFidelity,
                      LambdaMax, MSMargin, PrecondDensity, PrecondLambdaMax, PrecondTrace, TopK, Trace,
                      ms_term_function)
from .registry import METRICS, Column, Metric, register_metric
from .runner import Probe
from .shared import NHVP_ATTRIBUTION
from .spec import build_probe, default_metrics, parse_spec

__all__ = ["METRICS", "NHVP_ATTRIBUTION", "TRACE_METHODS", "CoCDEdge", "CoCDStaleness", "Column", "CommutatorRatio",
           "Density", "DirCurvature", "EntkFidelity", "LambdaMax", "MSMargin", "Metric", "PrecondDensity",
           "PrecondLambdaMax", "PrecondTrace", "Probe", "ProbeContext", "TopK", "Trace", "build_probe",
           "default_metrics", "ms_term_function", "parse_spec", "register_metric"]
