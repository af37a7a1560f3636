"""The mean-square stability metric ``ms_margin``: S(η) = Σ_{λ>0} f(λ) of docs/theory.md §2 along training."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

from ...errors import UserError
from ..context import ProbeContext
from ..registry import Column, Metric, positive_int
from ..shared import ritz_block, shared_lanczos, shared_rest
from ...theory import ms_term_function
from .curvature import TRACE_METHODS


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
                   "Lanczos quadrature of the deflated rest (f continued linearly below 0, f'(0)*negative mass added "
                   "back); err = standard error (Gaussian-probe variance) + quadrature and negative-mass terms")
    defaults = {"n_top": 3, "n_probes": 6, "n_steps": 4, "trace_method": "krylov", "n_matvec": 6, "rtol": None}

    def check(self) -> None:
        positive_int(self.name, "n_top", self.options["n_top"], 1)
        positive_int(self.name, "n_probes", self.options["n_probes"], 2)
        positive_int(self.name, "n_steps", self.options["n_steps"], 2)
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
                                                             "of |lambda| / T, excluded from S (escape directions), "
                                                             "from the Gauss rule of the shared Lanczos run"}),
            Column(f"{self.name}_neg_err", attrs={"description": f"standard error of {self.name}_neg"})]

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from ...curvature.deflated import negative_mass, split_trace_fn

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
        n_neg, n_neg_err = negative_mass(lz, rest.dim)
        est = split_trace_fn(f, theta, err, rest, linear=linear, negative=(n_neg, n_neg_err))
        return {self.name: float(est.value), f"{self.name}_err": float(est.error), f"{self.name}_nhvp": spent,
                f"{self.name}_neg": n_neg / T, f"{self.name}_neg_err": n_neg_err / T}
