"""Gradient sources: turn the objective at θ into a direction g (docs/design.md, "Optimizers").

Every source is shape-generic: θ may be (d,) or (K, d) (K stacked copies: an η sweep or Monte-Carlo
seeds), provided the objective's `loss` returns shape θ.shape[:-1].
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidValueError
from ..objective import activation_bytes
from ..presets import OPTIONS, default
from ..theory.shaping import norm_inflation
from ..zo_monitor import curvature_sample
from .protocols import StackedGradients
from .shaping import rise_blocks, rise_shape

#: a forward and a backward pass in forward-pass equivalents (backward ≈ two forwards)
GRADIENT_FORWARDS = 3.0

#: purposes of per-step random streams; each draws from its own generator seed
PURPOSE_DIRECTIONS = 1
PURPOSE_PROBE = 2
#: mixes a block or group index into a step's seed (RISE blocks, hybrid groups)
PURPOSE_PART = 3

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
    zeroth_order = False
    evaluates_loss = True

    @classmethod
    def from_settings(cls, s: Any) -> "ExactSource":
        """The source of a preset (`eos_probe.optim.make_optimizer`): it takes no options."""
        return cls()

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {}

    def __call__(self, objective, theta: Tensor, state: dict, step: int) -> tuple[Tensor, dict]:
        if theta.dim() == 1:
            loss, acc, g = objective.value_and_grad(theta)
        else:
            loss, acc, g = _batched_value_and_grad(objective, theta)
        return g, {"loss": loss, "accuracy": acc}

    def forwards_per_step(self, dim: int) -> float:
        return GRADIENT_FORWARDS

    def config(self) -> dict:
        return {"source": self.name}


def _batched_value_and_grad(objective, theta: Tensor):
    """(loss, accuracy, g) of stacked copies θ (K, d): one call where the objective declares the
    capability (`StackedGradients`), else one `value_and_grad` per copy."""
    if isinstance(objective, StackedGradients):
        return objective.value_and_grad_batched(theta)
    parts = [objective.value_and_grad(t) for t in theta]
    return tuple(torch.stack([p[i] for p in parts]) for i in range(3))


QUERY_MODES = ("auto", "loop", "batched")


class TwoPointSource:
    """Zeroth-order two-point estimator (docs/theory.md §1).

    central: g = (1/q) Σ_k [L(θ+μu_k) − L(θ−μu_k)]/(2μ) · u_k;  forward: [L(θ+μu_k) − L(θ)]/μ · u_k.
    Directions are regenerated from a per-step seed of a dedicated generator (no stored list), and θ is
    never modified: perturbed points are written out of place into a fixed scratch buffer, so θ comes
    back bitwise (the ±μ in-place trick does not, and adds a random walk to the trajectory).

    Stacked θ (K, d): by default every row draws its own directions (K independent estimates, as Monte
    Carlo wants); with `shared_directions` one u of shape (d,) is drawn per query and broadcast to all
    rows, which is what K separate runs of one seed see (an η sweep) and is K times cheaper to draw.

    `query_mode`: "loop" evaluates the 2q points one after another; "batched" stacks them into one
    (2q, …, d) tensor for one `objective.loss` call (vmapped where the objective vectorises stacks);
    "auto" batches where that is no slower (see `batch_queries`). Both modes draw the same directions
    from the same stream, so they differ only by float round-off in the losses.

    `norm_match`: divide the estimate by √κ, κ = `eos_probe.theory.shaping.norm_inflation(q, d, directions)`,
    so E‖g‖² = ‖∇L‖² (μ → 0; docs/theory.md §5a). Gaussian and sphere directions only (Rademacher's κ
    depends on ∇L). The step is then ZO at the effective step η/√κ.

    Theory: [docs/theory.md#zo-estimator][zo-estimator].
    """

    name = "two_point"
    zeroth_order = True
    evaluates_loss = False

    def __init__(self, queries: int = default("queries"), mu: float = default("mu"),
                 directions: str = default("directions"), difference: str = default("difference"), seed: int = 0,
                 shared_directions: bool = False, query_mode: str = "auto",
                 norm_match: bool = default("norm_match")) -> None:
        for name, value in (("queries", queries), ("mu", mu), ("directions", directions),
                            ("difference", difference)):
            OPTIONS[name].check(value)
        if query_mode not in QUERY_MODES:
            raise InvalidValueError(f"unknown query mode {query_mode!r}; choose one of {', '.join(QUERY_MODES)}")
        self.queries, self.mu, self.directions, self.difference, self.seed = queries, mu, directions, difference, seed
        self.shared_directions = shared_directions
        self.query_mode = query_mode
        self.norm_match = bool(norm_match)
        if self.norm_match:
            norm_inflation(queries, 1, directions)  # validates the law early
        self._buffers: dict[str, Tensor] | None = None
        self._gen: torch.Generator | None = None
        self._batched: dict[tuple, bool] = {}

    @classmethod
    def from_settings(cls, s: Any) -> "TwoPointSource":
        """The source of a two-point preset (`eos_probe.optim.make_optimizer`)."""
        return cls(queries=s["queries"], mu=s["mu"], directions=s["directions"], difference=s["difference"],
                   seed=s.seed, norm_match=s["norm_match"])

    def forwards_per_step(self, dim: int) -> float:
        """2q loss evaluations (central) or q + 1 (forward)."""
        return float(2 * self.queries if self.difference == "central" else self.queries + 1)

    def config(self) -> dict:
        out = {"source": self.name, "queries": self.queries, "mu": self.mu,
               "directions": self.directions, "difference": self.difference}
        return {**out, "norm_match": True} if self.norm_match else out

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {}

    def _direction_shape(self, theta: Tensor) -> tuple[int, ...]:
        return tuple(theta.shape[-1:]) if self.shared_directions else tuple(theta.shape)

    def _scratch(self, theta: Tensor, batched: bool) -> dict[str, Tensor]:
        """Fixed buffers, reallocated only when θ's shape/dtype/device or the query mode changes."""
        n_dirs = self.queries if batched else 1
        n_points = (2 * self.queries if self.difference == "central" else self.queries) if batched else 1
        key = (tuple(theta.shape), theta.dtype, theta.device, batched)
        b = self._buffers
        if b is None or b["key"] != key:
            like = dict(dtype=theta.dtype, device=theta.device)
            b = {"key": key, "u": torch.empty(n_dirs, *self._direction_shape(theta), **like),
                 "point": torch.empty(n_points, *theta.shape, **like), "g": torch.empty_like(theta)}
            self._buffers = b
        if self._gen is None or self._gen.device != theta.device:
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

    def batch_queries(self, objective, theta: Tensor) -> bool:
        """Whether this step evaluates its perturbed points in one batched call (decided once per shape).

        The rule uses sizes only, never timings, so a config always takes the same path (the two paths
        round differently). q = 1 never batches: its two points cost two forwards either way (batching
        them measured 0-7% slower on CPU). For q ≥ 2, objectives without a network (the quadratic)
        always batch; a network batches where it evaluates stacks in one vmapped call
        (`objective.vectorizes_stacks`: small-activation models on CPU, every model on CUDA) and, on
        CUDA, while (#points × #copies) × (all activations of the batch) fits in a quarter of the
        device memory. (On CPU, vmapped conv/attention models measured up to 2x slower than the loop.)
        """
        if self.query_mode != "auto" or self.queries == 1:
            return self.query_mode == "batched"
        n_points = 2 * self.queries if self.difference == "central" else self.queries
        key = (tuple(theta.shape), theta.device)
        if key not in self._batched:
            self._batched[key] = _fits_batched(objective, theta, n_points)
        return self._batched[key]

    def __call__(self, objective, theta: Tensor, state: dict, step: int) -> tuple[Tensor, dict]:
        g, info = self._estimate(objective, theta, step)
        if self.norm_match:
            g.div_(math.sqrt(norm_inflation(self.queries, theta.shape[-1], self.directions)))
        return g, info

    def _estimate(self, objective, theta: Tensor, step: int) -> tuple[Tensor, dict]:
        batched = self.batch_queries(objective, theta)
        b = self._scratch(theta, batched)
        u, point, g = b["u"], b["point"], b["g"]
        gen = self._gen
        gen.manual_seed(stream_seed(self.seed, step, PURPOSE_DIRECTIONS))
        mu, q = self.mu, self.queries
        f0 = objective.loss(theta) if self.difference == "forward" else None
        if batched:
            return self._batched_step(objective, theta, u, point, g, gen, f0)
        g.zero_()
        u = u[0]
        lps, lms = [], []
        for _ in range(q):
            self.sample(u, gen)
            torch.add(theta, u, alpha=mu, out=point[0])
            lp = objective.loss(point[0])
            if f0 is None:
                torch.add(theta, u, alpha=-mu, out=point[0])
                lm = objective.loss(point[0])
                coef = (lp - lm) / (2 * mu * q)
                lps.append(lp)
                lms.append(lm)
            else:
                lm = f0
                coef = (lp - f0) / (mu * q)
            # coef stays a tensor: no host-device synchronisation on the hot path
            g.addcmul_(u, coef.unsqueeze(-1) if coef.dim() else coef)
        # the mean of the last pair is a free O(μ²)-biased loss reading, used for divergence checks
        info = {"loss_pm": 0.5 * (lp + lm)}
        if f0 is None:  # the pairs' losses feed the free curvature monitor (eos_probe.zo_monitor)
            info["query_losses"] = (torch.stack(lps), torch.stack(lms))
        return g, info

    def _batched_step(self, objective, theta: Tensor, u: Tensor, point: Tensor, g: Tensor,
                      gen: torch.Generator, f0: Tensor | None) -> tuple[Tensor, dict]:
        mu, q = self.mu, self.queries
        for k in range(q):  # one draw per query, in loop order: the same stream as the loop mode
            self.sample(u[k], gen)
        # u (q, d) against θ (K, d): broadcast each shared direction over the copies
        ub = u.view(q, *([1] * (theta.dim() - u.dim() + 1)), *u.shape[1:])
        torch.add(theta, ub, alpha=mu, out=point[:q])
        if f0 is None:
            torch.add(theta, ub, alpha=-mu, out=point[q:])
        losses = objective.loss(point)  # (n_points, *θ.shape[:-1])
        lp = losses[:q]
        if f0 is None:
            lm = losses[q:]
            coef = (lp - lm) / (2 * mu * q)
        else:
            lm = f0.expand_as(lp)
            coef = (lp - f0) / (mu * q)
        torch.sum(coef.unsqueeze(-1) * ub, dim=0, out=g)
        info = {"loss_pm": 0.5 * (lp[-1] + lm[-1])}
        if f0 is None:
            info["query_losses"] = (lp, lm)
        return g, info

    def curvature_sample(self, info: dict, loss0: Tensor) -> Tensor | None:
        """This step's Hutchinson sample of Tr H per copy from its query losses and the loss at θ
        (`eos_probe.zo_monitor.curvature_sample`); None for forward differences (no symmetric pair)."""
        if "query_losses" not in info:
            return None
        lp, lm = info["query_losses"]
        return curvature_sample(lp, lm, loss0, self.mu)


def _fits_batched(objective, theta: Tensor, n_points: int) -> bool:
    model, x = getattr(objective, "model", None), getattr(objective, "x", None)
    if model is None or x is None:
        return True
    if not getattr(objective, "vectorizes_stacks", True):
        return False
    if theta.device.type != "cuda":
        return True
    total = activation_bytes(model, x)[1]
    width = n_points * math.prod(theta.shape[:-1])
    memory = torch.cuda.get_device_properties(theta.device).total_memory
    return width * total * int(x.shape[0]) <= memory // 4


def part_generator_for(seed: int, step: int, device: torch.device | str = "cpu"):
    """b ↦ a generator seeded from (seed, step, b) alone: stream_seed(seed, step, PURPOSE_DIRECTIONS) mixed
    with the index b. RISE's block b draws from it, so a step's draws never depend on what ran before."""
    base = stream_seed(seed, step, PURPOSE_DIRECTIONS)
    gen = torch.Generator(device=device)

    def generator_for(b: int) -> torch.Generator:
        return gen.manual_seed(stream_seed(base, b, PURPOSE_PART))

    return generator_for


class RiseSource:
    """RISE (docs/theory.md §5a): the exact gradient g, then per block b v_b = U_b(U_bᵀ g_b)/(q√κ_b),
    κ_b = (q+d_b+1)/q, U_b ~ N(0, I) regenerated from (seed, step, b) (`part_generator_for`).

    Blocks (`eos_probe.optim.shaping.rise_blocks`): ``"tensor"`` (one per parameter tensor, `sizes` in flat
    order; without sizes one block of all of θ) or a chunk length N. Stacked θ (K, d): every copy is shaped
    with the same draws, as K separate runs of one seed are.
    """

    name = "rise"
    zeroth_order = False
    evaluates_loss = True

    def __init__(self, queries: int = default("queries"), blocks: str | int = default("rise_blocks"),
                 sizes: list[int] | None = None, seed: int = 0) -> None:
        OPTIONS["queries"].check(queries)
        rise_blocks([1], blocks)  # validates the spec
        self.queries, self.blocks, self.seed = queries, blocks, seed
        self.sizes = list(sizes) if sizes is not None else None
        self._exact = ExactSource()

    @classmethod
    def from_settings(cls, s: Any) -> "RiseSource":
        """The source of the rise preset; its blocks are the parameter tensors `s.param_sizes` by default."""
        return cls(queries=s["queries"], blocks=s["rise_blocks"], sizes=s.param_sizes, seed=s.seed)

    def block_bounds(self, d: int) -> list[tuple[int, int]]:
        """(start, stop) of each block over θ of dimension d."""
        sizes = self.sizes if self.sizes is not None else [d]
        if sum(sizes) != d:
            raise InvalidValueError(f"RISE blocks: the parameter sizes sum to {sum(sizes)}, but θ has {d} entries")
        return rise_blocks(sizes, self.blocks)

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        return {}

    def __call__(self, objective, theta: Tensor, state: dict, step: int) -> tuple[Tensor, dict]:
        g, info = self._exact(objective, theta, state, step)
        blocks = self.block_bounds(theta.shape[-1])
        rows = [g] if g.dim() == 1 else list(g)
        v = torch.stack([rise_shape(r, blocks, self.queries, part_generator_for(self.seed, step, r.device))
                         for r in rows])
        return (v[0] if g.dim() == 1 else v), info

    def forwards_per_step(self, dim: int) -> float:
        """One exact gradient; the shaping is matrix work, no loss evaluation."""
        return GRADIENT_FORWARDS

    def config(self) -> dict:
        return {"source": self.name, "queries": self.queries, "rise_blocks": self.blocks}
