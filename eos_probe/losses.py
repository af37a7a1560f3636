"""Loss functions of the Objective: the built-in conventions and any user callable, checked up front.

Built-in names keep the project's conventions (docs/theory.md §6):

* ``"mse"``: 0.5 · Σ_outputs (f − t)², averaged over loss terms, where t is the one-hot vector of an
  integer class label, or the target itself when the targets are floats of the output's shape (regression);
* ``"ce"``: cross-entropy of integer class labels, averaged over loss terms.

Any other loss is a callable ``loss_fn(output, target) -> scalar`` that averages over the examples of the
batch it is given (a torch criterion such as ``nn.MSELoss()`` or ``nn.CrossEntropyLoss()`` with the
default ``reduction="mean"``, or a plain function). The Objective evaluates it per micro-batch and weights
each by its size, so with micro-batches it must be a mean over examples; without, any scalar works.

The checks here run once, on a forward pass of a few examples, so that a wrong target shape or dtype is
reported as such rather than as a failure deep inside a Hessian-vector product.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .errors import UserError

BUILTIN = ("mse", "ce")

#: modules whose second derivative is zero almost everywhere and undefined at a kink
_KINKED = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
           nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


class KinkWarning(UserWarning):
    """The model has piecewise-linear pieces (ReLU, max-pooling): its Hessian ignores their kinks."""


class Loss:
    """One resolved loss: per-chunk sums of loss terms and correct predictions, and how terms are counted."""

    def __init__(self, name: str, fn: Callable[[Tensor, Tensor], Tensor] | None, *, num_classes: int,
                 sequence: bool, regression: bool) -> None:
        self.name = name            # "mse", "ce" or "custom"
        self.fn = fn                # the user's callable for "custom"
        self.num_classes = num_classes
        self.sequence = sequence    # integer targets (n, L); −1 = position not in the loss
        self.regression = regression  # float targets of the output's shape

    @property
    def convention(self) -> str:
        if self.name == "custom":
            return f"user loss {describe(self.fn)}, mean over examples"
        if self.name == "mse" and self.regression:
            return "0.5*sum_outputs(f-y)^2, mean over examples (regression targets)"
        from .objective import LOSS_CONVENTIONS

        return LOSS_CONVENTIONS[self.name]

    def n_terms(self, y: Tensor) -> int:
        """Number of loss terms of a target tensor: examples, or counted positions of sequences."""
        return int((y >= 0).sum()) if self.sequence else int(y.shape[0])

    def chunk_sum(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ loss terms, Σ correct predictions) of one chunk of outputs (NaN correct for regression)."""
        if self.name == "custom":
            s = self.fn(out, y) * self.n_terms(y)
            return s, self._correct(out, y)
        if self.regression:
            per = 0.5 * ((out - y.to(out.dtype)) ** 2).reshape(out.shape[0], -1).sum(-1)
            return per.sum(), out.new_full((), float("nan"))
        mask = (y >= 0).to(out.dtype) if self.sequence else None
        target = y.clamp(min=0) if self.sequence else y
        if self.name == "mse":
            onehot = torch.nn.functional.one_hot(target, self.num_classes).to(out.dtype)
            per = 0.5 * ((out - onehot) ** 2).sum(-1)
        else:
            per = torch.logsumexp(out, -1) - out.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        correct = (out.argmax(-1) == target).to(out.dtype)
        if mask is not None:
            per = per * mask
            correct = correct * mask
        return per.sum(), correct.sum()

    def _correct(self, out: Tensor, y: Tensor) -> Tensor:
        if not y.is_floating_point() and out.dim() == y.dim() + 1:
            c = (out.argmax(-1) == y).to(out.dtype)
            return (c * (y >= 0).to(out.dtype)).sum() if self.sequence else c.sum()
        return out.new_full((), float("nan"))


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
                        "or pass a callable (output, target) -> scalar such as torch.nn.MSELoss()")
    if custom and getattr(loss, "reduction", "mean") != "mean":
        raise UserError(f"loss {describe(loss)} has reduction={loss.reduction!r}; the Hessian is taken of the mean "
                        "loss over examples: use reduction='mean'")
    out = _sample_output(model, x)
    n_out = int(out.shape[-1]) if out.dim() > 1 else 1
    float_targets = y.is_floating_point()
    if custom:
        _check_callable(loss, out, y[: out.shape[0]])
        sequence = not float_targets and y.dim() == 2 and out.dim() == 3
        return Loss("custom", loss, num_classes=n_out, sequence=sequence, regression=float_targets)
    if float_targets:
        if loss == "ce":
            raise UserError(f"loss 'ce' takes integer class labels (torch.long) of shape (n,), got {y.dtype} "
                            f"targets of shape {tuple(y.shape)}; for regression use loss='mse' or a callable")
        if tuple(y.shape[1:]) != tuple(out.shape[1:]):
            raise UserError(f"loss 'mse' with float targets is regression and needs targets of the output's shape "
                            f"(n, {', '.join(map(str, out.shape[1:]))}), got {tuple(y.shape)}; class labels must "
                            "be integers (torch.long)")
        return Loss("mse", None, num_classes=n_out, sequence=False, regression=True)
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
    return Loss(loss, None, num_classes=n_out, sequence=sequence, regression=False)


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
