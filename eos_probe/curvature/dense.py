"""Dense Hessians of small models (tests, cross-checks)."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import hessian

from ..errors import InvalidValueError

__all__ = ["dense_hessian", "MAX_DENSE_DIM"]

#: refuse beyond this many parameters (a d×d float64 matrix of 20k parameters is 3.2 GB)
MAX_DENSE_DIM = 20_000


def dense_hessian(objective, theta: Tensor) -> Tensor:
    """The full d×d Hessian of the objective's loss at θ by ``torch.func.hessian`` (forward over reverse)."""
    if objective.dim > MAX_DENSE_DIM:
        raise InvalidValueError(f"dense Hessian of {objective.dim} parameters is too large (limit {MAX_DENSE_DIM}); "
                        "use the matrix-free estimators")
    return hessian(objective._loss_single)(theta.detach())
