"""Resolving a loss name or callable against the model's outputs, and the up-front checks (package docstring)."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..errors import UserError, did_you_mean
from .base import (_KINKED, BUILTIN, CrossEntropyLoss, CustomLoss, KinkWarning, Loss, MSELoss,
                   RegressionLoss, _check_callable, _first_line, describe)
from .torch_criteria import _route_criterion, _torch_criterion


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
