"""Symmetric linear operators on flat parameter vectors: the Hessian, its preconditioned form, dense matrices.

Every operator maps a flat vector v (d,) to A v and a stack of rows V (m, d) to the rows of A Vᵀ, keeps the
dtype and device of the parameters, counts the products it computed (``n_hvp``), and can be viewed as a
``scipy.sparse.linalg.LinearOperator`` (``to_scipy()``) for use with scipy's solvers.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidValueError

__all__ = ["CurvatureOperator", "HessianOperator", "PreconditionedOperator", "DenseOperator"]


class CurvatureOperator:
    """Base class: a symmetric d×d operator applied to flat torch vectors."""

    dim: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor:
        """A v for one flat vector v of shape (d,)."""
        raise NotImplementedError

    def matmat(self, V: Tensor) -> Tensor:
        """Rows of A Vᵀ for the rows of V, shape (m, d) → (m, d)."""
        return torch.stack([self.matvec(v) for v in V])

    @property
    def n_hvp(self) -> int:
        """Number of operator-vector products computed so far."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v) if v.dim() == 1 else self.matmat(v.T).T

    def _check(self, v: Tensor) -> Tensor:
        if v.shape[-1] != self.dim:
            raise ValueError(f"vector of length {v.shape[-1]} for an operator of dimension {self.dim}")
        return v.to(device=self.device, dtype=self.dtype)

    def to_scipy(self):
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` on numpy arrays (products are counted)."""
        from scipy.sparse.linalg import LinearOperator

        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.as_tensor(np.ascontiguousarray(x).reshape(-1), dtype=self.dtype, device=self.device)
            return self.matvec(v).detach().cpu().numpy()

        def mm(X: np.ndarray) -> np.ndarray:
            V = torch.as_tensor(np.ascontiguousarray(X.T), dtype=self.dtype, device=self.device)
            return self.matmat(V).detach().cpu().numpy().T

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=np_dtype)


class HessianOperator(CurvatureOperator):
    """H(θ) of an :class:`~eos_probe.objective.Objective` at a fixed θ, by Hessian-vector products.

    ``backend`` is "fwd-rev" (forward-over-reverse torch.func, vmapped over several vectors),
    "double-backward" (a gradient graph built once at θ, batched grads) or "auto" (the faster of the two,
    timed once per objective). The objective's micro-batches are summed with their sizes as weights, so
    products do not depend on the chunking beyond round-off.
    """

    def __init__(self, objective, theta: Tensor, backend: str = "auto") -> None:
        if theta.dim() != 1 or theta.shape[0] != objective.dim:
            raise InvalidValueError(f"theta must be one flat vector of length {objective.dim}, got shape {tuple(theta.shape)}")
        self.objective = objective
        self.theta = theta.detach()
        self._hvp = objective.hvp_at(self.theta, backend)
        self.backend = getattr(self._hvp, "name", backend)
        self.dim = objective.dim
        self.dtype = theta.dtype
        self.device = theta.device

    def matvec(self, v: Tensor) -> Tensor:
        return self._hvp.matvec(self._check(v))

    def matmat(self, V: Tensor) -> Tensor:
        if V.shape[0] == 0:
            return V.new_zeros((0, self.dim))
        return self._hvp.matmat(self._check(V))

    @property
    def n_hvp(self) -> int:
        return self._hvp.n_hvp

    def __repr__(self) -> str:
        return f"HessianOperator(dim={self.dim}, backend={self.backend!r}, n_hvp={self.n_hvp})"


class PreconditionedOperator(CurvatureOperator):
    """P^{-1/2} H P^{-1/2} for a diagonal preconditioner P = diag(p), p > 0 (Adam's P of docs/theory.md §3).

    Symmetric, with the spectrum of P⁻¹H, so Lanczos, Hutchinson and SLQ apply unchanged; each product
    costs one product of H (``n_hvp`` is H's counter).

    Theory: [docs/theory.md#metric-precond_lambda_max][metric-precond_lambda_max].
    """

    def __init__(self, H: CurvatureOperator, p: Tensor) -> None:
        p = torch.as_tensor(p).reshape(-1)
        if p.shape[0] != H.dim:
            raise InvalidValueError(f"preconditioner has {p.shape[0]} entries but the Hessian has dimension {H.dim}")
        if not bool(torch.all(p > 0)) or not bool(torch.all(torch.isfinite(p))):
            raise InvalidValueError("the preconditioner must be positive and finite everywhere (Adam's P = sqrt(v)+eps)")
        self.H = H
        self.p = p.to(device=H.device, dtype=H.dtype)
        self.scale = self.p.rsqrt()
        self.dim, self.dtype, self.device = H.dim, H.dtype, H.device

    def matvec(self, v: Tensor) -> Tensor:
        return self.scale * self.H.matvec(self.scale * self._check(v))

    def matmat(self, V: Tensor) -> Tensor:
        return self.scale * self.H.matmat(self.scale * self._check(V))

    @property
    def n_hvp(self) -> int:
        return self.H.n_hvp

    def __repr__(self) -> str:
        return f"PreconditionedOperator(dim={self.dim}, H={self.H!r})"


class DenseOperator(CurvatureOperator):
    """An explicit symmetric matrix (numpy array or torch tensor), for tests and small models."""

    def __init__(self, matrix, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        A = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, Tensor) else matrix)
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise InvalidValueError(f"a dense operator needs a square matrix, got shape {tuple(A.shape)}")
        if not A.is_floating_point():
            A = A.to(torch.float64)
        self.matrix = A.to(device=device or A.device, dtype=dtype or A.dtype)
        self.dim = A.shape[0]
        self.dtype, self.device = self.matrix.dtype, self.matrix.device
        self._count = 0

    def matvec(self, v: Tensor) -> Tensor:
        self._count += 1
        return self.matrix @ self._check(v)

    def matmat(self, V: Tensor) -> Tensor:
        self._count += V.shape[0]
        return self._check(V) @ self.matrix.T

    @property
    def n_hvp(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"DenseOperator(dim={self.dim}, dtype={self.dtype})"
