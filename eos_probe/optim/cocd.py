"""Coherent coordinate descent (CoCD) as a gradient source with state (docs/theory.md §5d).

The buffer G holds one derivative estimate per coordinate (all parameters, flattened). Step t:
G ← γG; refresh block k (the k-th of the K = ⌈d/B⌉ contiguous blocks of B coordinates, cyclically) with
central differences (L(θ+εe_i) − L(θ−εe_i))/(2ε) at the current θ (2B loss evaluations); with a memory
budget m keep only the m most recently refreshed coordinates (the others become 0); return
g = G + w·θ (w = weight decay) for the update rule (GD: θ ← θ − αg). γ = 0 is block cyclic coordinate
descent (BCCD), γ = 1 keeps every coordinate's latest estimate, B = d is finite-difference GD.

State (checkpointed, so a resumed run continues bitwise): ``buffer`` G (θ's shape), ``pointer`` (the
next block, one per stacked copy) and ``step_norms`` (‖g‖ of the last K steps, for the staleness probe).
The perturbed points are written out of place into scratch buffers: θ comes back bitwise.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidValueError
from ..objective import activation_bytes
from ..presets import OPTIONS, default
from ..theory.cocd import CoCDSchedule, schedule

EVAL_MODES = ("auto", "loop", "batched")
#: scratch budget for the stacked perturbed points of one batched call (bytes)
POINTS_BYTES = 64 * 2**20


def default_block(dim: int, fraction: float = 0.01) -> int:
    """B = ⌈fraction · d⌉ (the preset: 1 % of the parameters, at least 1)."""
    return max(1, math.ceil(fraction * dim))


class CoCDSource:
    """Coordinate-wise central differences with a decaying buffer of stale estimates (see module docstring).

    `eval_mode`: "loop" evaluates the 2B points one after another; "batched" stacks up to `chunk` of them
    into one `objective.loss` call (vmapped where the objective vectorises stacks); "auto" batches where
    the objective vectorises stacks (CUDA, small-activation CPU models, the quadratic) and loops otherwise
    (CPU conv/attention models, where a stacked call is itself a loop). Both give the same points.
    """

    name = "cocd"
    evaluates_loss = False
    zeroth_order = True

    def __init__(self, block: int | None = default("cocd_block"), gamma: float = default("cocd_gamma"),
                 eps: float = default("cocd_eps"), memory: int | None = default("cocd_memory"),
                 weight_decay: float = default("weight_decay"), eval_mode: str = "auto") -> None:
        for name, value in (("cocd_block", block), ("cocd_gamma", gamma), ("cocd_eps", eps), ("cocd_memory", memory),
                            ("weight_decay", weight_decay)):
            OPTIONS[name].check(value)
        if eval_mode not in EVAL_MODES:
            raise InvalidValueError(f"unknown CoCD evaluation mode {eval_mode!r}; choose one of {', '.join(EVAL_MODES)}")
        self.block, self.gamma, self.eps = block, float(gamma), float(eps)
        self.memory, self.weight_decay, self.eval_mode = memory, float(weight_decay), eval_mode
        self._scratch: dict | None = None
        self._batched: dict[tuple, int] = {}

    @classmethod
    def from_settings(cls, s: Any) -> "CoCDSource":
        """The source of a CoCD preset (`eos_probe.optim.make_optimizer`)."""
        return cls(block=s["cocd_block"], gamma=s["cocd_gamma"], eps=s["cocd_eps"], memory=s["cocd_memory"],
                   weight_decay=s["weight_decay"])

    # ------------------------------------------------------------------ schedule
    def block_size(self, dim: int) -> int:
        return self.block if self.block is not None else default_block(dim)

    def schedule(self, dim: int) -> CoCDSchedule:
        """The validated :class:`eos_probe.theory.cocd.CoCDSchedule` for d parameters (B > d etc. raise)."""
        return schedule(dim, self.block_size(dim), self.gamma, self.memory, self.weight_decay)

    def check_dim(self, dim: int) -> None:
        """Raise a one-line InvalidValueError if B, m do not fit d parameters."""
        self.schedule(dim)

    def forwards_per_step(self, dim: int) -> float:
        """2B loss evaluations (central differences on one block)."""
        return float(2 * self.block_size(dim))

    def config(self) -> dict:
        return {"source": self.name, "cocd_block": self.block, "cocd_gamma": self.gamma, "cocd_eps": self.eps,
                "cocd_memory": self.memory, "weight_decay": self.weight_decay}

    def init(self, theta: Tensor) -> dict[str, Tensor]:
        s = self.schedule(theta.shape[-1])
        lead = tuple(theta.shape[:-1])
        return {"buffer": torch.zeros_like(theta),
                "pointer": torch.zeros(lead, dtype=torch.int64, device=theta.device),
                "step_norms": torch.zeros(*lead, s.period, dtype=theta.dtype, device=theta.device)}

    # ------------------------------------------------------------------ evaluation path
    def batch_queries(self, objective, theta: Tensor) -> bool:
        """Whether the 2B points are evaluated in stacked calls (decided from sizes only, once per shape)."""
        return self._chunk(objective, theta) > 1

    def _chunk(self, objective, theta: Tensor) -> int:
        """Points per stacked `objective.loss` call (1 = loop)."""
        if self.eval_mode == "loop":
            return 1
        key = (tuple(theta.shape), theta.device)
        if key not in self._batched:
            n = 2 * self.block_size(theta.shape[-1])
            per_point = theta.numel() * theta.element_size()
            chunk = max(1, min(n, POINTS_BYTES // max(per_point, 1)))
            model, x = getattr(objective, "model", None), getattr(objective, "x", None)
            if model is not None and x is not None and self.eval_mode == "auto":
                if not getattr(objective, "vectorizes_stacks", True):
                    chunk = 1
                elif theta.device.type == "cuda":
                    total = activation_bytes(model, x)[1] * int(x.shape[0]) * max(1, theta[..., 0].numel())
                    memory = torch.cuda.get_device_properties(theta.device).total_memory
                    chunk = max(1, min(chunk, (memory // 4) // max(total, 1)))
            self._batched[key] = chunk
        return self._batched[key]

    def _points(self, theta: Tensor, n: int) -> Tensor:
        key = (tuple(theta.shape), theta.dtype, theta.device, n)
        if self._scratch is None or self._scratch["key"] != key:
            self._scratch = {"key": key, "points": torch.empty(n, *theta.shape, dtype=theta.dtype,
                                                               device=theta.device)}
        return self._scratch["points"]

    def differences(self, objective, theta: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """(L(θ+εe_i), L(θ−εe_i)) for i in [start, stop): two tensors of shape (stop−start, *θ.shape[:-1])."""
        eps, n = self.eps, stop - start
        chunk = self._chunk(objective, theta)
        lead = theta.shape[:-1]
        if chunk == 1:
            point = self._points(theta, 1)[0]
            point.copy_(theta)
            lp, lm = [], []
            for i in range(start, stop):
                # the same float ops as the batched path: θ_i ± ε rounded once, written out of place
                point[..., i] = theta[..., i] + eps
                lp.append(objective.loss(point))
                point[..., i] = theta[..., i] - eps
                lm.append(objective.loss(point))
                point[..., i] = theta[..., i]
            return torch.stack(lp), torch.stack(lm)
        half = max(1, chunk // 2)
        pts = self._points(theta, 2 * half)
        pts.copy_(theta.expand(2 * half, *theta.shape))
        flat = pts.view(2 * half, -1, theta.shape[-1])
        th = theta.reshape(-1, theta.shape[-1])
        out_p, out_m = [], []
        for a in range(start, stop, half):
            b = min(a + half, stop)
            m = b - a
            idx = torch.arange(a, b, device=theta.device)
            rows = torch.arange(m, device=theta.device)
            vals = th[:, a:b].T  # (m, R)
            flat[rows, :, idx] = vals + eps
            flat[half + rows, :, idx] = vals - eps
            losses = objective.loss(pts if m == half else torch.cat([pts[:m], pts[half:half + m]]))
            out_p.append(losses[:m])
            out_m.append(losses[m:2 * m])
            flat[rows, :, idx] = vals
            flat[half + rows, :, idx] = vals
        return torch.cat(out_p).reshape(n, *lead), torch.cat(out_m).reshape(n, *lead)

    # ------------------------------------------------------------------ the step
    def __call__(self, objective, theta: Tensor, state: dict, step: int) -> tuple[Tensor, dict]:
        s = self.schedule(theta.shape[-1])
        G, ptr = state["buffer"], state["pointer"]
        k = int(ptr.reshape(-1)[0]) if ptr.numel() else 0  # every stacked copy shares the schedule
        start, stop = s.bounds(k)
        lp, lm = self.differences(objective, theta, start, stop)
        if s.gamma != 1.0:
            G.mul_(s.gamma)
        G[..., start:stop] = ((lp - lm) / (2 * self.eps)).movedim(0, -1)
        stale = s.stale(k)
        if stale is not None:
            G[..., torch.as_tensor(stale, device=G.device)] = 0
        ptr.fill_((k + 1) % s.period)
        g = G
        if s.weight_decay:
            g = torch.add(G, theta, alpha=s.weight_decay)
        state["step_norms"][..., k] = g.norm(dim=-1)
        # the mean of the last pair is a free O(ε²)-biased loss reading, used like the ZO source's
        return g, {"loss_pm": 0.5 * (lp[-1] + lm[-1])}
