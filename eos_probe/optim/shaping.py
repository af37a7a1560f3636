"""Randomized shaping of an exact gradient (docs/theory.md §5a): Z g/√κ and RISE's blockwise version.

Shared by the RISE gradient source (`eos_probe.optim.sources`) and the forgetting probe metric, which
draws the same shaped steps to measure forgetting; both regenerate every draw from a seed, nothing stored.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import InvalidValueError
from ..theory.shaping import norm_inflation


def zo_shape(g: Tensor, q: int, generator: torch.Generator, directions: str = "gaussian",
             norm_match: bool = True) -> Tensor:
    """Z g (divided by √κ if `norm_match`), Z = (1/q) Σ_k u_k u_kᵀ with u_k drawn from `generator`.

    This is the central two-point estimate in the limit μ → 0 (exact on a quadratic). g: shape (d,).
    """
    d = g.shape[-1]
    u = torch.randn((q, d), generator=generator, dtype=g.dtype, device=g.device)
    if directions == "sphere":
        u.mul_(math.sqrt(d) / u.norm(dim=-1, keepdim=True))
    elif directions == "rademacher":
        u = u.sign()
    elif directions != "gaussian":
        raise InvalidValueError(f"unknown direction distribution {directions!r}")
    s = (u @ g) @ u / q
    return s / math.sqrt(norm_inflation(q, d, directions)) if norm_match else s


def rise_blocks(sizes: list[int], spec: str | int = "tensor") -> list[tuple[int, int]]:
    """(start, stop) of each RISE block over the flat θ: one per tensor (`"tensor"`), or chunks of N.

    Args:
        sizes: the parameter tensors' sizes in flat order.
        spec: ``"tensor"`` or a positive chunk length N (the last chunk may be shorter).
    """
    d = sum(sizes)
    if spec == "tensor":
        out, start = [], 0
        for n in sizes:
            out.append((start, start + n))
            start += n
        return out
    if isinstance(spec, str):
        if not spec.isdigit():
            raise InvalidValueError(f"rise blocks must be 'tensor' or a positive integer, got {spec!r}")
        spec = int(spec)
    if isinstance(spec, bool) or spec < 1:
        raise InvalidValueError(f"rise blocks must be 'tensor' or a positive integer, got {spec!r}")
    return [(s, min(s + spec, d)) for s in range(0, d, spec)]


def rise_shape(g: Tensor, blocks: list[tuple[int, int]], q: int,
               generator_for: Callable[[int], torch.Generator]) -> Tensor:
    """RISE: per block b, v_b = U_b(U_bᵀ g_b)/(q √κ_b), κ_b = (q+d_b+1)/q, U_b ~ N(0, I) from `generator_for(b)`."""
    v = torch.empty_like(g)
    for b, (start, stop) in enumerate(blocks):
        v[start:stop] = zo_shape(g[start:stop], q, generator_for(b))
    return v
