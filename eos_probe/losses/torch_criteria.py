"""nn.MSELoss and nn.CrossEntropyLoss recognised and evaluated by hand with exactly their value (package docstring)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import UserError
from .base import CrossEntropyLoss, Loss, RegressionLoss, _check_callable, describe


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
