"""Dense Hessians of small models (tests, cross-checks, the edge experiment's exact spectrum)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, hessian, jacrev

from ..errors import InvalidValueError

__all__ = ["dense_hessian", "dense_hessian_chunked", "MAX_DENSE_DIM"]

#: refuse beyond this many parameters (a d×d float64 matrix of 20k parameters is 3.2 GB)
MAX_DENSE_DIM = 20_000


def _check(objective) -> None:
    if objective.dim > MAX_DENSE_DIM:
        raise InvalidValueError(f"dense Hessian of {objective.dim} parameters is too large (limit {MAX_DENSE_DIM}); "
                        "use the matrix-free estimators")


def dense_hessian(objective, theta: Tensor) -> Tensor:
    """The full d×d Hessian of the objective's loss at θ by ``torch.func.hessian`` (forward over reverse).

    Holds d copies of the activations at once: use :func:`dense_hessian_chunked` beyond a few hundred
    parameters (the 1,694-parameter CNN on 200 images needs > 20 GB this way)."""
    _check(objective)
    return hessian(objective._loss_single)(theta.detach())


def dense_hessian_chunked(objective, theta: Tensor, chunk: int = 64) -> np.ndarray:
    """The dense Hessian (float64 numpy, symmetrised) by reverse over reverse, ``chunk`` columns at a time:
    the same truth as :func:`dense_hessian` with memory bounded by ``chunk`` copies of the backward graph."""
    _check(objective)
    H = jacrev(grad(objective._loss_single), chunk_size=max(1, int(chunk)))(theta.detach())
    H = H.detach().to("cpu", torch.float64).numpy()
    return 0.5 * (H + H.T)
