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

from .base import (BUILTIN, LOSS_CONVENTIONS, LOSSES, CrossEntropyLoss, CustomLoss, KinkWarning, Loss, MSELoss,
                   RegressionLoss, describe)
from .resolve import check_model, resolve_loss
from .torch_criteria import TorchCrossEntropyLoss, TorchMSELoss

__all__ = ["BUILTIN", "LOSSES", "LOSS_CONVENTIONS", "CrossEntropyLoss", "CustomLoss", "KinkWarning", "Loss",
           "MSELoss", "RegressionLoss", "TorchCrossEntropyLoss", "TorchMSELoss", "check_model", "describe",
           "resolve_loss"]
