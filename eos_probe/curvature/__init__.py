"""Curvature engine: matrix-free operators on flat parameter vectors and estimators over them.

Every estimator works on any :class:`CurvatureOperator` (the Hessian of an objective, its Adam-preconditioned
form, or a dense matrix) and returns an :class:`Estimate` (value, error, Hessian-vector products spent,
converged flag, extras for warm starts). Randomness comes only from the ``generator`` passed in.
"""
from .commutator import commutator_ratio, directional_curvature
from .dense import dense_hessian, dense_hessian_chunked
from .estimate import Density, Estimate
from .ggn import ggn_quadratic, ggn_trace
from .lanczos import lambda_max, top_k
from .operators import CurvatureOperator, DenseOperator, HessianOperator, PreconditionedOperator
from .slq import spectral_density, trace_fn
from .trace import trace

__all__ = [
    "CurvatureOperator", "HessianOperator", "PreconditionedOperator", "DenseOperator",
    "Estimate", "Density",
    "lambda_max", "top_k", "trace", "spectral_density", "trace_fn",
    "commutator_ratio", "directional_curvature", "dense_hessian", "dense_hessian_chunked", "ggn_trace", "ggn_quadratic",
]
