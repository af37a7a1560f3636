"""A quadratic objective L(θ) = ½ θᵀ H θ with a chosen spectrum: the local model of linear stability.

It speaks the same protocol as `eos_probe.objective.Objective` (flat θ, batched over leading
dimensions), so the project's own optimizers and curvature code run on it unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor


class QuadraticObjective:
    """L(θ) = ½ θᵀ H θ with H = Q diag(λ) Qᵀ (Q = I unless `basis` is given)."""

    loss_name = "quadratic"

    def __init__(self, eigenvalues, basis=None, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> None:
        self.eigenvalues = torch.as_tensor(eigenvalues, dtype=dtype, device=device)
        d = self.eigenvalues.numel()
        self.basis = None if basis is None else torch.as_tensor(basis, dtype=dtype, device=device)
        if self.basis is not None and self.basis.shape != (d, d):
            raise ValueError(f"basis must be {d}x{d}, got {tuple(self.basis.shape)}")
        self.matrix = (self.eigenvalues.diag() if self.basis is None
                       else self.basis @ torch.diag(self.eigenvalues) @ self.basis.T)
        self.dim = d
        self.device = self.matrix.device

    def hvp(self, theta: Tensor, v: Tensor) -> Tensor:
        """H v (independent of θ); batched over leading dimensions of v."""
        if self.basis is None:
            return v * self.eigenvalues
        return v @ self.matrix  # H symmetric

    def loss(self, theta: Tensor) -> Tensor:
        """½ θᵀHθ, shape θ.shape[:-1]."""
        return 0.5 * (theta * self.hvp(theta, theta)).sum(-1)

    def grad(self, theta: Tensor) -> Tensor:
        return self.hvp(theta, theta)

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g = self.grad(theta)
        return 0.5 * (theta * g).sum(-1), torch.full_like(theta[..., 0], float("nan")), g

    value_and_grad_batched = value_and_grad  # stacked θ (K, d) natively (eos_probe.optim.StackedGradients)

    def evaluate(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return self.loss(theta), torch.full_like(theta[..., 0], float("nan"))
