"""The probe: curvature measured every N steps and appended to the run file (docs/theory.md §4).

A metric is a small class registered by name (`@register_metric`); the trainer only knows the `Probe`
interface (`declare`, `due`, `run`, `state_dict`, `load_state_dict`), so adding a metric never edits it.

Metric specs on the command line are `name` or `name:key=value:key=value`, e.g.
`--probe lambda_max,trace:method=hutch++:n_matvec=60,top_k:k=8`.

Determinism. Every random draw of the probe at step t comes from generators seeded with
`stream_seed(stream_seed(seed, t, PURPOSE_PROBE), crc32(quantity), 0)`: one stream per quantity
(`lanczos/H`, `rest/H`, `density/H`, ...), and probing never touches the training streams. The Lanczos run
and the deflated probe set are shared between metrics with the union of their options (`probe_shared`),
so a metric's value can depend on which other metrics run; the file records the resolved options. Lanczos warm-start vectors and the chosen HVP back end are part of `state_dict()`, so a
resumed run logs bitwise the same probe values as an uninterrupted one (same device and threads).
"""
from __future__ import annotations

import math
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor

from .errors import UserError
from .optim.sources import PURPOSE_PROBE, stream_seed
from .probe_shared import NHVP_ATTRIBUTION

#: name -> metric class, in the order metrics are computed (shared quantities are made by the first user)
METRICS: dict[str, type["Metric"]] = {}

def register_metric(cls: type["Metric"]) -> type["Metric"]:
    """Class decorator: make a metric available to `--probe` under `cls.name`."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    METRICS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Column:
    """One /probe dataset written by a metric: `shape` is the shape of one row."""

    name: str
    dtype: str = "f8"
    shape: tuple[int, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# the per-step context: operators and shared estimates, built lazily


class ProbeContext:
    """What a metric sees at one probe step: θ, the optimizer state, operators and shared estimates."""

    def __init__(self, probe: "Probe", step: int, theta: Tensor, state: dict, optimizer, objective, config) -> None:
        self.probe = probe
        self.step = step
        self.theta = theta.detach()
        self.state = state
        self.optimizer = optimizer
        self.objective = objective
        self.config = config
        self.seed = stream_seed(config.seed, step, PURPOSE_PROBE)
        self._ops: dict[str, Any] = {}
        self._shared: dict[str, Any] = {}

    def generator(self, purpose: str) -> torch.Generator:
        """A fresh generator for one quantity (its own stream: see the module docstring)."""
        g = torch.Generator(device=self.theta.device)
        g.manual_seed(stream_seed(self.seed, zlib.crc32(purpose.encode()), 0))
        return g

    def operator(self, which: str):
        """"H": the Hessian at θ; "P": P^-1/2 H P^-1/2 with Adam's current P (same spectrum as P⁻¹H)."""
        from .curvature import HessianOperator, PreconditionedOperator

        if which not in self._ops:
            if which == "H":
                self._ops["H"] = HessianOperator(self.objective, self.theta, backend=self.probe.hvp_backend(self))
            elif which == "P":
                p = self.preconditioner()
                self._ops["P"] = PreconditionedOperator(self.operator("H"), p)
            else:  # pragma: no cover - programming error
                raise ValueError(which)
        return self._ops[which]

    def preconditioner(self) -> Tensor:
        p = self.optimizer.preconditioner(self.state)
        if p is None:  # guarded by Metric.adam_only at build time
            raise RuntimeError("this optimizer has no preconditioner")
        return p

    def preconditioner_defined(self) -> bool:
        """False before Adam's first update: P is then a placeholder of ones (v = 0), not a measurement."""
        rule = self.state.get("rule", {}) if isinstance(self.state, dict) else {}
        v = rule.get("v") if isinstance(rule, dict) else None
        return v is None or bool(torch.any(v != 0))

    def shared(self, key: str, make: Callable[[], Any]) -> tuple[Any, bool]:
        """A quantity computed once per probe step; returns (value, computed_now) so the first user pays
        (and logs) its HVP count and later users add nothing."""
        if key in self._shared:
            return self._shared[key], False
        value = make()
        self._shared[key] = value
        return value, True

    # ---------------------------------------------------------------- shared estimates
    def lambda_max(self, which: str, tol: float = 1e-3, max_iter: int = 100):
        """λ_max of an operator from the probe's shared Lanczos run (``probe_shared``): (Estimate, computed_now).

        The run is warm-started from the last probe's top Ritz vectors and uses the union of the Lanczos
        options of the metrics on this operator; `tol` and `max_iter` are kept for callers' compatibility
        and take part in that union only through the metrics' own options.
        """
        from .curvature import Estimate
        from .probe_shared import shared_lanczos

        est, new = shared_lanczos(self, which)
        vecs = est.extra["vectors"]
        extra = {**est.extra, "vector": vecs[0]}
        top = Estimate(value=float(np.atleast_1d(est.value)[0]), error=float(np.atleast_1d(est.error)[0]),
                       n_hvp=est.n_hvp, converged=est.converged, extra=extra)
        return top, new

    def trace(self, which: str, method: str = "krylov", n_matvec: int = 6, rtol: float | None = None):
        """Tr of an operator: ((Estimate, method used), computed_now). `ggn+residual` falls back to Hutch++
        where it is not available (P operator); `krylov` = Σ top Ritz values of the shared Lanczos run +
        Hutchinson on the deflated rest, from the shared deflated probes (no products of its own when
        ms_margin runs on the same operator)."""
        from .curvature import trace

        key = f"trace/{which}"

        def make():
            if method == "krylov":
                from .curvature.deflated import split_trace
                from .probe_shared import ritz_block, shared_lanczos, shared_rest

                lz, new_lz = shared_lanczos(self, which)
                rest, new_rest = shared_rest(self, which)
                theta, _, _ = ritz_block(lz)
                spent = (lz.n_hvp if new_lz else 0) + (rest.n_hvp if new_rest else 0)
                return split_trace(theta, rest, n_hvp=spent), "krylov"
            op = self.operator(which)
            m = method
            if m == "ggn+residual" and which != "H":
                m = "hutch++"
            kw = {"objective": self.objective, "theta": self.theta} if m == "ggn+residual" else {}
            est = trace(op, method=m, n_matvec=n_matvec, rtol=rtol, generator=self.generator(key), **kw)
            return est, m

        return self.shared(key, make)

    def density(self, which: str, n_probes: int = 4, n_steps: int = 40):
        """Stochastic Lanczos quadrature of an operator (nodes, weights per probe vector)."""
        from .curvature import spectral_density

        key = f"density/{which}"
        return self.shared(key, lambda: spectral_density(self.operator(which), n_probes=n_probes, n_steps=n_steps,
                                                         generator=self.generator(key)))


