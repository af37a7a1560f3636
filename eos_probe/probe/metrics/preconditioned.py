"""Adam-only metrics: the curvature metrics on P^-1/2 H P^-1/2 (the spectrum of P⁻¹H, with Adam's current
diagonal P) and the relative commutator of P and H (docs/theory.md §3–4)."""
from __future__ import annotations

import math
from typing import Any

from ..context import ProbeContext
from ..registry import Metric, positive_int
from .curvature import Density, LambdaMax, Trace


class PrecondLambdaMax(LambdaMax):
    """λ_max of P⁻¹H from the shared Lanczos run on the preconditioned operator."""

    name = "precond_lambda_max"
    description = "largest eigenvalue of P^-1 H (Lanczos on P^-1/2 H P^-1/2, warm start); err = Ritz residual"
    adam_only = True
    operator = "P"


class PrecondTrace(Trace):
    """Tr(P⁻¹H) (krylov, hutch++ or hutchinson; ggn+residual falls back to hutch++ on this operator)."""

    name = "precond_trace"
    description = ("trace of P^-1 H on P^-1/2 H P^-1/2 (krylov: top Ritz values + Hutchinson on the deflated "
                   "rest; or hutch++ / hutchinson); err = standard error (krylov: Gaussian-probe variance; "
                   "otherwise t-corrected)")
    defaults = {"method": "krylov", "n_matvec": 6, "rtol": None}
    adam_only = True
    operator = "P"


class PrecondDensity(Density):
    """The spectral density of P⁻¹H, written to /spectra/precond_density."""

    name = "precond_density"
    description = "spectral density of P^-1 H (SLQ on P^-1/2 H P^-1/2)"
    adam_only = True
    operator = "P"


class CommutatorRatio(Metric):
    """r = ‖PH − HP‖_F / ‖PH‖_F by randomized Frobenius norms; NaN while Adam's P is still a placeholder."""

    name = "commutator_ratio"
    description = ("relative commutator r = ||PH - HP||_F / ||PH||_F of Adam's P and H (docs/theory.md section 3), "
                   "randomized Frobenius norms; err = standard error; NaN before Adam's first update (P undefined)")
    defaults = {"n_probes": 8}
    adam_only = True

    def check(self) -> None:
        positive_int(self.name, "n_probes", self.options["n_probes"])

    @property
    def operator_name(self) -> str:
        return "H and Adam's P"

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from ...curvature import commutator_ratio

        if not ctx.preconditioner_defined():
            # P = 1 before Adam's first update is a placeholder, not a preconditioner: r = 0 would be no
            # measurement of how P and H align
            return {self.name: math.nan, f"{self.name}_err": math.nan, f"{self.name}_nhvp": 0}
        est = commutator_ratio(ctx.operator("H"), ctx.preconditioner(), n_probes=self.options["n_probes"],
                               generator=ctx.generator("commutator_ratio"))
        return {self.name: float(est.value), f"{self.name}_err": float(est.error), f"{self.name}_nhvp": est.n_hvp}
