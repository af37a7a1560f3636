"""Probe metrics of the related systems of docs/theory.md §5c–5d: CoCD's exact edge and staleness, and the
fidelity of the zeroth-order empirical NTK. Registered with the probe's registry by ``probe.metrics`` (after
the curvature metrics), so the trainer and `--probe` see them like any other metric.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import UserError
from ...presets import PRESETS
from ..context import ProbeContext
from ..registry import Column, Metric, positive_float, positive_int



def _cocd_source(metric: Metric):
    """The run's CoCD source (raises a one-line UserError on other optimizers)."""
    opt = metric.run.get("optimizer")
    source = getattr(opt, "source", None)
    p = PRESETS.get(metric.run["config"].get("optimizer"))
    if p is None or p.source != "cocd" or not hasattr(source, "schedule"):
        raise UserError(f"probe metric {metric.name!r} needs a cocd or bccd run, not "
                        f"{metric.run['config'].get('optimizer')}; drop it from --probe")
    return source


def _next_direction(ctx: ProbeContext) -> Tensor | None:
    """The direction the optimizer's source will use at this step (θ_t, this step's seed), computed on a
    copy of the source state: same seeds and same buffer, so it equals the update's direction bitwise
    without touching the run. None for exact-gradient sources."""
    opt = ctx.optimizer
    src = getattr(opt, "source", None)
    if src is None or not getattr(opt, "zeroth_order", False):
        return None
    state = {k: v.clone() for k, v in ctx.state.get("source", {}).items()}
    g, _ = src(ctx.objective, ctx.theta, state, ctx.step)
    return g.detach().clone()


# ---------------------------------------------------------------------------------------------------------
# CoCD


class CoCDEdge(Metric):
    """α*(H_t, B, γ): the exact CoCD threshold of the local quadratic model (monodromy, docs/theory.md §5d).

    The dense Hessian is built (d HVPs) and its eigenvalues clipped from below at `floor`·λ_max (negative
    curvature makes the iteration escape, not oscillate; near-zero curvature puts a cluster of monodromy
    eigenvalues next to 1, which neither decides the edge nor lets ARPACK converge). The first probe scans
    `grid` step sizes; later ones bisect a ±10 % bracket around the previous edge. Above `dense_max`
    parameters the row is NaN (said once, at start).

    Theory: [docs/theory.md#metric-cocd_edge][metric-cocd_edge].
    """

    name = "cocd_edge"
    description = ("exact CoCD/BCCD threshold lr*(H_t, B, gamma) of the local quadratic (spectral radius of the "
                   "one-cycle monodromy = 1, bisection; negative curvature clipped); NaN above dense_max params")
    defaults = {"dense_max": 4000, "rtol": 1e-3, "floor": 1e-3, "grid": 12}

    def check(self) -> None:
        positive_int(self.name, "dense_max", self.options["dense_max"])
        positive_float(self.name, "rtol", self.options["rtol"])
        positive_float(self.name, "floor", self.options["floor"])
        positive_int(self.name, "grid", self.options["grid"], 2)
        self.source = _cocd_source(self)
        d = self.run["dim"]
        self.skipped = d > self.options["dense_max"]
        if self.skipped:
            warnings.warn(f"probe metric cocd_edge: d = {d} parameters > dense_max = {self.options['dense_max']}; "
                          "it needs the dense Hessian and logs NaN (raise dense_max:... to force it)", stacklevel=2)
        self._last: float | None = None

    def columns(self) -> list[Column]:
        cols = super().columns()
        note = {"skipped": f"d = {self.run['dim']} > dense_max" if self.skipped else ""}
        cols[0] = Column(cols[0].name, attrs={**cols[0].attrs, **note})
        return cols + [
            Column(f"{self.name}_ratio", attrs={"description": "lr / lr*(H_t): above 1 the local quadratic diverges"}),
            Column(f"{self.name}_rho", attrs={"description": "spectral radius of the monodromy at the run's lr"}),
            Column(f"{self.name}_gd", attrs={"description": "2/lambda_max(H_t), the B = d (gradient descent) edge"}),
            Column(f"{self.name}_lambda_max", attrs={"description": "lambda_max of the dense Hessian"})]

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from ...curvature.dense import dense_hessian
        from ...theory.cocd import _radius, critical_lr

        if self.skipped:
            return self.nan_row()
        H = dense_hessian(ctx.objective, ctx.theta).detach().to("cpu", torch.float64).numpy()
        H = 0.5 * (H + H.T)
        lam, V = np.linalg.eigh(H)
        lmax = float(lam[-1])
        lam_c = np.maximum(lam, self.options["floor"] * max(lmax, 1e-30))
        Hc = (V * lam_c) @ V.T
        s = self.source.schedule(Hc.shape[0])
        lr = float(ctx.config.lr)
        edge = critical_lr(Hc, s.block, s.gamma, memory=s.memory, weight_decay=s.weight_decay,
                           rtol=self.options["rtol"], grid=self.options["grid"], guess=self._last)
        self._last = edge
        rho = _radius(Hc, lr, s)
        return {self.name: edge, f"{self.name}_err": self.options["rtol"] * edge, f"{self.name}_nhvp": Hc.shape[0],
                f"{self.name}_ratio": lr / edge, f"{self.name}_rho": rho, f"{self.name}_gd": 2.0 / lmax,
                f"{self.name}_lambda_max": lmax}


