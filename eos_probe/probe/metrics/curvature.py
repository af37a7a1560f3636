"""Curvature metrics of the Hessian H: λ_max, the top k, the trace, the spectral density and the curvature along
the last update direction (docs/theory.md §4). Their Adam (P⁻¹H) variants are in ``preconditioned``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import UserError
from ..context import ProbeContext
from ..direction import last_direction
from ..registry import Column, Metric, positive_float, positive_int
from ..shared import shared_lanczos

#: the `method` values of the trace metrics (and of ms_margin's `trace_method`)
TRACE_METHODS = ("krylov", "ggn+residual", "hutch++", "hutchinson")


class LambdaMax(Metric):
    """λ_max of H from the shared Lanczos run (columns: value, err, nhvp, converged)."""

    name = "lambda_max"
    description = ("largest Hessian eigenvalue (the probe's shared Lanczos run: full re-orthogonalisation, warm "
                   "start with a random part, converged = residual and gap check); err = Ritz residual")
    defaults = {"tol": 1e-3, "max_iter": 100}

    def check(self) -> None:
        positive_float(self.name, "tol", self.options["tol"])
        positive_int(self.name, "max_iter", self.options["max_iter"], 2)

    def columns(self) -> list[Column]:
        return super().columns() + [Column(f"{self.name}_converged", "i1",
                                           attrs={"description": "1 if Lanczos met its tolerance (residual bound "
                                                                 "and gap check, after the minimum Krylov dimension)"})]

    def lanczos_need(self) -> dict[str, Any]:
        return {"k": 1, "tol": self.options["tol"], "max_iter": self.options["max_iter"]}

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        est, new = ctx.lambda_max(self.operator, self.options["tol"], self.options["max_iter"])
        return {self.name: float(est.value), f"{self.name}_err": float(est.error),
                f"{self.name}_nhvp": est.n_hvp if new else 0, f"{self.name}_converged": int(est.converged)}


class TopK(Metric):
    """The k largest eigenvalues of H from the shared Lanczos run (NaN-padded to k; err = Ritz residuals)."""

    name = "top_k"
    description = "k largest Hessian eigenvalues (the probe's shared Lanczos run, warm start); err = Ritz residuals"
    defaults = {"k": 5, "tol": 1e-3, "max_iter": 200}

    def check(self) -> None:
        positive_int(self.name, "k", self.options["k"])
        positive_float(self.name, "tol", self.options["tol"])
        positive_int(self.name, "max_iter", self.options["max_iter"], 2)

    def columns(self) -> list[Column]:
        k = (self.options["k"],)
        cols = super().columns()
        return [Column(cols[0].name, shape=k, attrs=cols[0].attrs), Column(cols[1].name, shape=k, attrs=cols[1].attrs),
                cols[2], Column(f"{self.name}_converged", "i1", attrs={"description": "1 if Lanczos met its tolerance"})]

    def lanczos_need(self) -> dict[str, Any]:
        return {"k": self.options["k"], "tol": self.options["tol"], "max_iter": self.options["max_iter"]}

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        est, new = shared_lanczos(ctx, self.operator)
        k = self.options["k"]
        return {self.name: _pad(est.value, k), f"{self.name}_err": _pad(est.error, k),
                f"{self.name}_nhvp": est.n_hvp if new else 0, f"{self.name}_converged": int(est.converged)}


def _pad(x: Any, k: int) -> np.ndarray:
    a = np.full(k, np.nan)
    v = np.atleast_1d(np.asarray(x, dtype=float))[:k]
    a[: v.size] = v
    return a


class TraceUser:
    """Shared-work needs of a metric that reads the probe's trace (options `method`, `n_matvec`): the krylov
    trace needs the shared Lanczos run (k = 1) and `n_matvec` deflated probes of one step."""

    options: dict[str, Any]

    def lanczos_need(self) -> dict[str, Any] | None:
        return {"k": 1} if self.options["method"] == "krylov" else None

    def rest_need(self) -> dict[str, Any] | None:
        return {"n_probes": self.options["n_matvec"], "n_steps": 1} if self.options["method"] == "krylov" else None


class Trace(TraceUser, Metric):
    """Tr H by `method` (krylov, ggn+residual, hutch++, hutchinson); the estimate is shared with
    ms_margin and dir_curvature on the same operator (``ProbeContext.trace``)."""

    name = "trace"
    description = ("Hessian trace; err = standard error (krylov: from the Gaussian-probe variance of the "
                   "control-varied deflated rest; otherwise t-corrected). krylov: top Ritz values of the shared "
                   "Lanczos run + Hutchinson on the deflated rest (n_matvec probes, shared with ms_margin, the "
                   "run's further Ritz pairs as control variates); "
                   "ggn+residual: exact Gauss-Newton trace from per-sample Jacobians + Hutchinson on H - G; "
                   "hutch++ / hutchinson: Rademacher probes")
    defaults = {"method": "krylov", "n_matvec": 6, "rtol": None}

    def check(self) -> None:
        if self.options["method"] not in TRACE_METHODS:
            raise UserError(f"probe metric {self.name!r}: unknown method {self.options['method']!r}; "
                            f"choose one of {', '.join(TRACE_METHODS)}")
        positive_int(self.name, "n_matvec", self.options["n_matvec"], 2)
        positive_float(self.name, "rtol", self.options["rtol"], allow_none=True)
        if self.options["method"] == "krylov" and self.options["rtol"] is not None:
            raise UserError(f"probe metric {self.name!r}: method 'krylov' has a fixed budget (n_matvec probes of "
                            f"the deflated rest); drop rtol or choose another method")

    def columns(self) -> list[Column]:
        cols = super().columns()
        cols[0] = Column(cols[0].name, attrs={**cols[0].attrs, "method_used": self._method_used()})
        return cols

    def _method_used(self) -> str:
        m = self.options["method"]
        return "hutch++" if (m == "ggn+residual" and self.operator != "H") else m

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        o = self.options
        (est, _), new = ctx.trace(self.operator, o["method"], o["n_matvec"], o["rtol"])
        return {self.name: float(est.value), f"{self.name}_err": float(est.error),
                f"{self.name}_nhvp": est.n_hvp if new else 0}


class Density(Metric):
    """The spectral density of H by stochastic Lanczos quadrature, written to /spectra/density."""

    name = "density"
    description = "spectral density of H by stochastic Lanczos quadrature: nodes and weights per probe vector"
    defaults = {"n_probes": 4, "n_steps": 30}
    spectrum = True

    def check(self) -> None:
        positive_int(self.name, "n_probes", self.options["n_probes"])
        positive_int(self.name, "n_steps", self.options["n_steps"], 2)

    def spectrum_shape(self) -> tuple[int, ...]:
        return (self.options["n_probes"], self.options["n_steps"])

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        dens, new = ctx.density(self.operator, self.options["n_probes"], self.options["n_steps"])
        shape = self.spectrum_shape()
        return {"nodes": _fit(dens.nodes, shape), "weights": _fit(dens.weights, shape, fill=0.0),
                "nhvp": dens.n_hvp if new else 0}


def _fit(a: Any, shape: tuple[int, int], fill: float = np.nan) -> np.ndarray:
    """Pad/cut an SLQ array to the declared row shape (Lanczos may stop early on an invariant subspace)."""
    a = np.asarray(torch.as_tensor(a).detach().cpu(), dtype=float) if isinstance(a, Tensor) else np.asarray(a, float)
    a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
    out = np.full(shape, fill)
    r, c = min(shape[0], a.shape[0]), min(shape[1], a.shape[1])
    out[:r, :c] = a[:r, :c]
    return out


class DirCurvature(TraceUser, Metric):
    """gᵀHg/‖g‖² along the optimizer's last direction g (``probe.direction``), beside Tr(H)/d."""

    name = "dir_curvature"
    description = ("curvature g^T H g / ||g||^2 along the last gradient estimate g the optimizer used "
                   "(NaN at step 0); dir_curvature_mean = Tr(H)/d beside it (docs/theory.md section 5)")
    defaults = {"method": "krylov", "n_matvec": 6, "rtol": None}

    def columns(self) -> list[Column]:
        return super().columns() + [
            Column(f"{self.name}_mean", attrs={"description": "average curvature Tr(H)/d (trace estimator)"}),
            Column(f"{self.name}_mean_err", attrs={"description": "standard error of dir_curvature_mean"})]

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from ...curvature import directional_curvature

        (tr, _), new_tr = ctx.trace("H", *ctx.probe.trace_options("H", self.options))
        d = ctx.objective.dim
        row = {f"{self.name}_mean": float(tr.value) / d, f"{self.name}_mean_err": float(tr.error) / d}
        g = last_direction(ctx)
        spent = tr.n_hvp if new_tr else 0
        if g is None or g.dim() != 1 or not bool(torch.any(g != 0)):
            row.update({self.name: math.nan, f"{self.name}_err": math.nan, f"{self.name}_nhvp": spent})
            return row
        est = directional_curvature(ctx.operator("H"), g.to(ctx.theta))
        row.update({self.name: float(est.value), f"{self.name}_err": float(est.error),
                    f"{self.name}_nhvp": spent + est.n_hvp})
        return row
