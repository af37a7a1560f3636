"""The per-step context a metric sees: θ, the optimizer state, operators and shared estimates, built lazily."""
from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..optim.sources import PURPOSE_PROBE, stream_seed
from .shared import ritz_block, shared_lanczos, shared_rest

if TYPE_CHECKING:
    from .runner import Probe


class ProbeContext:
    """What a metric sees at one probe step: θ, the optimizer state, operators and shared estimates.

    Args:
        probe: the `Probe` running (its metrics, warm starts and HVP back end).
        step: the training step; seeds every random draw of this probe (see the package docstring).
        theta: the parameters (detached here; never modified).
        state: the optimizer state at `step` (read only).
        optimizer, objective, config: the run's.
    """

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
        """A fresh generator for one quantity (its own stream: see the package docstring)."""
        g = torch.Generator(device=self.theta.device)
        g.manual_seed(stream_seed(self.seed, zlib.crc32(purpose.encode()), 0))
        return g

    def operator(self, which: str):
        """"H": the Hessian at θ; "P": P^-1/2 H P^-1/2 with Adam's current P (same spectrum as P⁻¹H);
        "H_r": the Hessian of the retention objective (``objective.retention``, earlier tasks) at θ."""
        from ..curvature import HessianOperator, PreconditionedOperator

        if which not in self._ops:
            if which == "H":
                self._ops["H"] = HessianOperator(self.objective, self.theta, backend=self.probe.hvp_backend(self))
            elif which == "H_r":
                self._ops["H_r"] = HessianOperator(self.objective.retention, self.theta,
                                                   backend=self.probe.hvp_backend(self))
            elif which == "P":
                p = self.preconditioner()
                self._ops["P"] = PreconditionedOperator(self.operator("H"), p)
            else:  # pragma: no cover - programming error
                raise ValueError(which)
        return self._ops[which]

    def hessian_products(self) -> int:
        """Hessian-vector products spent at this step so far (the P operator's go through H's)."""
        return sum(int(op.n_hvp) for k, op in self._ops.items() if k != "P")

    def preconditioner(self) -> Tensor:
        """Adam's current P (diagonal, flat); RuntimeError for an optimizer without one."""
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
        """λ_max of an operator from the probe's shared Lanczos run (``probe.shared``): (Estimate, computed_now).

        The run is warm-started from the last probe's top Ritz vectors and uses the union of the Lanczos
        options of the metrics on this operator; `tol` and `max_iter` are kept for callers' compatibility
        and take part in that union only through the metrics' own options.
        """
        from ..curvature import Estimate

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
        from ..curvature import trace

        key = f"trace/{which}"

        def make():
            if method == "krylov":
                from ..curvature.deflated import split_trace

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
        from ..curvature import spectral_density

        key = f"density/{which}"
        return self.shared(key, lambda: spectral_density(self.operator(which), n_probes=n_probes, n_steps=n_steps,
                                                         generator=self.generator(key)))