class CoCDStaleness(Metric):
    """How far CoCD's buffer is from the gradient: ‖ĝ − ∇L‖/‖∇L‖ and cos(ĝ, ∇L) for the direction ĝ the
    optimizer uses at this step (one backward pass + the step's own 2B differences on a copy of the
    state), beside the paper's sufficient condition lr < 2/(L(1 + dτ)), τ = d/B − 1, L = λ_max, and
    δ = the largest step norm lr·‖g‖ of the last K = ⌈d/B⌉ steps.

    Theory: [docs/theory.md#metric-cocd_staleness][metric-cocd_staleness].
    """

    name = "cocd_staleness"
    description = ("relative error ||g_hat - grad L|| / ||grad L|| of the CoCD direction at this step (err column: "
                   "unused, 0); with cos, the paper's bound 2/(L(1+d tau)), lr over it, and delta")
    defaults = {"tol": 1e-3, "max_iter": 100}

    def check(self) -> None:
        self.source = _cocd_source(self)

    def columns(self) -> list[Column]:
        return super().columns() + [
            Column(f"{self.name}_cos", attrs={"description": "cos(g_hat, grad L)"}),
            Column(f"{self.name}_bound", attrs={"description": "2/(lambda_max (1 + d tau)), tau = d/B - 1"}),
            Column(f"{self.name}_lr_over_bound", attrs={"description": "lr / bound (> 1: outside the paper's condition)"}),
            Column(f"{self.name}_delta", attrs={"description": "largest step norm lr*||g|| of the last ceil(d/B) steps"})]

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from ...theory.cocd import staleness_bound

        g_hat = _next_direction(ctx)
        grad = ctx.objective.grad(ctx.theta)
        gn = float(grad.norm())
        rel = float((g_hat - grad).norm()) / gn if gn > 0 else math.nan
        cos = float(torch.dot(g_hat, grad)) / (float(g_hat.norm()) * gn) if gn > 0 and float(g_hat.norm()) > 0 \
            else math.nan
        est, new = ctx.lambda_max("H", self.options["tol"], self.options["max_iter"])
        d = ctx.objective.dim
        s = self.source.schedule(d)
        bound = staleness_bound(float(est.value), d, s.block) if float(est.value) > 0 else math.inf
        lr = float(ctx.config.lr)
        norms = ctx.state["source"]["step_norms"]
        return {self.name: rel, f"{self.name}_err": 0.0, f"{self.name}_nhvp": est.n_hvp if new else 0,
                f"{self.name}_cos": cos, f"{self.name}_bound": bound, f"{self.name}_lr_over_bound": lr / bound,
                f"{self.name}_delta": lr * float(norms.max())}


# ---------------------------------------------------------------------------------------------------------
# ZO empirical NTK


def probe_batch_indices(n: int, m: int) -> Tensor:
    """m fixed, evenly spaced examples of the n training examples (every class of a class-sorted set)."""
    return torch.linspace(0, n - 1, m).round().long()


