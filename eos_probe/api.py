"""The Python API in five names: the Hessian of your model, and estimates of what matters about it.

    import eos_probe
    H = eos_probe.hessian(model, torch.nn.CrossEntropyLoss(), (x, y))
    eos_probe.lambda_max(H)      # Estimate(value, error, n_hvp, converged)
    eos_probe.trace(H)

Everything here is a thin layer over the curvature engine (`eos_probe.curvature`) and the one objective
(`eos_probe.objective.Objective`) that `eos-probe train` uses: same Lanczos, same trace estimators, same
mean-square stability sum. Randomised estimators draw from a generator seeded by ``seed`` (default 0), so a
call is reproducible; pass ``seed=None`` for fresh randomness.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from . import curvature as cv
from .curvature import Density, Estimate, HessianOperator, PreconditionedOperator
from .curvature.deflated import negative_mass, rest_quadrature, split_trace_fn
from .curvature.operators import CurvatureOperator
from .errors import UserError
from .losses import check_model
from .objective import Objective
from .presets import check_lr, default, preset
from .probe.shared import control_pairs, ritz_block
from .theory import band_for, ms_term_function
from .theory.stability import Band
from .theory.states import classify

__all__ = ["hessian", "lambda_max", "top_k", "trace", "density", "commutator_ratio", "ms_margin",
           "Estimate", "HessianOperator"]


def hessian(model: nn.Module, loss_fn: str | Callable[[Tensor, Tensor], Tensor], data: tuple[Tensor, Tensor], *,
            microbatch: int | None = None, backend: str = "double-backward") -> HessianOperator:
    """The Hessian of the mean loss of ``model`` on ``data = (x, y)`` at the model's current parameters.

    ``loss_fn``: ``nn.MSELoss`` or ``nn.CrossEntropyLoss`` (reduction "mean" or "sum"; class weights,
    label smoothing, ``ignore_index``, class-index or probability targets), evaluated with exactly the
    criterion's value and, like the built-in names, with a closed-form Gauss–Newton part (so ``trace`` is
    exact on it); any other callable ``(output, target) -> scalar`` that averages over examples (a torch
    criterion with ``reduction="mean"``); or a built-in name: ``"ce"`` (cross-entropy of integer labels) or
    ``"mse"`` (0.5·Σ_outputs (f − onehot(y))², or (f − y)² for float targets of the output's shape; mean over
    examples — the edge-of-stability convention, whose λ_max is C/2 times that of ``nn.MSELoss()`` on one-hot
    targets). ``num_classes`` is read from the output.

    ``microbatch``: evaluate the batch in chunks of this many examples (memory); the loss must then be a
    mean over examples. The result is a matrix-free operator (``H @ v``, ``H.matmat(V)``, ``H.to_scipy()``)
    that counts its products; the model itself is never modified. ``backend``: "double-backward" (as
    PyHessian), "fwd-rev", or "auto" (times both once — worth it for repeated use on a GPU).

    Raises ``UserError`` naming the cause for targets of the wrong shape or dtype, a loss that is not a
    twice-differentiable scalar, BatchNorm or Dropout in train mode; warns (``KinkWarning``) about ReLU-type
    kinks.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise UserError("data must be a pair (x, y) of input and target tensors")
    x, y = data
    check_model(model, x if isinstance(x, Tensor) else None)
    obj = Objective(model, x, y, loss=loss_fn, microbatch=microbatch, hvp_backend=backend)
    return HessianOperator(obj, obj.initial_theta(), backend=backend)