# ---------------------------------------------------------------------------------------------------------
# metrics


class Metric:
    """Base class: `name`, `description`, option `defaults`, `columns()` and `compute(ctx) -> row`.

    `compute` returns a dict keyed by column name (without "step"). Spectrum metrics (`spectrum = True`)
    return {"nodes": ..., "weights": ..., "nhvp": ...} and are written to /spectra/<name>.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    adam_only: ClassVar[bool] = False
    spectrum: ClassVar[bool] = False
    operator: ClassVar[str] = "H"

    def __init__(self, run_settings: dict[str, Any], **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise UserError(f"probe metric {self.name!r} has no option {', '.join(unknown)}; valid options: {valid}")
        self.options = {**self.defaults, **options}
        self.run = run_settings
        self.check()

    def check(self) -> None:
        """Validate options (raise UserError)."""

    @property
    def operator_name(self) -> str:
        return "H" if self.operator == "H" else "P^-1/2 H P^-1/2 (Adam's P; spectrum of P^-1 H)"

    def columns(self) -> list[Column]:
        base = {"description": self.description, "operator": self.operator_name,
                "options": dict(self.options)}
        return [Column(self.name, attrs=base),
                Column(f"{self.name}_err", attrs={"description": f"uncertainty of {self.name}"}),
                Column(f"{self.name}_nhvp", "i8", attrs={"description": f"Hessian-vector products spent on {self.name}"})]

    def spectrum_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def nan_row(self) -> dict[str, Any]:
        if self.spectrum:
            shape = self.spectrum_shape()
            return {"nodes": np.full(shape, np.nan), "weights": np.full(shape, np.nan), "nhvp": 0}
        return {c.name: (np.full(c.shape, np.nan) if c.dtype == "f8" else np.zeros(c.shape, c.dtype))
                for c in self.columns()}


def _positive_int(metric: str, key: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"probe metric {metric!r}: {key} must be an integer >= {minimum}, got {value!r}")


def _positive_float(metric: str, key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise UserError(f"probe metric {metric!r}: {key} must be a positive number, got {value!r}")


@register_metric
class LambdaMax(Metric):
    name = "lambda_max"
    description = ("largest Hessian eigenvalue (the probe's shared Lanczos run: full re-orthogonalisation, warm "
                   "start with a random part, converged = residual and gap check); err = Ritz residual")
    defaults = {"tol": 1e-3, "max_iter": 100}

    def check(self) -> None:
        _positive_float(self.name, "tol", self.options["tol"])
        _positive_int(self.name, "max_iter", self.options["max_iter"], 2)

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


@register_metric
class PrecondLambdaMax(LambdaMax):
    name = "precond_lambda_max"
    description = "largest eigenvalue of P^-1 H (Lanczos on P^-1/2 H P^-1/2, warm start); err = Ritz residual"
    adam_only = True
    operator = "P"


@register_metric
class TopK(Metric):
    name = "top_k"
    description = "k largest Hessian eigenvalues (the probe's shared Lanczos run, warm start); err = Ritz residuals"
    defaults = {"k": 5, "tol": 1e-3, "max_iter": 200}

    def check(self) -> None:
        _positive_int(self.name, "k", self.options["k"])
        _positive_float(self.name, "tol", self.options["tol"])
        _positive_int(self.name, "max_iter", self.options["max_iter"], 2)

    def columns(self) -> list[Column]:
        k = (self.options["k"],)
        cols = super().columns()
        return [Column(cols[0].name, shape=k, attrs=cols[0].attrs), Column(cols[1].name, shape=k, attrs=cols[1].attrs),
                cols[2], Column(f"{self.name}_converged", "i1", attrs={"description": "1 if Lanczos met its tolerance"})]

    def lanczos_need(self) -> dict[str, Any]:
        return {"k": self.options["k"], "tol": self.options["tol"], "max_iter": self.options["max_iter"]}

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from .probe_shared import shared_lanczos

        est, new = shared_lanczos(ctx, self.operator)
        k = self.options["k"]
        return {self.name: _pad(est.value, k), f"{self.name}_err": _pad(est.error, k),
                f"{self.name}_nhvp": est.n_hvp if new else 0, f"{self.name}_converged": int(est.converged)}


def _pad(x: Any, k: int) -> np.ndarray:
    a = np.full(k, np.nan)
    v = np.atleast_1d(np.asarray(x, dtype=float))[:k]
    a[: v.size] = v
    return a


TRACE_METHODS = ("krylov", "ggn+residual", "hutch++", "hutchinson")


@register_metric
class Trace(Metric):
    name = "trace"
    description = ("Hessian trace; err = standard error (t-corrected). krylov: top Ritz values of the shared "
                   "Lanczos run + Hutchinson on the deflated rest (n_matvec probes, shared with ms_margin); "
                   "ggn+residual: exact Gauss-Newton trace from per-sample Jacobians + Hutchinson on H - G; "
                   "hutch++ / hutchinson: Rademacher probes")
    defaults = {"method": "krylov", "n_matvec": 6, "rtol": None}

    def check(self) -> None:
        if self.options["method"] not in TRACE_METHODS:
            raise UserError(f"probe metric {self.name!r}: unknown method {self.options['method']!r}; "
                            f"choose one of {', '.join(TRACE_METHODS)}")
        _positive_int(self.name, "n_matvec", self.options["n_matvec"], 2)
        _positive_float(self.name, "rtol", self.options["rtol"], allow_none=True)
        if self.options["method"] == "krylov" and self.options["rtol"] is not None:
            raise UserError(f"probe metric {self.name!r}: method 'krylov' has a fixed budget (n_matvec probes of "
                            f"the deflated rest); drop rtol or choose another method")

    def lanczos_need(self) -> dict[str, Any] | None:
        return {"k": 1} if self.options["method"] == "krylov" else None

    def rest_need(self) -> dict[str, Any] | None:
        return {"n_probes": self.options["n_matvec"], "n_steps": 1} if self.options["method"] == "krylov" else None

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


@register_metric
class PrecondTrace(Trace):
    name = "precond_trace"
    description = ("trace of P^-1 H on P^-1/2 H P^-1/2 (krylov: top Ritz values + Hutchinson on the deflated "
                   "rest; or hutch++ / hutchinson); err = standard error (t-corrected)")
    defaults = {"method": "krylov", "n_matvec": 6, "rtol": None}
    adam_only = True
    operator = "P"


@register_metric
class Density(Metric):
    name = "density"
    description = "spectral density of H by stochastic Lanczos quadrature: nodes and weights per probe vector"
    defaults = {"n_probes": 4, "n_steps": 30}
    spectrum = True

    def check(self) -> None:
        _positive_int(self.name, "n_probes", self.options["n_probes"])
        _positive_int(self.name, "n_steps", self.options["n_steps"], 2)

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


@register_metric
class PrecondDensity(Density):
    name = "precond_density"
    description = "spectral density of P^-1 H (SLQ on P^-1/2 H P^-1/2)"
    adam_only = True
    operator = "P"


@register_metric
class MSMargin(Metric):
    """S(η) = Σ_{λ_i > 0} f(λ_i), the exact mean-square stability sum of docs/theory.md §2 (stable iff S < 1).

    The top of the spectrum, which dominates f near the edge, is taken exactly: the n_top Ritz pairs of the
    probe's shared Lanczos run (converged: residual and gap check). The rest comes from stochastic Lanczos
    quadrature on the operator with those Ritz vectors projected out (``curvature.deflated``), from probes
    shared with the ``krylov`` trace. When an independent trace estimate runs anyway (``trace_method`` or the
    trace metric other than krylov), it is a control variate: ``S = Σ_top f(θ_i) + (Tr H − Σθ_i)/T +
    Tr[f − λ/T](rest)``, and only the O(λ²) remainder is sampled.

    Negative eigenvalues are excluded from S and reported beside it (``ms_margin_neg`` = Σ_{λ<0} |λ| / T).
    In the quadratic model a negative-curvature mode is unstable in mean square for every η > 0 — its mean
    alone grows by |1 − ηλ| > 1 per step — and it carries no step-size threshold: it is an escape (descent)
    direction. The rational f continued to λ < 0 would give such a mode a *negative* stationary second
    moment, i.e. it would make the iterates look more stable; excluding it gives the loop gain of the
    positive-curvature block, the part with a threshold (README, "Probe cost and error bars").
    First-order runs: S = λ_max/T, the classical edge. Adam runs use P⁻¹H (EMA convention, β = β1),
    exact only when P commutes with H.

    Theory: [docs/theory.md#metric-ms_margin][metric-ms_margin].
    """

    name = "ms_margin"
    description = ("exact mean-square stability sum S(lr) = sum over positive eigenvalues of f(lambda), docs/theory.md "
                   "section 2 (stable iff S < 1): top Ritz pairs of the shared Lanczos run exactly + stochastic "
                   "Lanczos quadrature of the deflated rest; err = standard error (t-corrected)")
    defaults = {"n_top": 3, "n_probes": 6, "n_steps": 4, "trace_method": "krylov", "n_matvec": 6, "rtol": None}

    def check(self) -> None:
        _positive_int(self.name, "n_top", self.options["n_top"], 1)
        _positive_int(self.name, "n_probes", self.options["n_probes"], 2)
        _positive_int(self.name, "n_steps", self.options["n_steps"], 2)
        if self.options["trace_method"] not in TRACE_METHODS:
            raise UserError(f"probe metric {self.name!r}: unknown trace_method {self.options['trace_method']!r}; "
                            f"choose one of {', '.join(TRACE_METHODS)}")

    @property
    def operator(self) -> str:  # type: ignore[override]
        return "P" if self.run["preconditioned"] else "H"

    @property
    def classical(self) -> bool:
        return self.run["band"].kind == "classical"

    def lanczos_need(self) -> dict[str, Any]:
        return {"k": 1 if self.classical else self.options["n_top"]}

    def rest_need(self) -> dict[str, Any] | None:
        return None if self.classical else {"n_probes": self.options["n_probes"], "n_steps": self.options["n_steps"]}

    def columns(self) -> list[Column]:
        return super().columns() + [
            Column(f"{self.name}_neg", attrs={"description": "negative-curvature mass sum over negative eigenvalues "
                                                             "of |lambda| / T, excluded from S (escape directions)"}),
            Column(f"{self.name}_neg_err", attrs={"description": f"standard error of {self.name}_neg"})]

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from .curvature.deflated import split_trace_fn
        from .probe_shared import ritz_block, shared_lanczos, shared_rest

        band = self.run["band"]
        which = self.operator
        T = band.threshold
        if self.classical:
            est, new = ctx.lambda_max(which)
            return {self.name: float(est.value) / T, f"{self.name}_err": float(est.error) / T,
                    f"{self.name}_nhvp": est.n_hvp if new else 0, f"{self.name}_neg": math.nan,
                    f"{self.name}_neg_err": math.nan}
        lz, new_lz = shared_lanczos(ctx, which)
        rest, new_rest = shared_rest(ctx, which)
        spent = (lz.n_hvp if new_lz else 0) + (rest.n_hvp if new_rest else 0)
        theta, _, err = ritz_block(lz)
        linear = None
        method, n_matvec, rtol = ctx.probe.trace_options(which, self.options)
        if method != "krylov":
            (tr, _), new_tr = ctx.trace(which, method, n_matvec, rtol)
            spent += tr.n_hvp if new_tr else 0
            linear = (1.0 / T, float(tr.value), float(tr.error))
        f = ms_term_function(self.run["config"], self.run["dim"])
        est = split_trace_fn(f, theta, err, rest, linear=linear)
        neg = split_trace_fn(lambda lam: np.maximum(-np.asarray(lam, dtype=float), 0.0) / T, theta,
                             np.zeros_like(theta), rest)
        return {self.name: float(est.value), f"{self.name}_err": float(est.error), f"{self.name}_nhvp": spent,
                f"{self.name}_neg": float(neg.value), f"{self.name}_neg_err": float(neg.error)}


def ms_term_function(config: dict[str, Any], dim: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """λ ↦ f(λ), the per-mode term of S(η) for a run's settings (`theory.ms_terms`, inf beyond the per-mode
    limit), with λ ≤ 0 contributing 0: negative-curvature modes are excluded from S (see MSMargin).

    Theory: [docs/theory.md#metric-ms_margin][metric-ms_margin].
    """
    from .run import band_settings
    from .theory import ms_terms

    kw = band_settings(config, dim)
    lr, opt = kw.pop("lr"), kw.pop("optimizer")

    def f(lam: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the band's approximation warnings are stored under /bands
            return ms_terms(np.maximum(np.asarray(lam, dtype=float), 0.0), lr, opt, **kw)

    return f


@register_metric
class CommutatorRatio(Metric):
    name = "commutator_ratio"
    description = ("relative commutator r = ||PH - HP||_F / ||PH||_F of Adam's P and H (docs/theory.md section 3), "
                   "randomized Frobenius norms; err = standard error; NaN before Adam's first update (P undefined)")
    defaults = {"n_probes": 8}
    adam_only = True

    def check(self) -> None:
        _positive_int(self.name, "n_probes", self.options["n_probes"])

    @property
    def operator_name(self) -> str:
        return "H and Adam's P"

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from .curvature import commutator_ratio

        if not ctx.preconditioner_defined():
            # P = 1 before Adam's first update is a placeholder, not a preconditioner: r = 0 would be no
            # measurement of how P and H align
            return {self.name: math.nan, f"{self.name}_err": math.nan, f"{self.name}_nhvp": 0}
        est = commutator_ratio(ctx.operator("H"), ctx.preconditioner(), n_probes=self.options["n_probes"],
                               generator=ctx.generator("commutator_ratio"))
        return {self.name: float(est.value), f"{self.name}_err": float(est.error), f"{self.name}_nhvp": est.n_hvp}


@register_metric
class DirCurvature(Metric):
    name = "dir_curvature"
    description = ("curvature g^T H g / ||g||^2 along the last gradient estimate g the optimizer used "
                   "(NaN at step 0); dir_curvature_mean = Tr(H)/d beside it (docs/theory.md section 5)")
    defaults = {"method": "krylov", "n_matvec": 6, "rtol": None}

    def lanczos_need(self) -> dict[str, Any] | None:
        return {"k": 1} if self.options["method"] == "krylov" else None

    def rest_need(self) -> dict[str, Any] | None:
        return {"n_probes": self.options["n_matvec"], "n_steps": 1} if self.options["method"] == "krylov" else None

    def columns(self) -> list[Column]:
        return super().columns() + [
            Column(f"{self.name}_mean", attrs={"description": "average curvature Tr(H)/d (trace estimator)"}),
            Column(f"{self.name}_mean_err", attrs={"description": "standard error of dir_curvature_mean"})]

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from .curvature import directional_curvature

        (tr, _), new_tr = ctx.trace("H", *ctx.probe.trace_options("H", self.options))
        d = ctx.objective.dim
        row = {f"{self.name}_mean": float(tr.value) / d, f"{self.name}_mean_err": float(tr.error) / d}
        g = ctx.optimizer.last_direction
        if g is None:
            g = ctx.probe.restored_direction()
        spent = tr.n_hvp if new_tr else 0
        if g is None or g.dim() != 1 or not bool(torch.any(g != 0)):
            row.update({self.name: math.nan, f"{self.name}_err": math.nan, f"{self.name}_nhvp": spent})
            return row
        est = directional_curvature(ctx.operator("H"), g.to(ctx.theta))
        row.update({self.name: float(est.value), f"{self.name}_err": float(est.error),
                    f"{self.name}_nhvp": spent + est.n_hvp})
        return row


# ---------------------------------------------------------------------------------------------------------
# the probe


#: products in a typical default probe: (single, batched) — Lanczos vs trace + SLQ
BACKEND_MIX = (15, 60)


def choose_backend(objective, theta: Tensor, block: int = 4) -> str:
    """"fwd-rev" or "double-backward", whichever makes BACKEND_MIX products faster here (timed once).

    For benchmarks only: a timed choice differs between runs under load; the probe uses `default_backend`."""
    from .objective import _DoubleBackwardHVP, _FwdRevHVP

    theta = theta.detach().reshape(-1) if theta.dim() == 1 else theta.detach()[0]
    gen = torch.Generator(device=theta.device).manual_seed(0)
    V = torch.randn((block, theta.shape[0]), generator=gen, device=theta.device, dtype=theta.dtype)
    costs = {}
    for name, cls in (("double-backward", _DoubleBackwardHVP), ("fwd-rev", _FwdRevHVP)):
        try:
            op = cls(objective, theta)
            op.matvec(V[0])  # warm-up: graph build / tracing
            _sync(theta.device)
            t0 = time.perf_counter()
            op.matvec(V[0])
            _sync(theta.device)
            t1 = time.perf_counter()
            op.matmat(V)
            _sync(theta.device)
            t2 = time.perf_counter()
            costs[name] = BACKEND_MIX[0] * (t1 - t0) + BACKEND_MIX[1] * (t2 - t1) / block
        except (NotImplementedError, RuntimeError):
            continue
    if not costs:
        raise RuntimeError("neither HVP back end works for this model")
    return min(costs, key=costs.get)


def default_backend(objective, theta: Tensor) -> str:
    """The probe's HVP back end by device (see `Probe._choose_backend`): deterministic, unlike `choose_backend`."""
    from .objective import _DoubleBackwardHVP, _FwdRevHVP

    theta = theta.detach().reshape(-1) if theta.dim() == 1 else theta.detach()[0]
    order = (("fwd-rev", _FwdRevHVP), ("double-backward", _DoubleBackwardHVP))
    if theta.device.type != "cuda":
        order = order[::-1]
    v = torch.ones_like(theta)
    for name, cls in order:
        try:
            cls(objective, theta).matvec(v)  # works on this model? (success does not depend on timing)
            return name
        except (NotImplementedError, RuntimeError):
            continue
    raise RuntimeError("neither HVP back end works for this model")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_metrics(optimizer: str) -> list[str]:
    """Default `--probe` list: cheap enough to leave on (docs/theory.md §4 quantities a band plot needs)."""
    base = optimizer.removeprefix("zo-")
    metrics = ["lambda_max", "trace"]
    if optimizer.startswith("zo-"):
        metrics.append("ms_margin")
    if base == "adam":
        metrics += ["precond_lambda_max", "precond_trace", "commutator_ratio"]
    return metrics


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`name:key=value:key=value` → (name, options); values parsed as Python literals where possible."""
    import ast

    parts = [p.strip() for p in str(spec).split(":")]
    name, opts = parts[0], {}
    for item in parts[1:]:
        if "=" not in item:
            raise UserError(f"probe metric spec {spec!r}: expected name:key=value[:key=value], got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        try:
            opts[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            opts[k] = v
    return name, opts


class Probe:
    """Runs a list of metrics every `every` steps (and at the final step) and appends their rows."""

    def __init__(self, metrics: list[Metric], every: int, settings: dict[str, Any]) -> None:
        self.metrics = metrics
        self.every = every
        self.settings = settings
        self.warm: dict[str, Tensor] = {}
        # warm starts as they were before the last run() (see state_dict) and that run's step
        self._warm_before: dict[str, Tensor] = {}
        self._last_step: int | None = None
        self._resumed = False
        self._backend: str | None = None
        self._restored_direction: Tensor | None = None

    # ---------------------------------------------------------------- trainer interface
    def declare(self, writer) -> None:
        """Declare every dataset (before the run starts) and write /bands and the /probe description."""
        from .store import SCHEMA_VERSION

        writer.declare("probe", "step", "i8")
        writer.declare("probe", "seconds", "f8", attrs={"description": "wall time of the whole probe (s)"})
        writer.declare("probe", "nhvp", "i8", attrs={"description": "Hessian-vector products the whole probe spent "
                                                                    "(shared products once; = sum of *_nhvp)"})
        for m in self.metrics:
            if m.spectrum:
                grp = f"spectra/{m.name}"
                shape = m.spectrum_shape()
                writer.declare(grp, "step", "i8")
                writer.declare(grp, "nodes", "f8", shape,
                               attrs={"description": "Lanczos Ritz values, one row of n_steps per probe vector"})
                writer.declare(grp, "weights", "f8", shape,
                               attrs={"description": "Gauss quadrature weights (squared first components of the "
                                                     "Ritz vectors), one row per probe vector; 0 = padding"})
                writer.declare(grp, "nhvp", "i8", attrs={"description": "Hessian-vector products spent"})
                writer.set_attrs(grp, {"description": m.description, "operator": m.operator_name,
                                       "options": dict(m.options)})
                continue
            for c in m.columns():
                writer.declare("probe", c.name, c.dtype, c.shape, attrs=c.attrs)
        f = getattr(writer, "f", None)
        if f is not None and "probe" in f and "hvp_backend" in f["probe"].attrs:
            # a resumed run keeps the back end its earlier probes used (bitwise-identical values)
            stored = f["probe"].attrs["hvp_backend"]
            self._backend = stored.decode() if isinstance(stored, bytes) else str(stored)
        elif self._backend is None:
            self._backend = self._choose_backend()
        writer.set_attrs("probe", {
            "metrics": [m.name for m in self.metrics if not m.spectrum],
            "spectra": [m.name for m in self.metrics if m.spectrum],
            "specs": {m.name: dict(m.options) for m in self.metrics},
            "probe_every": self.every, "hvp_backend": self._backend, "schema_version": SCHEMA_VERSION,
            "nhvp_attribution": NHVP_ATTRIBUTION, "shared_options": self.shared_options(),
            "seeding": "stream_seed(stream_seed(seed, step, PURPOSE_PROBE), crc32(quantity), 0) per quantity"})
        band = self.settings["band"]
        writer.set_attrs("bands", {**band.as_dict(), "formula": _band_formula(band)})

    def due(self, step: int, final: bool) -> bool:
        return final or step % self.every == 0

    def run(self, *, step: int, theta: Tensor, state: dict, optimizer, objective, writer, config) -> dict[str, Any]:
        """Measure every metric at θ (never modifying θ or the optimizer state) and append the rows."""
        t0 = time.perf_counter()
        if self._resumed:
            self._resumed = False
            # the checkpoint at step s holds the state after any probe at s; an uninterrupted run reaches s
            # (and the probes after it) with the state before that probe, unless that probe was a regular one
            # that both runs did and this call is already past it
            if self._last_step is not None and (step == self._last_step or self._last_step % self.every != 0):
                self.warm = dict(self._warm_before)
        self._warm_before = dict(self.warm)  # metrics replace entries, never mutate them
        self._last_step = step
        ctx = ProbeContext(self, step, theta, state, optimizer, objective, config)
        finite = bool(torch.isfinite(theta).all())
        row: dict[str, Any] = {}
        spectra: dict[str, dict[str, Any]] = {}
        for m in self.metrics:
            # a NaN θ (divergence between two loss logs) gets NaN rows instead of a crash mid-run
            out = m.compute(ctx) if finite else m.nan_row()
            if m.spectrum:
                spectra[m.name] = out
            else:
                row.update(out)
        row["seconds"] = time.perf_counter() - t0
        row["nhvp"] = int(ctx._ops["H"].n_hvp) if "H" in ctx._ops else 0
        writer.append("probe", {"step": step, **row})
        for name, out in spectra.items():
            writer.append(f"spectra/{name}", {"step": step, **out})
        return row

    def state_dict(self) -> dict[str, Any]:
        """Warm-start vectors (before and after the last probe), the HVP back end, the last direction."""
        d: dict[str, Any] = {"warm": {k: v.clone() for k, v in self.warm.items()},
                             "warm_before": {k: v.clone() for k, v in self._warm_before.items()},
                             "last_step": self._last_step, "hvp_backend": self._backend}
        opt = self.settings.get("optimizer")
        if any(isinstance(m, DirCurvature) for m in self.metrics) and opt is not None \
                and opt.last_direction is not None:
            d["last_direction"] = opt.last_direction.detach().to("cpu", copy=True)
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.warm = {k: v.clone() for k, v in d.get("warm", {}).items()}
        self._warm_before = {k: v.clone() for k, v in d.get("warm_before", {}).items()}
        self._last_step = d.get("last_step")
        self._resumed = True
        if d.get("hvp_backend"):
            self._backend = d["hvp_backend"]
        self._restored_direction = d.get("last_direction")

    def shared_options(self) -> str:
        """The resolved options of the shared Lanczos runs and deflated probe sets, per operator (JSON)."""
        import json

        from .probe_shared import lanczos_options, rest_options

        ops = sorted({m.operator for m in self.metrics if isinstance(getattr(m, "operator", None), str)})
        return json.dumps({w: {"lanczos": lanczos_options(self.metrics, w), "rest": rest_options(self.metrics, w)}
                           for w in ops})

    # ---------------------------------------------------------------- helpers for metrics
    def hvp_backend(self, ctx: ProbeContext) -> str:
        if self._backend is None:
            self._backend = self._choose_backend(ctx.objective, ctx.theta)
        return self._backend

    def _choose_backend(self, objective=None, theta=None) -> str:
        """The HVP back end, by a fixed rule: every run of a config measures with the same one.

        The two back ends round differently (last-bit differences in every probe value), and a choice timed
        at run time flips under CPU load — on the default CNN the two cost within 3% of each other for a
        probe's mix of products (README, "Curvature") — so two runs of one seed would not log bitwise the
        same values. CPU: double backward (single products, Lanczos's, ~25% faster there; batched products
        loop on CPU either way). CUDA: forward-over-reverse (batched products are one vmapped call). The
        first of the two that works on this model is used (e.g. a layer without forward-mode AD).
        """
        objective = objective or self.settings.get("objective")
        theta = theta if theta is not None else self.settings.get("theta")
        if objective.hvp_backend != "auto":
            return objective.hvp_backend
        return default_backend(objective, theta)

    def warm_start(self, key: str, op) -> Tensor | None:
        """Last probe's eigenvector (Lanczos mixes in a little noise itself), or None at the first probe."""
        prev = self.warm.get(key)
        if prev is None or prev.numel() != op.dim:
            return None
        return prev.to(device=op.device, dtype=op.dtype)

    def restored_direction(self) -> Tensor | None:
        """The direction that produced θ at the first probe after a resume (the optimizer has none yet)."""
        g, self._restored_direction = self._restored_direction, None
        return g

    def trace_options(self, which: str, fallback: dict[str, Any]) -> tuple[str, int, float | None]:
        """Options of the shared trace estimate: those of the trace metric on that operator, if it runs."""
        for m in self.metrics:
            if isinstance(m, Trace) and m.operator == which:
                o = m.options
                return o["method"], o["n_matvec"], o["rtol"]
        method = fallback.get("trace_method", fallback.get("method", "krylov"))
        return method, fallback.get("n_matvec", 6), fallback.get("rtol")


def _band_formula(band) -> str:
    if band.kind == "classical":
        return f"first order: {band.quantity} < T"
    return (f"necessary: {band.quantity} < T; sufficient: {band.quantity} + c*{band.lambda_max_quantity} < T; "
            f"exact: S(lr) < 1 (probe/ms_margin)")


def build_probe(cfg, setup=None, *, objective=None, optimizer=None, theta=None) -> Probe | None:
    """The probe for a run config (None if `cfg.probe == []`): metrics parsed and validated up front.

    `setup` is the trainer's `Setup` (or pass `objective`, `optimizer`, `theta`). Raises `UserError` for an
    unknown metric, a bad option, or an Adam-only metric on another optimizer.
    """
    from .run import band_for

    specs = default_metrics(cfg.optimizer) if cfg.probe is None else list(cfg.probe)
    if not specs:
        return None
    if setup is not None:
        objective = objective if objective is not None else setup.objective
        optimizer = optimizer if optimizer is not None else setup.optimizer
        theta = theta if theta is not None else setup.theta
    adam = cfg.optimizer.removeprefix("zo-") == "adam"
    settings = {"config": cfg.to_dict(), "dim": objective.dim, "preconditioned": adam,
                "band": band_for(cfg.to_dict(), objective.dim), "objective": objective, "optimizer": optimizer,
                "theta": theta}
    seen: dict[str, Metric] = {}
    for spec in specs:
        name, opts = parse_spec(spec)
        if name not in METRICS:
            raise UserError(f"unknown probe metric {name!r}; choose from {', '.join(METRICS)} (or 'none')")
        cls = METRICS[name]
        if cls.adam_only and not adam:
            raise UserError(f"probe metric {name!r} needs an Adam optimizer (adam, zo-adam), not {cfg.optimizer}; "
                            f"drop it from --probe")
        if name in seen:
            raise UserError(f"probe metric {name!r} is listed twice in --probe")
        seen[name] = cls(settings, **opts)
    order = list(METRICS)
    metrics = sorted(seen.values(), key=lambda m: order.index(m.name))
    return Probe(metrics, cfg.probe_every, settings)


# metrics of the related systems (CoCD edge/staleness, ZO eNTK fidelity) register themselves on import
from . import probe_systems  # noqa: E402,F401
