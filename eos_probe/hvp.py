"""Hessian-vector products of an `eos_probe.objective.Objective`: two back ends and the rule choosing one.

* forward-over-reverse (``fwd-rev``): ``jvp`` of the gradient per chunk, vmapped over row blocks for many
  vectors at once; needs forward-mode AD of every op;
* double backward (``double-backward``): the gradient graph built once per θ and differentiated again per
  vector (single products are cheapest here on CPU).

Both are sized to the objective's memory budget (`Objective.work_chunks`). They reach the objective through
its public pieces (chunks, `_chunk_sum`, `space`), so this module imports nothing of it.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from ._util import sync as _sync
from .errors import UserError

HVP_BACKENDS = ("auto", "fwd-rev", "double-backward")


def hvp_at(objective, theta: Tensor, backend: str | None = None) -> "HVP":
    """A Hessian-vector-product function of `objective` at a fixed θ, by back end ("auto": timed once)."""
    backend = backend or objective.hvp_backend
    if backend == "auto":
        backend = choose_backend(objective, theta)
    if backend == "fwd-rev":
        return _FwdRevHVP(objective, theta)
    return _DoubleBackwardHVP(objective, theta)


def choose_backend(objective, theta: Tensor, repeats: int = 2, *, timed: bool = True) -> str:
    """Pick the faster HVP back end on this model and device by timing both once (cached).

    Forward-over-reverse is skipped (double backward used) if some op lacks forward-mode AD.
    `timed=False` (the probe's rule, reproducible where timing is not): double backward on CPU,
    forward-over-reverse on CUDA (batched products are one vmapped call), the first that works.
    """
    if not timed:
        th = theta.detach().reshape(-1) if theta.dim() == 1 else theta.detach()[0]
        order = (("double-backward", _DoubleBackwardHVP), ("fwd-rev", _FwdRevHVP))
        for name, cls in (order[::-1] if th.device.type == "cuda" else order):
            try:
                cls(objective, th).matvec(torch.ones_like(th))  # works on this model? (not timed)
                return name
            except (NotImplementedError, RuntimeError):
                continue
        raise RuntimeError("neither HVP back end works for this model")
    if objective._backend_choice is not None:
        return objective._backend_choice
    v = torch.randn(theta.shape, generator=torch.Generator(theta.device).manual_seed(0),
                    device=theta.device, dtype=theta.dtype)
    times, failures = {}, []
    for name, cls in (("double-backward", _DoubleBackwardHVP), ("fwd-rev", _FwdRevHVP)):
        try:
            op = cls(objective, theta)
            op.matvec(v)  # warm-up (and graph build for double backward)
            _sync(theta.device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                op.matvec(v)
            _sync(theta.device)
            times[name] = time.perf_counter() - t0
        except (NotImplementedError, RuntimeError) as e:
            failures.append(f"{name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
            continue
    if not times:
        raise UserError("no Hessian-vector product could be computed for this model and loss ("
                        + "; ".join(failures) + ")")
    objective._backend_choice = min(times, key=times.get)
    return objective._backend_choice

class HVP:
    """Hessian-vector products at a fixed θ; counts the products it has computed."""

    def __init__(self, objective, theta: Tensor) -> None:
        self.objective = objective
        self.theta = theta.detach()
        self.n_hvp = 0

    def matvec(self, v: Tensor) -> Tensor:
        self.n_hvp += 1
        return self._matvec(v)

    def matmat(self, V: Tensor) -> Tensor:
        """Rows of V (m, d) → rows of H Vᵀ; vmapped where the back end allows it."""
        self.n_hvp += V.shape[0]
        return self._matmat(V)

    def _matmat(self, V: Tensor) -> Tensor:
        return torch.stack([self._matvec(v) for v in V])

    def _matvec(self, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _row_blocks(V: Tensor, rows: int, fn) -> Tensor:
    """fn over row blocks of V (at most `rows` rows each), concatenated: bounded memory for vmapped work."""
    if V.shape[0] <= rows:
        return fn(V)
    return torch.cat([fn(B) for B in V.split(rows)])


class _FwdRevHVP(HVP):
    """Forward-over-reverse per chunk; chunks (and vmapped row blocks) sized to the memory budget."""

    name = "fwd-rev"

    def __init__(self, objective, theta: Tensor) -> None:
        super().__init__(objective, theta)
        self.chunks = objective.work_chunks("fwd-rev")
        self.rows = objective.rows_per_block("fwd-rev", self.chunks)

    def _chunk_hvp(self, v: Tensor) -> Tensor:
        obj = self.objective
        total = None
        for x, y in self.chunks:
            g = grad(lambda t: obj._chunk_sum(t, x, y)[0] / obj.n_terms)
            hv = jvp(g, (self.theta,), (v,))[1]
            total = hv if total is None else total + hv
        return total

    def _matvec(self, v: Tensor) -> Tensor:
        return self._chunk_hvp(v)

    def _matmat(self, V: Tensor) -> Tensor:
        if not self.objective.vectorizes_stacks:
            return super()._matmat(V)  # CPU conv/attention: batched HVPs measured 7-55% slower per product
        try:
            return _row_blocks(V, self.rows, vmap(self._chunk_hvp))
        except (NotImplementedError, RuntimeError):
            return super()._matmat(V)


class _DoubleBackwardHVP(HVP):
    """Double backward through a gradient graph built once per θ (one graph per micro-batch).

    The graphs of the whole batch are kept between products only while they fit the memory budget
    (`Objective.probe_memory`); otherwise ("streaming") each product rebuilds one chunk's graph at a time,
    which costs one more forward+backward per chunk and product but holds a single chunk's graph.
    """

    name = "double-backward"

    def __init__(self, objective, theta: Tensor) -> None:
        super().__init__(objective, theta)
        self._leaf = self.theta.clone().requires_grad_(True)
        n = sum(int(x.shape[0]) for x, _ in objective.chunks)
        self.streaming = n > objective.max_examples("double-backward")
        self.chunks = objective.work_chunks("double-backward") if self.streaming else objective.chunks
        self.rows = objective.rows_per_block("double-backward", self.chunks)
        self._grads = [] if self.streaming else [self._graph(x, y) for x, y in self.chunks]

    def _graph(self, x: Tensor, y: Tensor) -> Tensor:
        obj = self.objective
        with torch.enable_grad():
            s, _ = obj._chunk_sum(self._leaf, x, y)
            (g,) = torch.autograd.grad(s / obj.n_terms, self._leaf, create_graph=True)
        return g

    def _graphs(self):
        if not self.streaming:
            yield from self._grads
        else:
            for x, y in self.chunks:
                yield self._graph(x, y)

    def _matvec(self, v: Tensor) -> Tensor:
        total = None
        for g in self._graphs():
            (hv,) = torch.autograd.grad(g, self._leaf, v, retain_graph=not self.streaming)
            total = hv if total is None else total + hv
        return total.detach()

    def _matmat(self, V: Tensor) -> Tensor:
        if not self.objective.vectorizes_stacks:
            return super()._matmat(V)  # see _FwdRevHVP._matmat
        if V.shape[0] > self.rows:
            return torch.cat([self._matmat(B) for B in V.split(self.rows)])
        total = None
        for g in self._graphs():
            try:
                (hv,) = torch.autograd.grad(g, self._leaf, V, retain_graph=not self.streaming,
                                            is_grads_batched=True)
            except (NotImplementedError, RuntimeError):
                return super()._matmat(V)
            total = hv if total is None else total + hv
        return total.detach()
