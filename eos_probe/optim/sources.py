"""Gradient sources: turn the objective at θ into a direction g (DESIGN.md, "source × rule").

Every source is shape-generic: θ may be (d,) or (K, d) (K stacked copies: an η sweep or Monte-Carlo
seeds), provided the objective's `loss` returns shape θ.shape[:-1].
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UserError

DIRECTIONS = ("gaussian", "sphere", "rademacher")
DIFFERENCES = ("central", "forward")

#: purposes of per-step random streams; each draws from its own generator seed
PURPOSE_DIRECTIONS = 1
PURPOSE_PROBE = 2

_MASK64 = (1 << 64) - 1


def stream_seed(seed: int, step: int, purpose: int) -> int:
    """A well-mixed 63-bit seed for (run seed, step, purpose) — splitmix64 of a packed key.

    Every random draw of a run is seeded this way, so a step's randomness does not depend on what ran
    before it: resuming, probing or skipping steps never shifts the stream.
    """
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + purpose * 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class ExactSource:
    """First-order: the exact full-batch gradient."""

    name = "exact"
    evaluates_loss = True

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {}

    def __call__(self, objective, theta: Tensor, state: dict, step: int) -> tuple[Tensor, dict]:
        if theta.dim() == 1:
            loss, acc, g = objective.value_and_grad(theta)
        else:
            loss, acc, g = _batched_value_and_grad(objective, theta)
        return g, {"loss": loss, "accuracy": acc}

    def config(self) -> dict:
        return {"source": self.name}


def _batched_value_and_grad(objective, theta: Tensor):
    if hasattr(objective, "value_and_grad_batched"):
        return objective.value_and_grad_batched(theta)
    try:
        return objective.value_and_grad(theta)  # the quadratic is batched natively
    except Exception:  # noqa: BLE001 - fall back to a loop over copies
        parts = [objective.value_and_grad(t) for t in theta]
        return tuple(torch.stack([p[i] for p in parts]) for i in range(3))


class TwoPointSource:
    """Zeroth-order two-point estimator (THEORY.md §1).

    central: g = (1/q) Σ_k [L(θ+μu_k) − L(θ−μu_k)]/(2μ) · u_k;  forward: [L(θ+μu_k) − L(θ)]/μ · u_k.
    Directions are regenerated from a per-step seed of a dedicated generator (no stored list), and θ is
    never modified: perturbed points are written out of place into a fixed scratch buffer, so θ comes
    back bitwise (the ±μ in-place trick does not, and adds a random walk to the trajectory).
    """

    name = "two_point"
    evaluates_loss = False

    def __init__(self, queries: int = 1, mu: float = 1e-3, directions: str = "gaussian",
                 difference: str = "central", seed: int = 0) -> None:
        if queries < 1:
            raise UserError(f"queries must be a positive integer, got {queries}")
        if not (mu > 0 and math.isfinite(mu)):
            raise UserError(f"mu (smoothing radius) must be a positive finite number, got {mu}")
        if directions not in DIRECTIONS:
            raise UserError(f"unknown direction distribution {directions!r}; choose one of {', '.join(DIRECTIONS)}")
        if difference not in DIFFERENCES:
            raise UserError(f"unknown finite difference {difference!r}; choose one of {', '.join(DIFFERENCES)}")
        self.queries, self.mu, self.directions, self.difference, self.seed = queries, mu, directions, difference, seed
        self._buffers: dict[str, Tensor] | None = None
        self._gen: torch.Generator | None = None

    def config(self) -> dict:
        return {"source": self.name, "queries": self.queries, "mu": self.mu,
                "directions": self.directions, "difference": self.difference}

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {}

    def _scratch(self, theta: Tensor) -> dict[str, Tensor]:
        b = self._buffers
        if b is None or b["u"].shape != theta.shape or b["u"].dtype != theta.dtype or b["u"].device != theta.device:
            b = {k: torch.empty_like(theta) for k in ("u", "point", "g")}
            self._buffers = b
            self._gen = torch.Generator(device=theta.device)
        return b

    def sample(self, out: Tensor, gen: torch.Generator) -> Tensor:
        """Fill `out` with i.i.d. directions with E[u uᵀ] = I (per row of the last dimension)."""
        if self.directions == "rademacher":
            out.bernoulli_(0.5, generator=gen).mul_(2).sub_(1)
        else:
            torch.randn(out.shape, generator=gen, out=out)
            if self.directions == "sphere":
                out.mul_(math.sqrt(out.shape[-1]) / out.norm(dim=-1, keepdim=True))
        return out

    def __call__(self, objective, theta: Tensor, state: dict, step: int) -> tuple[Tensor, dict]:
        b = self._scratch(theta)
        u, point, g = b["u"], b["point"], b["g"]
        gen = self._gen
        gen.manual_seed(stream_seed(self.seed, step, PURPOSE_DIRECTIONS))
        mu, q = self.mu, self.queries
        g.zero_()
        f0 = objective.loss(theta) if self.difference == "forward" else None
        for _ in range(q):
            self.sample(u, gen)
            torch.add(theta, u, alpha=mu, out=point)
            lp = objective.loss(point)
            if f0 is None:
                torch.add(theta, u, alpha=-mu, out=point)
                lm = objective.loss(point)
                coef = (lp - lm) / (2 * mu * q)
            else:
                lm = f0
                coef = (lp - f0) / (mu * q)
            # coef stays a tensor: no host-device synchronisation on the hot path
            g.addcmul_(u, coef.unsqueeze(-1) if coef.dim() else coef)
        # the mean of the last pair is a free O(μ²)-biased loss reading, used for divergence checks
        return g, {"loss_pm": 0.5 * (lp + lm)}
