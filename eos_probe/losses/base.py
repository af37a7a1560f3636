"""The loss objects: the built-in conventions (mse, regression, ce) and user callables (see the package docstring)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import UserError

#: the built-in loss names (``Objective(loss=...)``, the ``loss`` config key)
LOSSES = BUILTIN = ("mse", "ce")

#: modules whose second derivative is zero almost everywhere and undefined at a kink
_KINKED = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
           nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


class KinkWarning(UserWarning):
    """The model has piecewise-linear pieces (ReLU, max-pooling): its Hessian ignores their kinks."""


#: the convention of each built-in loss as recorded in every run file (attribute ``loss_convention``)
LOSS_CONVENTIONS = {
    "mse": "0.5*sum_outputs(f-onehot)^2, mean over loss terms (lambda_max = C/2 x nn.MSELoss mean)",
    "ce": "cross-entropy, mean over loss terms",
}


class Loss:
    """One resolved loss: per-term values, the loss-term mask, the Gauss–Newton factor and its convention.

    A loss is a mean over N loss terms ℓ(f_t) of network outputs f_t: an example, or a counted position of
    a sequence (integer target −1 = not in the loss). Subclasses: :class:`MSELoss` (one-hot classes),
    :class:`RegressionLoss`, :class:`CrossEntropyLoss`, :class:`CustomLoss`. Build them with
    :func:`resolve_loss`, which checks the targets against the model first.

    Attributes:
        name: "mse", "ce" or "custom" (regression is "mse" with float targets).
        fn: the user's callable for "custom", else None.
        num_classes: outputs per loss term.
        sequence: integer targets (n, L) whose −1 entries are masked.
        regression: float targets of the output's shape.
    """

    name = ""
    fn: Callable[[Tensor, Tensor], Tensor] | None = None
    regression = False

    def __init__(self, *, num_classes: int, sequence: bool = False) -> None:
        self.num_classes = num_classes
        self.sequence = sequence

    @property
    def convention(self) -> str:
        """The text recorded as a run file's ``loss_convention`` attribute."""
        return LOSS_CONVENTIONS[self.name]

    def mask(self, y: Tensor) -> Tensor | None:
        """Boolean mask of the counted loss terms of targets ``y`` (None: every example counts)."""
        return (y >= 0) if self.sequence else None

    def n_terms(self, y: Tensor) -> int:
        """Number of loss terms of a target tensor: examples, or counted positions of sequences."""
        return int((y >= 0).sum()) if self.sequence else int(y.shape[0])

    def per_term(self, out: Tensor, y: Tensor) -> Tensor:
        """ℓ(f_t) for every loss term of one chunk, masked terms included (their value is meaningless)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def loss_sum(self, out: Tensor, y: Tensor) -> Tensor:
        """Σ loss terms of one chunk (the first half of `chunk_sum`, without the accuracy's argmax)."""
        per = self.per_term(out, y)
        mask = self.mask(y)
        return (per * mask.to(out.dtype)).sum() if mask is not None else per.sum()

    def chunk_sum(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ loss terms, Σ correct predictions) of one chunk of outputs (NaN correct for regression)."""
        per = self.per_term(out, y)
        mask = self.mask(y)
        if mask is None:  # a count of exact 0/1 values: converting the scalar, not the vector, is the same number
            return per.sum(), (out.argmax(-1) == self._target(y)).sum().to(out.dtype)
        correct = (out.argmax(-1) == self._target(y)).to(out.dtype)
        mask = mask.to(out.dtype)
        return (per * mask).sum(), (correct * mask).sum()

    def gauss_newton(self, out: Tensor, v: Tensor, y: Tensor) -> Tensor:
        """Bᵀ v per loss term, with A = ∇²_f ℓ = B Bᵀ taken at the outputs ``out`` (held fixed), masked terms zeroed.

        ``v`` has the outputs' shape: the outputs themselves (whitened outputs u = Bᵀ f, whose θ-gradients
        give the Gauss–Newton matrix) or a tangent J z (then ‖Bᵀ J z‖² = zᵀ G z per term).

        Raises:
            UserError: the loss has no closed-form output Hessian (a user callable).
        """
        u = self._whiten(out, v)
        if self.sequence:
            u = u * (y >= 0).to(u.dtype).unsqueeze(-1)
        return u

    def criterion(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The mean loss over the terms of a whole batch as a criterion(outputs, targets) (an ``nn.Module``)."""
        return _Criterion(self)

    def _target(self, y: Tensor) -> Tensor:
        return y.clamp(min=0) if self.sequence else y

    def _whiten(self, out: Tensor, v: Tensor) -> Tensor:
        raise UserError(f"no Gauss–Newton form for loss {self.name!r}")


