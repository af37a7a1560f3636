"""Loss functions of the Objective: the built-in conventions and any user callable, checked up front.

Built-in names keep the project's conventions (docs/theory.md §6):

* ``"mse"``: 0.5 · Σ_outputs (f − t)², averaged over loss terms, where t is the one-hot vector of an
  integer class label, or the target itself when the targets are floats of the output's shape (regression);
* ``"ce"``: cross-entropy of integer class labels, averaged over loss terms.

The ``mse`` λ_max is C/2 times that of ``nn.MSELoss(reduction="mean")``. A loss term is an example (images)
or a counted position (sequences; target −1 = not in the loss). Each resolved loss is a :class:`Loss`
object: per-term values, the term mask, the Gauss–Newton factor (used by ``curvature.ggn``), a criterion
(used by the PyHessian adapter) and the convention text recorded in every run file. The built-in losses are
written by hand: ``F.mse_loss`` breaks forward-over-reverse HVPs ("ZeroTensors are immutable").

The torch criteria ``nn.MSELoss`` and ``nn.CrossEntropyLoss`` (reduction "mean" or "sum"; class weights,
label smoothing, ``ignore_index`` and probability targets included) are recognised and evaluated by hand
with exactly their value (:class:`TorchMSELoss`, :class:`TorchCrossEntropyLoss`), so the exact Gauss–Newton
trace serves them as it serves the built-in names; their closed-form output Hessian is a multiple of the
built-in one. Cross-entropy outputs must be (n, C) for this; other layouts take the generic path below.

Any other loss is a callable ``loss_fn(output, target) -> scalar`` that averages over the examples of the
batch it is given (a torch criterion with ``reduction="mean"``, or a plain function). The Objective
evaluates it per micro-batch and weights each by its size, so with micro-batches it must be a mean over
examples; without, any scalar works.

The checks here run once, on a forward pass of a few examples, so that a wrong target shape or dtype is
reported as such rather than as a failure deep inside a Hessian-vector product.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .errors import UserError, did_you_mean

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


class TorchMSELoss(RegressionLoss):
    """``nn.MSELoss`` on targets of the output's shape, with the criterion's exact value.

    Per example r = Σ_outputs (f − y)²; the criterion is Σ r / (N·D) (reduction "mean", D outputs per
    example) or Σ r ("sum"). As a mean over the N examples each term is ``scale``·r with
    ``scale`` = 1/D or N, so A = ∇²_f = 2·scale·I: the built-in regression convention times 2·scale.
    """

    def __init__(self, fn: nn.MSELoss, *, num_classes: int, y: Tensor) -> None:
        super().__init__(num_classes=num_classes)
        self.fn = fn
        self.reduction = fn.reduction
        self.scale = self.n_terms(y) / self.denominator(y)

    @property
    def convention(self) -> str:
        return (f"torch nn.MSELoss(reduction={self.reduction!r}): sum of (f-y)^2 over examples and outputs"
                + (", divided by their number" if self.reduction == "mean" else "") + " (evaluated exactly)")

    def denominator(self, y: Tensor) -> float:
        """What the criterion divides Σ_examples r by on targets ``y``."""
        return float(y.numel()) if self.reduction == "mean" else 1.0

    def raw_term(self, out: Tensor, y: Tensor) -> Tensor:
        """r = Σ_outputs (f − y)² per example."""
        return ((out - y.to(out.dtype)) ** 2).reshape(out.shape[0], -1).sum(-1)

    def per_term(self, out: Tensor, y: Tensor) -> Tensor:
        return self.scale * self.raw_term(out, y)

    def value(self, out: Tensor, y: Tensor) -> Tensor:
        """The criterion's value on one batch, from this class's formula (checked against torch once)."""
        return self.raw_term(out, y).sum() / self.denominator(y)

    def criterion(self) -> Callable[[Tensor, Tensor], Tensor]:
        return self.fn

    def _whiten(self, out: Tensor, v: Tensor) -> Tensor:
        return math.sqrt(2.0 * self.scale) * v


class TorchCrossEntropyLoss(CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` on (n, C) outputs, with the criterion's exact value.

    Every option makes each term r = Σ_c a_c (logsumexp f − f_c) for non-negative class coefficients a:
    class labels y give a = (1 − ε)·w_y·e_y + (ε/C)·w, probability targets p give a = w ⊙ ((1 − ε)·p + ε/C)
    (w: class weights, 1 if none; ε: label smoothing). Labels equal to ``ignore_index`` are masked terms.
    The criterion is Σ r over the counted terms divided by Σ w_y (labels, "mean"), by N (probabilities,
    "mean") or by 1 ("sum"); as a mean over the N counted terms each term is ``scale``·r. Its output
    Hessian is α·(diag p − p pᵀ) with α = Σ_c a_c, the built-in cross-entropy's times scale·α ≥ 0.
    """

    def __init__(self, fn: nn.CrossEntropyLoss, *, num_classes: int, y: Tensor, soft: bool) -> None:
        super().__init__(num_classes=num_classes)
        self.fn = fn
        self.soft = soft
        self.reduction = fn.reduction
        self.ignore_index = int(fn.ignore_index)
        self.smoothing = float(fn.label_smoothing)
        self.weight = None if fn.weight is None else fn.weight.detach()
        d = self.denominator(y)
        self.scale = self.n_terms(y) / d if d > 0 else math.inf  # weights summing to 0: refused by the caller

    @property
    def convention(self) -> str:
        opts = [f"reduction={self.reduction!r}"]
        if self.weight is not None:
            opts.append("weight=[" + ", ".join(f"{w:.4g}" for w in self.weight.tolist()) + "]")
        if self.smoothing:
            opts.append(f"label_smoothing={self.smoothing:g}")
        targets = "probability targets" if self.soft else f"class labels, ignore_index={self.ignore_index}"
        return f"torch nn.CrossEntropyLoss({', '.join(opts)}) on {targets} (evaluated exactly)"

    def mask(self, y: Tensor) -> Tensor | None:
        return None if self.soft else y != self.ignore_index

    def n_terms(self, y: Tensor) -> int:
        return int(y.shape[0]) if self.soft else int((y != self.ignore_index).sum())

    def denominator(self, y: Tensor) -> float:
        """What the criterion divides Σ r over the counted terms by, on targets ``y``."""
        if self.reduction == "sum":
            return 1.0
        if self.soft or self.weight is None:
            return float(self.n_terms(y))
        return float(self.weight.to(y.device)[self._target(y)][self.mask(y)].sum())

    def _target(self, y: Tensor) -> Tensor:
        return y.argmax(-1) if self.soft else y.masked_fill(y == self.ignore_index, 0)

    def _alpha(self, out: Tensor, y: Tensor) -> Tensor:
        """α = Σ_c a_c per term (no dependence on the outputs)."""
        C, eps = out.shape[-1], self.smoothing
        w = None if self.weight is None else self.weight.to(out.device, out.dtype)
        if self.soft:
            q = (1 - eps) * y.to(out.dtype) + eps / C
            return (q if w is None else q * w).sum(-1)
        if w is None:
            return out.new_ones(y.shape)
        return (1 - eps) * w[self._target(y)] + (eps / C) * w.sum()

    def _alpha_and_af(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(α = Σ_c a_c, Σ_c a_c f_c) per term."""
        C, eps = out.shape[-1], self.smoothing
        w = None if self.weight is None else self.weight.to(out.device, out.dtype)
        if self.soft:
            q = (1 - eps) * y.to(out.dtype) + eps / C
            a = q if w is None else q * w
            return a.sum(-1), (a * out).sum(-1)
        t = self._target(y)
        f_y = out.gather(-1, t.unsqueeze(-1)).squeeze(-1)
        if w is None:
            return torch.ones_like(f_y), (1 - eps) * f_y + (eps / C) * out.sum(-1)
        w_y = w[t]
        return (1 - eps) * w_y + (eps / C) * w.sum(), (1 - eps) * w_y * f_y + (eps / C) * (out * w).sum(-1)

    def raw_term(self, out: Tensor, y: Tensor) -> Tensor:
        """r = α·logsumexp(f) − Σ_c a_c f_c per term (masked terms included; their value is meaningless)."""
        alpha, af = self._alpha_and_af(out, y)
        return alpha * torch.logsumexp(out, -1) - af

    def per_term(self, out: Tensor, y: Tensor) -> Tensor:
        return self.scale * self.raw_term(out, y)

    def value(self, out: Tensor, y: Tensor) -> Tensor:
        """The criterion's value on one batch, from this class's formula (checked against torch once)."""
        r = self.raw_term(out, y)
        m = self.mask(y)
        return (r if m is None else r * m.to(r.dtype)).sum() / self.denominator(y)

    def gauss_newton(self, out: Tensor, v: Tensor, y: Tensor) -> Tensor:
        u = self._whiten(out, v) * (self.scale * self._alpha(out, y)).sqrt().unsqueeze(-1)
        m = self.mask(y)
        return u if m is None else u * m.to(u.dtype).unsqueeze(-1)

    def criterion(self) -> Callable[[Tensor, Tensor], Tensor]:
        return self.fn


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


def resolve_loss(loss, model: nn.Module, x: Tensor, y: Tensor, num_classes: int | None) -> Loss:
    """Check ``loss`` against the model's output on the first examples of ``x`` and the targets ``y``.

    Raises :class:`UserError` naming the real cause: an unknown name, targets of the wrong dtype or shape,
    labels outside the outputs, a callable that does not return a differentiable scalar.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise UserError(f"inputs and targets must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape[:1] != y.shape[:1]:
        raise UserError(f"inputs and targets disagree on the number of examples: x has shape {tuple(x.shape)}, "
                        f"y has shape {tuple(y.shape)}")
    custom = not isinstance(loss, str)
    if custom and not callable(loss):
        raise UserError(f"loss must be 'mse', 'ce' or a callable (output, target) -> scalar, got {loss!r}")
    if not custom and loss not in BUILTIN:
        raise UserError(f"unknown loss {loss!r}; choose one of {', '.join(BUILTIN)} "
                        "or pass a callable (output, target) -> scalar such as torch.nn.MSELoss()"
                        + did_you_mean(loss, BUILTIN))
    kind = _torch_criterion(loss) if custom else None
    if kind is not None and loss.reduction not in ("mean", "sum"):
        raise UserError(f"loss {describe(loss)} has reduction={loss.reduction!r}; the Hessian is that of a scalar: "
                        "use reduction='mean' or 'sum'")
    out = _sample_output(model, x)
    n_out = int(out.shape[-1]) if out.dim() > 1 else 1
    float_targets = y.is_floating_point()
    if kind is not None:
        routed = _route_criterion(loss, kind, out, y, n_out)
        if routed is not None:
            return routed
    if custom and getattr(loss, "reduction", "mean") != "mean":
        raise UserError(f"loss {describe(loss)} has reduction={loss.reduction!r}; the Hessian is taken of the mean "
                        "loss over examples: use reduction='mean'"
                        + (" (reduction='sum' is taken for (n, classes) outputs only)" if kind else ""))
    if custom:
        _check_callable(loss, out, y[: out.shape[0]])
        sequence = not float_targets and y.dim() == 2 and out.dim() == 3
        return CustomLoss(loss, num_classes=n_out, sequence=sequence, regression=float_targets)
    if float_targets:
        if loss == "ce":
            raise UserError(f"loss 'ce' takes integer class labels (torch.long) of shape (n,), got {y.dtype} "
                            f"targets of shape {tuple(y.shape)}; for regression use loss='mse' or a callable")
        if tuple(y.shape[1:]) != tuple(out.shape[1:]):
            raise UserError(f"loss 'mse' with float targets is regression and needs targets of the output's shape "
                            f"(n, {', '.join(map(str, out.shape[1:]))}), got {tuple(y.shape)}; class labels must "
                            "be integers (torch.long)")
        return RegressionLoss(num_classes=n_out)
    if y.dtype in (torch.bool, torch.uint8) or y.is_complex():
        raise UserError(f"targets of dtype {y.dtype} are neither class labels (torch.long) nor regression targets (float)")
    sequence = y.dim() == 2
    if out.dim() != y.dim() + 1 or tuple(out.shape[1:-1]) != tuple(y.shape[1:]):
        raise UserError(f"integer class labels of shape {tuple(y.shape)} need outputs of shape "
                        f"{tuple(y.shape)} + (classes,), but the model outputs {('n',) + tuple(out.shape[1:])}")
    if num_classes is not None and int(num_classes) != n_out:
        raise UserError(f"num_classes={num_classes} but the model has {n_out} outputs per example")
    lo = -1 if sequence else 0
    if y.numel() and (int(y.min()) < lo or int(y.max()) >= n_out):
        raise UserError(f"class labels must lie in 0..{n_out - 1} (the model has {n_out} outputs"
                        f"{'; -1 masks a position' if sequence else ''}), got labels in "
                        f"{int(y.min())}..{int(y.max())}")
    return (MSELoss if loss == "mse" else CrossEntropyLoss)(num_classes=n_out, sequence=sequence)


def _torch_criterion(fn) -> str | None:
    """"mse" / "ce" for an ``nn.MSELoss`` / ``nn.CrossEntropyLoss`` whose forward is torch's own, else None."""
    for kind, cls in (("mse", nn.MSELoss), ("ce", nn.CrossEntropyLoss)):
        if isinstance(fn, cls) and type(fn).forward is cls.forward:
            return kind
    return None


def _route_criterion(fn: nn.Module, kind: str, out: Tensor, y: Tensor, n_out: int) -> Loss | None:
    """The torch criterion ``fn`` as a :class:`TorchMSELoss` / :class:`TorchCrossEntropyLoss` (its value
    exactly, its Gauss–Newton form in closed form), or None where its targets are a layout these do not
    cover (cross-entropy on outputs other than (n, C)); a wrong target is a UserError naming it."""
    n = int(y.shape[0])
    if kind == "mse":
        want = (n, *out.shape[1:])
        if tuple(y.shape) != want or y.is_complex() or y.dtype == torch.bool:
            raise UserError(f"nn.MSELoss needs real targets of the output's shape {want}, got {y.dtype} targets of "
                            f"shape {tuple(y.shape)} (torch broadcasts other shapes silently); for class labels use loss='mse' "
                            "(0.5·Σ(f − onehot)²) or pass one-hot float targets")
        _check_callable(fn, out, y[: out.shape[0]])
        spec: Loss = TorchMSELoss(fn, num_classes=n_out, y=y)
    else:
        if out.dim() != 2:
            return None
        soft = y.is_floating_point()
        if soft and tuple(y.shape) != (n, n_out):
            raise UserError(f"nn.CrossEntropyLoss takes class labels (torch.long) of shape ({n},) or class "
                            f"probabilities of the output's shape ({n}, {n_out}), got {y.dtype} targets of shape "
                            f"{tuple(y.shape)}")
        if not soft and (y.dim() != 1 or y.dtype in (torch.bool, torch.uint8) or y.is_complex()):
            raise UserError(f"nn.CrossEntropyLoss takes class labels (torch.long) of shape ({n},) or class "
                            f"probabilities of shape ({n}, {n_out}), got {y.dtype} targets of shape {tuple(y.shape)}")
        if fn.weight is not None and bool((fn.weight < 0).any()):
            raise UserError("nn.CrossEntropyLoss has negative class weights: its output Hessian is then not "
                            "positive semi-definite and no Gauss–Newton form exists; use weights ≥ 0")
        if soft:
            if bool((y < 0).any()):
                raise UserError("nn.CrossEntropyLoss probability targets must be ≥ 0, got negative entries")
        else:
            counted = y[y != fn.ignore_index]
            if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= n_out):
                raise UserError(f"class labels must lie in 0..{n_out - 1} (the model has {n_out} outputs; "
                                f"ignore_index={fn.ignore_index} marks a left-out example), got labels in "
                                f"{int(counted.min())}..{int(counted.max())}")
            if counted.numel() == 0:
                raise UserError(f"every target equals ignore_index={fn.ignore_index}: the loss has no terms")
        _check_callable(fn, out, y[: out.shape[0]])  # what torch itself refuses (dtypes, weight length)
        spec = TorchCrossEntropyLoss(fn, num_classes=n_out, y=y, soft=soft)
        if not math.isfinite(spec.scale):
            raise UserError("the class weights of the counted labels sum to 0, so the criterion is 0/0 (torch "
                            "returns nan)")
    _check_value(spec, fn, out, y[: out.shape[0]])
    return spec


def _check_value(spec: Loss, fn: nn.Module, out: Tensor, y: Tensor) -> None:
    """The hand-written formula must give the criterion's own value on the sample (else a bug here)."""
    if spec.denominator(y) == 0:
        return  # every sampled label ignored: torch gives nan, nothing to compare
    with torch.no_grad():
        ours, theirs = float(spec.value(out, y)), float(fn(out, y))
    tol = 1e3 * torch.finfo(out.dtype).eps
    if not math.isclose(ours, theirs, rel_tol=tol, abs_tol=tol):
        raise RuntimeError(f"eos_probe's form of {describe(fn)} gives {ours!r} where torch gives {theirs!r}; "
                           "please report this")


def _sample_output(model: nn.Module, x: Tensor) -> Tensor:
    params = list(model.parameters())
    if not params:
        raise UserError("the model has no parameters, so it has no Hessian")
    p = params[0]
    if x.is_floating_point() and x.dtype != p.dtype:
        raise UserError(f"inputs are {x.dtype} but the model's parameters are {p.dtype}: convert one "
                        f"(x.to({p.dtype}) or model.to({x.dtype}))")
    if x.device != p.device:
        raise UserError(f"inputs are on {x.device} but the model is on {p.device}")
    try:
        with torch.no_grad():
            out = model(x[: min(2, int(x.shape[0]))])
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward is reported as one line
        raise UserError(f"model(x) failed on the first examples: {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(out, Tensor) or out.dim() == 0:
        raise UserError(f"the model must return a tensor with a batch dimension, got {type(out).__name__}")
    return out


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


#: functional forms of the same kinks (seen by tracing one forward)
_KINKED_FUNCS = ("relu", "relu_", "relu6", "leaky_relu", "hardtanh", "max_pool1d", "max_pool2d", "max_pool3d",
                 "adaptive_max_pool1d", "adaptive_max_pool2d", "abs", "clamp", "clip")


def check_model(model: nn.Module, x: Tensor | None = None) -> None:
    """Refuse modules whose loss is not a fixed function of θ; warn about kinks (ReLU, max-pooling, abs)
    found as modules or, with ``x``, in a traced forward of its first examples."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise UserError(f"layer {name or '(the model)'!s} ({type(m).__name__}) is in train mode: batch statistics couple "
                            "the examples and change with micro-batching; call model.eval() first")
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise UserError(f"layer {name or '(the model)'!s} ({type(m).__name__}) is in train mode: the loss is random; "
                            "call model.eval() first")
    kinked = {type(m).__name__ for m in model.modules() if isinstance(m, _KINKED)}
    if x is not None and not kinked:
        kinked = _traced_kinks(model, x)
    kinked = sorted(kinked)
    if kinked:
        warnings.warn(f"the model uses {', '.join(kinked)}: their second derivative is zero except at kinks, where "
                      "the Hessian is undefined, so the Hessian here is that of the current linear pieces (finite "
                      "differences across a kink disagree with it); smooth activations (GELU, SiLU) avoid this",
                      KinkWarning, stacklevel=3)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _traced_kinks(model: nn.Module, x: Tensor) -> set[str]:
    from torch.overrides import TorchFunctionMode

    seen: set[str] = set()

    class _Calls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in _KINKED_FUNCS:
                seen.add(name)
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), _Calls():
            model(x[: min(2, int(x.shape[0]))])
    except Exception:  # noqa: BLE001 - the forward's own errors are reported by resolve_loss
        return set()
    return seen