def _generator(op: CurvatureOperator, seed: int | None) -> torch.Generator:
    g = torch.Generator(device=op.device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def _check_op(op) -> CurvatureOperator:
    if not isinstance(op, CurvatureOperator):
        raise UserError(f"expected an operator from eos_probe.hessian(...), got {type(op).__name__}")
    return op


def lambda_max(op: CurvatureOperator, *, tol: float = 1e-3, max_iter: int = 200, seed: int | None = 0) -> Estimate:
    """Largest eigenvalue by Lanczos with full re-orthogonalisation; ``error`` is the Ritz residual, a rigorous
    bound on the distance to an eigenvalue; stops when error ≤ tol·|λ| (``converged=False`` if max_iter hit)."""
    return cv.lambda_max(_check_op(op), tol=tol, max_iter=max_iter, generator=_generator(op, seed))


def top_k(op: CurvatureOperator, k: int = 5, *, tol: float = 1e-3, max_iter: int = 200,
          seed: int | None = 0) -> Estimate:
    """The k largest eigenvalues (descending array) with Ritz-residual bounds; eigenvectors in ``extra["vectors"]``."""
    return cv.top_k(_check_op(op), k, tol=tol, max_iter=max_iter, generator=_generator(op, seed))


def _default_trace_method(op: CurvatureOperator) -> str:
    # the exact Gauss–Newton part needs a loss whose output Hessian is known in closed form: the built-in
    # names and the torch criteria routed to them (loss_name "mse" / "ce"), not an arbitrary callable
    if isinstance(op, HessianOperator) and op.objective.loss_name in ("mse", "ce"):
        return "ggn+residual"
    return "hutchinson"


def trace(op: CurvatureOperator, *, method: str = "auto", n_matvec: int = 100, rtol: float | None = None,
          seed: int | None = 0) -> Estimate:
    """Tr(H) with one standard error. ``method="auto"``: exact Gauss–Newton trace + Hutchinson on the
    remainder for the built-in losses, ``nn.MSELoss`` and ``nn.CrossEntropyLoss`` ("ggn+residual",
    layer-stratified), plain Hutchinson for other callables; also
    "hutchinson", "hutch++". At most ``n_matvec`` products; stops early once error ≤ rtol·|value|."""
    method = _default_trace_method(_check_op(op)) if method == "auto" else method
    return cv.trace(op, method=method, n_matvec=n_matvec, rtol=rtol, generator=_generator(op, seed))


def density(op: CurvatureOperator, *, n_probes: int = 4, n_steps: int = 40, seed: int | None = 0,
            grid: np.ndarray | int | None = None, sigma: float | None = None) -> Density:
    """Spectral density by stochastic Lanczos quadrature: a :class:`Density` with ``nodes``/``weights`` per
    probe, a smoothed ``density`` on ``grid`` and ``trace_fn(f)`` → (Tr f(H), standard error)."""
    return cv.spectral_density(_check_op(op), n_probes=n_probes, n_steps=n_steps, generator=_generator(op, seed),
                            grid=grid, sigma=sigma)


def commutator_ratio(op: CurvatureOperator, p: Tensor, *, n_probes: int = 8, seed: int | None = 0) -> Estimate:
    """r = ‖PH − HP‖_F / ‖PH‖_F for a diagonal preconditioner P = diag(p) (e.g. Adam's √v + ε) with one
    standard error; r ≈ 0 means the preconditioned bands of docs/theory.md §3 apply as stated."""
    if isinstance(op, PreconditionedOperator):
        op = op.H
    return cv.commutator_ratio(_check_op(op), p, n_probes=n_probes, generator=_generator(op, seed))


def ms_margin(op: CurvatureOperator, *, optimizer: str, lr: float, queries: int = default("queries"),
              momentum: float | None = None, momentum_style: str = default("momentum_style"),
              directions: str = default("directions"), preconditioner: Tensor | None = None,
              n_top: int = 3, n_probes: int = 6, n_steps: int = 10, n_matvec: int = 40,
              seed: int | None = 0) -> Estimate:
    """S(η), the exact mean-square stability sum of docs/theory.md §2 for ``optimizer`` at step size ``lr``: the
    iterates stay bounded in mean square iff S < 1 (first-order optimizers: S = λ_max/(2/η), the classical
    edge). The same estimator as the probe metric ``ms_margin``: the ``n_top`` top Ritz pairs exactly, SLQ
    (``n_probes`` × ``n_steps``) on the rest, Tr(H) (``n_matvec`` products) as control variate; eigenvalues
    ≤ 0 are excluded from S (escape directions, no step-size threshold).

    Adam-type optimizers read the eigenvalues of P⁻¹H: pass ``preconditioner=p`` (P = diag(p)) or an
    operator that is already preconditioned. ``extra``: "threshold" T, "band" (the theory's Band),
    "verdict" (the one stability verdict, :class:`eos_probe.theory.StabilityVerdict`: the same words as
    ``eos-probe inspect`` and the figures), "trace", "top_k", "rest" and "negative" (S_neg = Σ_{λ<0}|λ|/T
    and its standard error, the probe's ``ms_margin_neg``); "lambda_max" for first-order optimizers.
    """
    op = _check_op(op)
    if preconditioner is not None:
        op = PreconditionedOperator(op, preconditioner)
    config = {"optimizer": optimizer, "lr": float(lr), "queries": int(queries), "momentum": momentum,
              "momentum_style": momentum_style, "directions": directions}
    p = preset(optimizer)
    check_lr(config["lr"])
    p.resolve({k: v for k, v in config.items() if k not in ("optimizer", "lr")})
    if p.preconditioned and not isinstance(op, PreconditionedOperator):
        raise UserError(f"{optimizer} reads the spectrum of P⁻¹H: pass preconditioner=p (Adam's sqrt(v)+eps)")
    band = band_for(config, op.dim)
    gen = _generator(op, seed)
    n0 = op.n_hvp
    if band.kind == "classical":
        est = cv.lambda_max(op, generator=gen)
        s, se = float(est.value) / band.threshold, float(est.error) / band.threshold
        return Estimate(value=s, error=se, n_hvp=op.n_hvp - n0, converged=est.converged,
                        extra={"threshold": band.threshold, "band": band, "lambda_max": est,
                               "verdict": classify(band, s=s, s_err=se, lambda_max=float(est.value),
                                                   lambda_max_err=float(est.error))})
    est = _ms_sum(op, band, ms_term_function(config, op.dim), gen, n_top, n_probes, n_steps, n_matvec)
    return replace(est, n_hvp=op.n_hvp - n0)


def _ms_sum(op: CurvatureOperator, band: Band, f: Callable, gen: torch.Generator, n_top: int, n_probes: int,
            n_steps: int, n_matvec: int) -> Estimate:
    """The probe metric's estimator of S: the top Ritz pairs exactly, SLQ on the deflated rest, and the trace
    (Gauss–Newton + residual where the loss allows it) as a control variate for the linear part of f."""
    T = band.threshold
    top = cv.top_k(op, min(n_top, op.dim), generator=gen)
    theta, V, err = ritz_block(top)
    rest = rest_quadrature(op, V, n_probes, n_steps, generator=gen, control=control_pairs(top))
    tr = cv.trace(op, method=_default_trace_method(op), n_matvec=n_matvec, rtol=None, generator=gen)
    n_neg, n_neg_err = negative_mass(top, op.dim)
    est = split_trace_fn(f, theta, err, rest, linear=(1.0 / T, float(tr.value), float(tr.error)),
                         negative=(n_neg, n_neg_err))
    # the negative-curvature mass as the probe logs it (ms_margin_neg = N / T)
    neg_value, neg_err = n_neg / T, n_neg_err / T
    one = classify(band, s=float(est.value), s_err=float(est.error), s_neg=neg_value,
                   s_neg_err=neg_err, trace=float(tr.value), trace_err=float(tr.error),
                   lambda_max=float(np.atleast_1d(top.value)[0]),
                   lambda_max_err=float(np.atleast_1d(top.error)[0]))
    return Estimate(value=float(est.value), error=float(est.error), n_hvp=0,
                    converged=bool(top.converged and tr.converged),
                    extra={"threshold": T, "band": band, "trace": tr, "top_k": top, "rest": rest,
                           "negative": (neg_value, neg_err), "verdict": one})