class MSELoss(Loss):
    """0.5 · Σ_outputs (f − onehot)² per term of integer class labels; A = I, so B = I."""

    name = "mse"

    def per_term(self, out: Tensor, y: Tensor) -> Tensor:
        return 0.5 * ((out - self._onehot(y, out.dtype)) ** 2).sum(-1)

    def _onehot(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        """The one-hot targets of `y`, made once per target tensor (the training set's chunks are evaluated
        thousands of times; a tiny model spent a tenth of its step re-encoding them)."""
        if torch._C._functorch.maybe_current_level() is not None:  # inside vmap/grad/jvp: no reuse across levels
            return torch.nn.functional.one_hot(self._target(y), self.num_classes).to(dtype)
        key = (y.data_ptr(), y._version, tuple(y.shape), y.device, dtype)
        cache = self.__dict__.setdefault("_onehot_cache", {})
        hit = cache.get(key)
        if hit is None:
            with torch.inference_mode(False):  # a normal tensor, usable under autograd later
                hit = torch.nn.functional.one_hot(self._target(y), self.num_classes).to(dtype)
            if len(cache) > 64:
                cache.clear()
            cache[key] = hit
        return hit

    def _whiten(self, out: Tensor, v: Tensor) -> Tensor:
        return v


class RegressionLoss(MSELoss):
    """0.5 · Σ_outputs (f − y)² per example of float targets of the output's shape; A = I."""

    regression = True

    @property
    def convention(self) -> str:
        return "0.5*sum_outputs(f-y)^2, mean over examples (regression targets)"

    def per_term(self, out: Tensor, y: Tensor) -> Tensor:
        return 0.5 * ((out - y.to(out.dtype)) ** 2).reshape(out.shape[0], -1).sum(-1)

    def chunk_sum(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.per_term(out, y).sum(), out.new_full((), float("nan"))


class CrossEntropyLoss(Loss):
    """logsumexp(f) − f_y per term; A = diag(p) − p pᵀ = B Bᵀ with B = diag(√p) − p √pᵀ, p = softmax(f)."""

    name = "ce"

    def per_term(self, out: Tensor, y: Tensor) -> Tensor:
        return torch.logsumexp(out, -1) - out.gather(-1, self._target(y).unsqueeze(-1)).squeeze(-1)

    def _whiten(self, out: Tensor, v: Tensor) -> Tensor:
        p = torch.softmax(out.detach(), dim=-1)
        sp = p.sqrt()
        return sp * (v - (p * v).sum(-1, keepdim=True))


class CustomLoss(Loss):
    """A user callable ``loss_fn(output, target) -> scalar``, a mean over the examples it is given."""

    name = "custom"

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], *, num_classes: int, sequence: bool,
                 regression: bool) -> None:
        super().__init__(num_classes=num_classes, sequence=sequence)
        self.fn = fn
        self.regression = regression

    @property
    def convention(self) -> str:
        return f"user loss {describe(self.fn)}, mean over examples"

    def loss_sum(self, out: Tensor, y: Tensor) -> Tensor:
        return self.fn(out, y) * self.n_terms(y)

    def chunk_sum(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.loss_sum(out, y), self._correct(out, y)

    def criterion(self) -> Callable[[Tensor, Tensor], Tensor]:
        return self.fn

    def _correct(self, out: Tensor, y: Tensor) -> Tensor:
        if not y.is_floating_point() and out.dim() == y.dim() + 1:
            c = (out.argmax(-1) == y).to(out.dtype)
            return (c * (y >= 0).to(out.dtype)).sum() if self.sequence else c.sum()
        return out.new_full((), float("nan"))


class _Criterion(nn.Module):
    """A built-in loss as an ``nn.Module`` criterion: Σ per-term values over the counted terms / their number."""

    def __init__(self, loss: Loss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        m = self.loss.mask(y)
        mask = m.to(out.dtype) if m is not None else torch.ones(y.shape, dtype=out.dtype, device=y.device)
        return (self.loss.per_term(out, y) * mask).sum() / mask.sum()


def describe(fn) -> str:
    """A short name for a loss callable (its class or function name)."""
    if isinstance(fn, nn.Module):
        return f"{type(fn).__name__}()"
    return getattr(fn, "__name__", type(fn).__name__)

def _check_callable(fn, out: Tensor, y: Tensor) -> None:
    o = out.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            val = fn(o, y)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"loss {describe(fn)}(output, target) failed on outputs of shape {tuple(out.shape)} "
                        f"{out.dtype} and targets of shape {tuple(y.shape)} {y.dtype}: {_first_line(e)}") from None
    if not isinstance(val, Tensor) or val.numel() != 1:
        shape = tuple(val.shape) if isinstance(val, Tensor) else type(val).__name__
        raise UserError(f"loss {describe(fn)} must return a scalar (the mean over examples), got {shape}")
    if not val.requires_grad:
        raise UserError(f"loss {describe(fn)} does not depend differentiably on the model output "
                        "(detached, or computed outside autograd)")
    try:
        with torch.enable_grad():
            (g,) = torch.autograd.grad(val.reshape(()), o, create_graph=True)
            if g.requires_grad:
                torch.autograd.grad(g, o, torch.ones_like(g))
            else:
                # no graph behind the gradient: fine if the loss is linear in the output (constant gradient),
                # wrong if autograd merely cannot see the second derivative (once-differentiable code)
                o2 = (o.detach() + 1e-3 * torch.randn_like(o) * (1 + o.detach().abs())).requires_grad_(True)
                (g2,) = torch.autograd.grad(fn(o2, y).reshape(()), o2)
                if not torch.allclose(g.detach(), g2, rtol=1e-6, atol=1e-12):
                    raise RuntimeError("its gradient changes with the output but has no autograd graph "
                                       "(a once-differentiable or hand-written backward)")
    except (RuntimeError, NotImplementedError) as e:
        raise UserError(f"loss {describe(fn)} is not twice differentiable by autograd: {_first_line(e)}") from None

def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
