"""The orthonormal Krylov basis the Lanczos routines grow: vectors stored row-wise, full re-orthogonalisation."""
from __future__ import annotations

import torch
from torch import Tensor


class KrylovBasis:
    """Orthonormal Lanczos vectors stored row-wise in a tensor that grows in chunks."""

    def __init__(self, d: int, dtype: torch.dtype, device: torch.device, chunk: int = 32) -> None:
        self.buf = torch.empty((chunk, d), dtype=dtype, device=device)
        self.n = 0

    def append(self, q: Tensor) -> None:
        if self.n == self.buf.shape[0]:
            self.buf = torch.cat([self.buf, torch.empty_like(self.buf[: max(32, self.n // 2)])])
        self.buf[self.n] = q
        self.n += 1

    @property
    def Q(self) -> Tensor:
        return self.buf[: self.n]

    def orthogonalize(self, w: Tensor) -> Tensor:
        """w minus its projection on the basis, classical Gram–Schmidt applied twice ("twice is enough")."""
        Q = self.Q
        for _ in range(2):
            w = w - Q.T @ (Q @ w)
        return w
