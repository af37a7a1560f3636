"""The one objective function everything calls: a pure function of a flat parameter vector.

Parameters travel as one flat tensor θ of shape (d,) (or (K, d) for K stacked copies, e.g. an η sweep or
Monte-Carlo seeds). `ParamSpace.unflatten` turns θ into a dict of *views* for
`torch.func.functional_call`, so gradients and Hessian-vector products w.r.t. θ come straight out of
torch.func, and linear algebra (Lanczos, Hutchinson) works on plain vectors.

The loss is a `eos_probe.losses.Loss` (mse: 0.5 · Σ_outputs (f − onehot)², ce, regression or a user
callable), averaged over loss terms; its convention text is recorded in every run file.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from .errors import UserError
from .hvp import HVP, HVP_BACKENDS, choose_backend, hvp_at
from .losses import resolve_loss


#: auto micro-batching (CPU): the largest per-chunk activation is kept under this many bytes. Measured on a
#: 2-core x86 box (benchmarks/bench_step.py): full-batch forwards of the CNN/ViT/ResNet/Mamba allocate
#: 25-100 MB intermediates that miss the caches and are page-faulted in afresh every call; chunks of
#: ~6 MB run 1.6-2.4x faster (forward, gradient and HVP alike). Small-activation models stay full batch.
AUTO_CHUNK_BYTES = 6 * 2**20
AUTO_MIN_CHUNK = 32

#: stacked θ (K copies of a sweep, 2q query points) on CPU: one vmapped call only for models whose largest
#: per-example activation is at most this (matmul-bound MLP/LSTM: vmap measured 1.2-3x faster than a loop);
#: conv and attention models loop over the rows (their vmapped grouped convs / batched matmuls measured
#: 1.0-2x slower, and a loop rounds each row exactly as a single evaluation does). CUDA always vmaps.
VMAP_MAX_ACTIVATION = 16 * 1024

#: the probe's memory model (`Objective.work_chunks`): peak bytes of one piece of curvature work, per example
#: and per vector worked on at once, in units of A = `activation_bytes(...)[1]` (all batch-leading tensors of
#: one inference forward, per example). Measured with RSS peaks (VmHWM) per family on CPU
#: (benchmarks/probe_budget.py); each factor is the largest measured over mlp/cnn/resnet/vit/lstm/mamba,
#: rounded up. Shape-only, so a config always chunks (and rounds) the same way.
MEMORY_FACTORS = {
    "fwd-rev": 8.0,          # one forward-over-reverse HVP of a chunk (primal + tangents + saved graph)
    "double-backward": 4.0,  # the create_graph gradient graph of a chunk, as retained between products
    "jacobian": 6.0,         # per example and per output row of vmap(jacrev) (the GGN trace, generic path)
    "jvp": 8.0,              # per example and per probe vector of the vmapped GGN quadratic
}

@dataclass(frozen=True)
class ParamSpace:
    """Names, shapes and offsets of a model's parameters inside one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    dim: int

    tied: bool = False  # the module shares a parameter under two names (functional_call must tie them)

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> "ParamSpace":
        names, shapes, offsets, n = [], [], [], 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(p.shape)
            offsets.append(n)
            n += p.numel()
        tied = len(list(module.named_parameters(remove_duplicate=False))) > len(names)
        return cls(tuple(names), tuple(shapes), tuple(offsets), n, tied)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Views of the last dimension of θ, one per parameter (no copy)."""
        lead = theta.shape[:-1]
        parts = theta.split_with_sizes(self.sizes, dim=-1)
        return {name: t.view(*lead, *s) for name, s, t in zip(self.names, self.shapes, parts)}

    @functools.cached_property
    def sizes(self) -> list[int]:
        """Number of entries of each parameter, in order."""
        return [math.prod(s) for s in self.shapes]

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])


class Objective:
    """Full-batch loss of `model` on (x, y), as a function of a flat parameter vector.

    The data stay on the device once. The batch may be processed in micro-batches (`microbatch`
    examples each); every quantity is a size-weighted sum over chunks, so the result does not depend on
    the chunking beyond float round-off.

    Theory: [docs/theory.md#reference-setup][reference-setup].
    """

    def __init__(
        self,
        model: torch.nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "mse",
        num_classes: int | None = None,
        microbatch: int | str | None = None,
        hvp_backend: str = "auto",
    ) -> None:
        if hvp_backend not in HVP_BACKENDS:
            raise UserError(f"unknown HVP backend {hvp_backend!r}; choose one of {', '.join(HVP_BACKENDS)}")
        if microbatch is not None and microbatch != "auto" and (isinstance(microbatch, str) or microbatch <= 0):
            raise UserError(f"microbatch must be a positive number of examples or 'auto', got {microbatch}")
        self.model = model
        self.space = ParamSpace.from_module(model)
        # checks targets against the model's output once (see eos_probe.losses); num_classes is inferred
        self.loss_spec = resolve_loss(loss, model, x, y, num_classes)
        self.loss_name = self.loss_spec.name
        self.num_classes = self.loss_spec.num_classes
        self.sequence = self.loss_spec.sequence
        self.microbatch = auto_microbatch(model, x) if microbatch == "auto" else microbatch
        self.set_data(x, y)
        # task sequences (eos_probe.tasks): the task trained now, and the earlier tasks' Objective (else None)
        self.task: int | None = None
        self.retention: Objective | None = None
        self.hvp_backend = hvp_backend
        self.device = x.device
        from .budget import DEFAULT_PROBE_MEMORY
        #: peak-memory budget (bytes) of one piece of curvature work; see `work_chunks`
        self.probe_memory = DEFAULT_PROBE_MEMORY
        self._example_bytes: int | None = None

    @property
    def dim(self) -> int:
        return self.space.dim

    def _call(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """model(x) with its parameters replaced by `params` for the call.

        What `torch.func.functional_call` does for plain parameters — put each tensor in its module's
        `_parameters` slot, call, put the originals back — with the slots resolved once: the generic path
        re-walks the module tree on every call, which cost a tiny model as much as its forward. Models with
        tied weights or parametrizations take the generic path."""
        slots = self._slots
        if slots is None:
            return functional_call(self.model, params, (x,), tie_weights=self.space.tied)
        olds = [m._parameters[a] for m, a in slots]
        try:
            for (m, a), t in zip(slots, params.values()):
                m._parameters[a] = t
            return self.model(x)
        finally:
            for (m, a), t in zip(slots, olds):
                m._parameters[a] = t

    @property
    def _slots(self) -> list[tuple[torch.nn.Module, str]] | None:
        """(module, attribute) of each parameter in `space.names` order, or None where the fast path of `_call`
        does not apply (tied weights, parametrizations)."""
        if self._slot_cache is None:
            ok = not self.space.tied and not any(hasattr(m, "parametrizations") for m in self.model.modules())
            slots = []
            for name in self.space.names:
                path, _, attr = name.rpartition(".")
                mod = self.model.get_submodule(path) if path else self.model
                slots.append((mod, attr))
            self._slot_cache = slots if ok else []
        return self._slot_cache or None

    _slot_cache: list | None = None

    def initial_theta(self) -> Tensor:
        """The model's current parameters as a fresh flat vector (the model itself is never mutated)."""
        with torch.no_grad():
            return self.space.flatten(dict(self.model.named_parameters())).detach().clone()

    def set_data(self, x: Tensor, y: Tensor, output_mask: Tensor | None = None) -> None:
        """Train on (x, y) from now on, in place (a task boundary; same micro-batch size). False outputs of `output_mask`
        are left out of the loss (ce: logit −inf; mse: output = its 0 target); `evaluate` on given data uses all."""
        n_terms = self.loss_spec.n_terms(y)
        if n_terms == 0:
            raise UserError("the training set has no loss terms (empty data or every target masked)")
        self.x, self.y, self.n_terms, self.output_mask = x, y, n_terms, output_mask
        mb = self.microbatch or x.shape[0]
        self.chunks: list[tuple[Tensor, Tensor]] = list(zip(x.split(mb), y.split(mb)))

    def _forward(self, theta: Tensor, x: Tensor, masked: bool = True, mask: Tensor | None = None) -> Tensor:
        return self._output(self.space.unflatten(theta), x, masked, mask)

    def _output(self, params: dict[str, Tensor], x: Tensor, masked: bool = True, mask: Tensor | None = None) -> Tensor:
        """The model's outputs with `params` (masked outputs filled as in `set_data`)."""
        out = self._call(params, x)
        mask = self.output_mask if masked and mask is None else mask
        if mask is not None:
            out = out.masked_fill(~mask, float("-inf") if self.loss_name == "ce" else 0.0)
        return out

    def _chunk_sum(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ loss terms, Σ correct predictions) over one chunk; θ is a single (d,) vector."""
        return self.loss_spec.chunk_sum(self._forward(theta, x), y)

    def _loss_single(self, theta: Tensor) -> Tensor:
        total = None
        for x, y in self.chunks:
            s = self.loss_spec.loss_sum(self._forward(theta, x), y)
            total = s if total is None else total + s
        return total / self.n_terms

    @property
    def vectorizes_stacks(self) -> bool:
        """Whether stacked θ (…, d) is evaluated in one vmapped call (else row by row); see VMAP_MAX_ACTIVATION."""
        if self._vmap_stacks is None:
            self._vmap_stacks = (self.device.type != "cpu"
                                 or activation_bytes(self.model, self.x)[0] <= VMAP_MAX_ACTIVATION)
        return self._vmap_stacks

    _vmap_stacks: bool | None = None

    def _stacked(self, fn, theta: Tensor):
        """fn over the rows of θ (…, d): vmapped or looped (see `vectorizes_stacks`); outputs keep θ's lead shape."""
        flat = theta.reshape(-1, theta.shape[-1])
        if self.vectorizes_stacks:
            out = vmap(fn)(flat)
        else:
            rows = [fn(t) for t in flat]
            out = tuple(map(torch.stack, zip(*rows))) if isinstance(rows[0], tuple) else torch.stack(rows)
        lead = theta.shape[:-1]
        if isinstance(out, tuple):
            return tuple(o.reshape(*lead, *o.shape[1:]) for o in out)
        return out.reshape(*lead, *out.shape[1:])

    def loss(self, theta: Tensor) -> Tensor:
        """Mean loss at θ (shape (d,) → scalar; shape (…, d) → (…)). No autograd state is kept."""
        with torch.inference_mode():
            if theta.dim() == 1:
                return self._loss_single(theta)
            return self._stacked(self._loss_single, theta)

    def evaluate(self, theta: Tensor, x: Tensor | None = None, y: Tensor | None = None,
                 mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mean loss, accuracy) at θ on the training set, or on (x, y) if given (outputs `mask` only, if given).
        θ of shape (d,) gives scalars; (K, d) gives two (K,) tensors."""
        if theta.dim() > 1:
            with torch.inference_mode():
                return self._stacked(lambda t: tuple(self.evaluate(t, x, y, mask)), theta)
        if x is None:
            chunks, n_terms = self.chunks, self.n_terms
        else:
            mb = self.microbatch or x.shape[0]
            chunks = list(zip(x.split(mb), y.split(mb)))
            n_terms = self.loss_spec.n_terms(y)
        ls, cs = 0.0, 0.0
        with torch.inference_mode():
            for xc, yc in chunks:
                s, c = self.loss_spec.chunk_sum(self._forward(theta, xc, masked=x is None, mask=mask), yc)
                ls, cs = ls + s, cs + c
        return ls / n_terms, cs / n_terms

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, accuracy, ∇L) at a single θ; one forward+backward per chunk.

        Plain reverse-mode autograd on a leaf copy of θ: the same graph as `torch.func.grad` (bitwise the same
        gradient) without the transform's per-call bookkeeping, which cost a tiny model 2-3x its step."""
        g_total, l_total, c_total = None, 0.0, 0.0
        for x, y in self.chunks:
            with torch.enable_grad():  # callers may hold no_grad
                # one leaf per parameter (views of θ): no slice-backward scattering each gradient into a
                # d-sized buffer per tensor, which a flat leaf would cost
                leaves = {n: v.requires_grad_(True) for n, v in self.space.unflatten(theta.detach()).items()}
                out = self._output(leaves, x)
                s_, c = self.loss_spec.chunk_sum(out, y)
                loss = s_ / self.n_terms
                gs = torch.autograd.grad(loss, list(leaves.values()))
            g = torch.cat([t.reshape(-1) for t in gs])
            l, c = loss.detach(), c.detach()
            g_total = g if g_total is None else g_total + g
            l_total, c_total = l_total + l, c_total + c
        return l_total, c_total / self.n_terms, g_total

    def value_and_grad_batched(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, accuracy, ∇L) for K stacked copies θ of shape (K, d): shapes (K,), (K,), (K, d).

        One vmapped forward+backward per chunk over all copies where `vectorizes_stacks`, else row by row."""
        if not self.vectorizes_stacks:
            return self._stacked(self.value_and_grad, theta)
        g_total, l_total, c_total = None, 0.0, 0.0
        for x, y in self.chunks:
            g, (l, c) = vmap(grad(self._scaled_chunk, has_aux=True), in_dims=(0, None, None))(theta, x, y)
            g_total = g if g_total is None else g_total + g
            l_total, c_total = l_total + l, c_total + c
        return l_total, c_total / self.n_terms, g_total

    def _scaled_chunk(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        s, c = self._chunk_sum(theta, x, y)
        loss = s / self.n_terms
        return loss, (loss.detach(), c.detach())

    def grad(self, theta: Tensor) -> Tensor:
        """∇L(θ) as a flat vector."""
        return self.value_and_grad(theta)[2]

    @property
    def example_bytes(self) -> int:
        """A: bytes per example of all batch-leading tensors of one inference forward (shape-only, cached)."""
        if self._example_bytes is None:
            self._example_bytes = max(1, activation_bytes(self.model, self.x)[1])
        return self._example_bytes

    def max_examples(self, work: str, width: int = 1) -> int:
        """How many examples one piece of `work` (a MEMORY_FACTORS key) may take at once with `width`
        vectors (or output rows) in flight, so that its estimated peak stays within `probe_memory`."""
        per = MEMORY_FACTORS[work] * self.example_bytes * max(1, width)
        return max(1, int(self.probe_memory // per))

    def work_chunks(self, work: str, width: int = 1) -> list[tuple[Tensor, Tensor]]:
        """The training set in chunks small enough for `work` within the memory budget.

        The objective's own chunks when they fit (the usual case: the same chunks and rounding as the
        loss); otherwise each of them split into equal parts. Depends only on shapes and the budget.
        """
        limit = self.max_examples(work, width)
        if all(int(x.shape[0]) <= limit for x, _ in self.chunks):
            return self.chunks
        out = []
        for x, y in self.chunks:
            n = int(x.shape[0])
            parts = -(-n // limit)
            size = -(-n // parts)
            out += list(zip(x.split(size), y.split(size)))
        return out

    def rows_per_block(self, work: str, chunks: list[tuple[Tensor, Tensor]]) -> int:
        """How many vectors a vmapped product over `chunks` may take at once within the memory budget."""
        biggest = max(int(x.shape[0]) for x, _ in chunks)
        return max(1, int(self.probe_memory // (MEMORY_FACTORS[work] * self.example_bytes * biggest)))

    # ----------------------------------------------------------------- Hessian-vector products
    def hvp_at(self, theta: Tensor, backend: str | None = None) -> "HVP":
        """A Hessian-vector-product function at a fixed θ (graph/linearisation reused across calls;
        `eos_probe.hvp`)."""
        return hvp_at(self, theta, backend)

    def hvp(self, theta: Tensor, v: Tensor) -> Tensor:
        """H(θ) v for one flat vector v (convenience; use `hvp_at` for many products at one θ)."""
        return self.hvp_at(theta).matvec(v)

    def hvp_many(self, theta: Tensor, V: Tensor) -> Tensor:
        """H(θ) V for the rows of V (shape (m, d))."""
        return self.hvp_at(theta).matmat(V)

    _backend_choice: str | None = None

    def choose_hvp_backend(self, theta: Tensor, repeats: int = 2, *, timed: bool = True) -> str:
        """The HVP back end for this model and device (`eos_probe.hvp.choose_backend`)."""
        return choose_backend(self, theta, repeats, timed=timed)


def auto_microbatch(model: torch.nn.Module, x: Tensor, budget: int = AUTO_CHUNK_BYTES,
                    min_chunk: int = AUTO_MIN_CHUNK) -> int | None:
    """Micro-batch size for full-batch evaluation on this device (None = the whole batch in one go).

    CUDA: the whole batch (fewer, wider kernels win). CPU: equal chunks whose largest intermediate
    activation stays under `budget` bytes, measured from the tensor sizes of a 4-example forward. The
    rule depends only on shapes, never on timings, so the same config always chunks — and so rounds —
    the same way (a timing-based choice would make two runs of one seed differ at round-off).
    """
    n = int(x.shape[0])
    if x.device.type != "cpu" or n <= min_chunk:
        return None
    per_example = activation_bytes(model, x)[0]
    if per_example * n <= budget:
        return None
    size = max(min_chunk, budget // max(per_example, 1))
    n_chunks = -(-n // size)
    return -(-n // n_chunks)  # equal chunks: ceil(n / n_chunks)


def activation_bytes(model: torch.nn.Module, x: Tensor) -> tuple[int, int]:
    """(largest, total) bytes per example of the tensors with a leading batch dimension that one
    inference forward creates, measured on the first 4 examples of `x` (shapes only, no timing)."""
    from torch.overrides import TorchFunctionMode  # (torch.utils._python_dispatch imports dynamo: 3 s)

    sample = x[: min(4, int(x.shape[0]))]
    b = int(sample.shape[0])
    sizes: list[int] = []

    class _Sizes(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, Tensor) and t.dim() and t.shape[0] == b:
                    sizes.append(t.numel() * t.element_size())
            return out

    with torch.inference_mode(), _Sizes():
        model(sample)
    return -(-max(sizes, default=0) // b), -(-sum(sizes) // b)
