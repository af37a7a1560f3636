"""The built-in probe metrics, by theme, and the one list that registers them.

The order of `BUILTIN` is the order the probe computes and declares them (``registry.METRICS``): a shared
Lanczos run or deflated probe set is charged to the first metric that uses it, so this order is part of
what a run file records (``/probe`` attribute ``nhvp_attribution``) and must not change.
"""
from __future__ import annotations

from ..registry import register_metric
from .curvature import TRACE_METHODS, Density, DirCurvature, LambdaMax, TopK, Trace
from .preconditioned import CommutatorRatio, PrecondDensity, PrecondLambdaMax, PrecondTrace
from .stability import MSMargin, ms_term_function
from .systems import CoCDEdge, CoCDStaleness, EntkFidelity
from .forgetting import CurvatureExcess, Forgetting, Flatness, HybridBands, ZODescent

#: the built-in metrics in registration (= computation) order
BUILTIN = (LambdaMax, PrecondLambdaMax, TopK, Trace, PrecondTrace, Density, PrecondDensity, MSMargin,
           CommutatorRatio, DirCurvature, CoCDEdge, CoCDStaleness, EntkFidelity,
           CurvatureExcess, Forgetting, ZODescent, Flatness, HybridBands)

for _cls in BUILTIN:
    register_metric(_cls)

__all__ = ["BUILTIN", "TRACE_METHODS", "CoCDEdge", "CoCDStaleness", "CommutatorRatio", "CurvatureExcess", "Density",
           "DirCurvature", "EntkFidelity", "Flatness", "Forgetting", "HybridBands", "LambdaMax", "MSMargin",
           "PrecondDensity", "PrecondLambdaMax", "PrecondTrace", "TopK", "Trace", "ZODescent", "ms_term_function"]
