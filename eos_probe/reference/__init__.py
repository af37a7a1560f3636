"""Reference back ends for cross-checking the curvature engine (optional dependencies)."""
from .pyhessian import PyHessianReference, pyhessian_available

__all__ = ["PyHessianReference", "pyhessian_available"]