def _law(config) -> str:
    return getattr(config, "directions", "gaussian") or "gaussian"


def sample_directions(shape: tuple[int, ...], law: str, gen: torch.Generator, dtype, device) -> Tensor:
    """Directions with E[uuᵀ] = I in the run's law (rows of the last dimension)."""
    if law == "rademacher":
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(0.5, generator=gen).mul_(2).sub_(1)
    u = torch.randn(shape, generator=gen, dtype=dtype, device=device)
    if law == "sphere":
        u.mul_(math.sqrt(shape[-1]) / u.norm(dim=-1, keepdim=True))
    return u


class EntkFidelity(Metric):
    """Fidelity of the ZO empirical NTK on a fixed probe batch (docs/theory.md §5c).

    J = ∂z/∂θ of the logits of m fixed training examples (exact, by `torch.func.jacrev`), K = JJᵀ,
    r_eff = (Tr K)²/‖K‖_F². From a pool of `pool` seeded directions in the run's law, K_ZO = (1/P)(JU)(JU)ᵀ
    is formed for every disjoint group of P of them (JU equals P JVPs), and the measured relative error
    √(mean ‖K_ZO − K‖_F²)/‖K‖_F is logged per P beside the exact prediction (Gaussian: √((1 + r_eff)/P)).
    `entk_fidelity` itself is the measured/predicted MSE ratio averaged over P ≥ 4 (1 = the law holds).
    For ZO runs also the function-space error of this step's actual update on the batch, ‖J(ĝ − ∇L)‖/‖J∇L‖,
    beside its prediction √((1 + Tr K ‖∇L‖²/‖J∇L‖²)/q) (Gaussian).

    Theory: [docs/theory.md#metric-entk_fidelity][metric-entk_fidelity].
    """

    name = "entk_fidelity"
    description = ("ZO eNTK fidelity on a fixed probe batch: measured / predicted relative MSE of K_ZO averaged over "
                   "P >= 4 (1 = the (1 + r_eff)/P law); per-P errors in entk_fidelity_rel_err(_pred)")
    defaults = {"m": 16, "P": [1, 4, 16, 64], "pool": 1024}

    def check(self) -> None:
        o = self.options
        positive_int(self.name, "m", o["m"])
        positive_int(self.name, "pool", o["pool"])
        grid = o["P"] if isinstance(o["P"], (list, tuple)) else [o["P"]]
        for p in grid:
            positive_int(self.name, "P", p)
        if max(grid) > o["pool"]:
            raise UserError(f"probe metric {self.name!r}: pool ({o['pool']}) must be at least the largest P ({max(grid)})")
        self.grid = [int(p) for p in grid]
        obj = self.run.get("objective")
        x = getattr(obj, "x", None)
        if obj is None or getattr(obj, "model", None) is None or x is None:
            raise UserError(f"probe metric {self.name!r} needs a model with a training batch to take its probe batch "
                            "from; this objective has none")
        if int(x.shape[0]) < o["m"]:
            raise UserError(f"probe metric {self.name!r}: probe batch m = {o['m']} exceeds the {int(x.shape[0])} "
                            "training examples")
        self.idx = probe_batch_indices(int(x.shape[0]), o["m"])

    def columns(self) -> list[Column]:
        n = (len(self.grid),)
        law = _law(self.run["config"]) if not isinstance(self.run["config"], dict) else \
            self.run["config"].get("directions", "gaussian")
        base = super().columns()
        base[0] = Column(base[0].name, attrs={**base[0].attrs, "P": self.grid, "directions": law,
                                              "probe_batch": self.idx.tolist()})
        return base + [
            Column(f"{self.name}_r_eff", attrs={"description": "(Tr K)^2 / ||K||_F^2"}),
            Column(f"{self.name}_trace", attrs={"description": "Tr K (eNTK of the probe batch)"}),
            Column(f"{self.name}_rel_err", shape=n, attrs={"description": "measured sqrt(mean ||K_ZO - K||_F^2)/||K||_F per P",
                                                            "P": self.grid}),
            Column(f"{self.name}_rel_err_pred", shape=n, attrs={"description": "exact prediction per P (run's law)",
                                                                 "P": self.grid}),
            Column(f"{self.name}_mse_ratio", shape=n, attrs={"description": "measured rel. MSE * P / (1 + r_eff) per P",
                                                              "P": self.grid}),
            Column(f"{self.name}_draws", "i8", shape=n, attrs={"description": "K_ZO samples behind each P", "P": self.grid}),
            Column(f"{self.name}_step_err", attrs={"description": "||J(g_zo - grad L)|| / ||J grad L|| of this step (ZO runs)"}),
            Column(f"{self.name}_step_err_pred", attrs={"description": "sqrt((1 + Tr K ||grad L||^2/||J grad L||^2)/q), Gaussian"})]

    def jacobian(self, ctx: ProbeContext) -> Tensor:
        """J of the probe batch's logits, shape (m·V, d)."""
        from torch.func import functional_call, jacrev

        obj = ctx.objective
        xb = obj.x[self.idx.to(obj.x.device)]

        def logits(theta: Tensor) -> Tensor:
            return functional_call(obj.model, obj.space.unflatten(theta), (xb,)).reshape(-1)

        return jacrev(logits)(ctx.theta)

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        from ...theory.entk import relative_mse

        J = self.jacobian(ctx).to(torch.float64)
        K = J @ J.T
        kf2 = float((K * K).sum())
        tr = float(torch.trace(K))
        r_eff = tr * tr / kf2
        law = _law(ctx.config)
        gen = ctx.generator(self.name)
        pool = self.options["pool"]
        # JU for the whole pool (= pool JVPs), drawn in chunks to bound memory
        JU = torch.empty(J.shape[0], pool, dtype=torch.float64, device=J.device)
        chunk = max(1, (32 * 2**20) // max(1, J.shape[1] * 8))
        for a in range(0, pool, chunk):
            b = min(a + chunk, pool)
            U = sample_directions((b - a, J.shape[1]), law, gen, ctx.theta.dtype, ctx.theta.device)
            JU[:, a:b] = J @ U.to(torch.float64).T
        Jn = J.cpu().numpy()
        measured, predicted, ratio, draws = [], [], [], []
        for P in self.grid:
            n = pool // P
            groups = JU[:, : n * P].reshape(J.shape[0], n, P).permute(1, 0, 2)  # (n, mV, P)
            Kzo = groups @ groups.transpose(1, 2) / P
            mse = float(((Kzo - K) ** 2).sum(dim=(1, 2)).mean()) / kf2
            pred = relative_mse(Jn, P, law)
            measured.append(math.sqrt(mse))
            predicted.append(math.sqrt(pred))
            ratio.append(mse * P / (1.0 + r_eff))
            draws.append(n)
        big = [m ** 2 / p ** 2 for m, p, P in zip(measured, predicted, self.grid) if P >= 4] or \
              [m ** 2 / p ** 2 for m, p in zip(measured, predicted)]
        row = {self.name: float(np.mean(big)),
               f"{self.name}_err": float(np.std(big, ddof=1) / math.sqrt(len(big))) if len(big) > 1 else math.nan,
               f"{self.name}_nhvp": 0, f"{self.name}_r_eff": r_eff, f"{self.name}_trace": tr,
               f"{self.name}_rel_err": np.asarray(measured), f"{self.name}_rel_err_pred": np.asarray(predicted),
               f"{self.name}_mse_ratio": np.asarray(ratio), f"{self.name}_draws": np.asarray(draws, dtype=np.int64)}
        step_err, step_pred = math.nan, math.nan
        g_hat = _next_direction(ctx)
        if g_hat is not None:
            grad = ctx.objective.grad(ctx.theta).to(torch.float64)
            jg = J @ grad
            jg2 = float(jg @ jg)
            if jg2 > 0:
                step_err = float((J @ (g_hat.to(torch.float64) - grad)).norm()) / math.sqrt(jg2)
                q = getattr(ctx.optimizer.source, "queries", None)
                if q is not None:
                    step_pred = math.sqrt((1.0 + tr * float(grad @ grad) / jg2) / q)
        row[f"{self.name}_step_err"] = step_err
        row[f"{self.name}_step_err_pred"] = step_pred
        return row
