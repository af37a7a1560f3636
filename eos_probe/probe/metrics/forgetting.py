"""Probe metrics of docs/theory.md §5a–5b: curvature excess and one-step forgetting on the retention loss,
the ZO descent threshold, flatness and the hybrid ZO/FO bands.

The retention objective is ``objective.retention`` (the union of the earlier tasks' training sets, full batch;
set by the task trainer). Without it (first task, no task sequence) the retention metrics log NaN and spend
nothing. Work shared between these metrics (the training and retention gradients, H_r g, the Hutchinson
probes of H_r) is made once per probe (``ProbeContext.shared``) and charged to the first metric that asks.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...curvature.operators import CurvatureOperator
from ...errors import UserError
from ...optim.shaping import rise_blocks, rise_shape, zo_shape
from ...theory import shaping as th
from ..context import ProbeContext
from ..registry import Column, Metric, positive_float, positive_int
from .curvature import TraceUser

LOSS_CHOICES = ("retention", "train")


def _retention(ctx: ProbeContext):
    return getattr(ctx.objective, "retention", None)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    return float(x.mean()), (float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan)


def _law(ctx_or_config, option: str | None) -> str:
    """The law of the shaped steps: the option, else the run's, else Gaussian."""
    if option:
        return option
    cfg = ctx_or_config
    law = cfg.get("directions") if isinstance(cfg, dict) else getattr(cfg, "directions", None)
    return law if law in th.NORM_MATCH_DIRECTIONS else "gaussian"


def _queries(config, option: int | None) -> int:
    if option:
        return int(option)
    q = config.get("queries") if isinstance(config, dict) else getattr(config, "queries", None)
    return int(q or 1)


def _check_common(metric: Metric) -> None:
    o = metric.options
    if "n_probes" in o:
        positive_int(metric.name, "n_probes", o["n_probes"], 2)
    if "M" in o:
        positive_int(metric.name, "M", o["M"], 2)
    if o.get("queries") is not None:
        positive_int(metric.name, "queries", o["queries"])
    if o.get("directions") is not None and o["directions"] not in th.NORM_MATCH_DIRECTIONS:
        raise UserError(f"probe metric {metric.name!r}: directions must be one of "
                        f"{', '.join(th.NORM_MATCH_DIRECTIONS)}, got {o['directions']!r}")


# ------------------------------------------------------------------------------------------ shared quantities
def train_grad(ctx: ProbeContext) -> Tensor:
    """∇L of the current training objective at θ (one backward pass, once per probe)."""
    return ctx.shared("grad/train", lambda: ctx.objective.grad(ctx.theta).detach())[0]


def retention_grad(ctx: ProbeContext) -> Tensor:
    """∇L_r at θ (once per probe)."""
    return ctx.shared("grad/retention", lambda: _retention(ctx).grad(ctx.theta).detach())[0]


def retention_hg(ctx: ProbeContext) -> tuple[Tensor, int]:
    """(H_r g, products charged to this caller) for the training gradient g."""
    op = ctx.operator("H_r")

    def make():
        n0 = op.n_hvp
        return op.matvec(train_grad(ctx)), op.n_hvp - n0

    (hg, n), new = ctx.shared("retention/Hg", make)
    return hg, (n if new else 0)


def retention_probes(ctx: ProbeContext, n_probes: int) -> tuple[Tensor, int]:
    """(z ∘ H_r z for n Rademacher probes, shape (n, d), products charged to this caller).

    Summing a row gives a Hutchinson sample of Tr H_r; summing it over a block b gives one of Tr H_r,bb
    (E[z_i z_j] = δ_ij), so the same probes give the block traces RISE's prediction needs.
    """
    from ...curvature._probes import rademacher

    op = ctx.operator("H_r")
    key = f"retention/hutch/{n_probes}"

    def make():
        Z = rademacher(n_probes, op.dim, ctx.generator(key), op.dtype, op.device)
        n0 = op.n_hvp
        return Z * op.matmat(Z), op.n_hvp - n0

    (zhz, n), new = ctx.shared(key, make)
    return zhz, (n if new else 0)


def retention_curvature(ctx: ProbeContext, n_probes: int) -> tuple[dict[str, float], int]:
    """ρ_r(g), λ̄_r ± se and e_r = ρ_r − λ̄_r, with the products this caller is charged for."""
    g = train_grad(ctx)
    hg, n1 = retention_hg(ctx)
    zhz, n2 = retention_probes(ctx, n_probes)
    d = g.numel()
    gg = float(g @ g)
    rho = float(g @ hg) / gg if gg > 0 else math.nan
    lam, lam_se = _mean_se(zhz.sum(1).cpu().numpy() / d)
    return {"rho": rho, "lam": lam, "lam_se": lam_se, "e": rho - lam, "gg": gg, "gHg": float(g @ hg)}, n1 + n2


# ------------------------------------------------------------------------------------------ 5a: retention
class CurvatureExcess(Metric):
    """e_r(g) = ρ_r(g) − λ̄_r: the retention Hessian's curvature along the new task's gradient g minus its
    mean curvature Tr(H_r)/d (Hutchinson). ZO's norm-matched step forgets less in mean iff e_r > 0.

    Theory: [docs/theory.md#rise][rise].
    """

    name = "curvature_excess"
    description = ("curvature excess e_r(g) = rho_r(g) - lambda_bar_r on the retention loss (earlier tasks): "
                   "g = training gradient, rho_r = g^T H_r g/||g||^2 (1 HVP), lambda_bar_r = Tr(H_r)/d by "
                   "Hutchinson (n_probes); err = se of lambda_bar_r; NaN without a retention objective")
    defaults = {"n_probes": 8}

    def check(self) -> None:
        _check_common(self)

    def columns(self) -> list[Column]:
        return super().columns() + [
            Column(f"{self.name}_rho_r", attrs={"description": "rho_r(g) = g^T H_r g / ||g||^2"}),
            Column(f"{self.name}_lambda_bar_r", attrs={"description": "Tr(H_r)/d (Hutchinson)"}),
            Column(f"{self.name}_lambda_bar_r_err", attrs={"description": "standard error of lambda_bar_r"})]

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        if _retention(ctx) is None:
            return self.nan_row()
        c, spent = retention_curvature(ctx, self.options["n_probes"])
        return {self.name: c["e"], f"{self.name}_err": c["lam_se"], f"{self.name}_nhvp": spent,
                f"{self.name}_rho_r": c["rho"], f"{self.name}_lambda_bar_r": c["lam"],
                f"{self.name}_lambda_bar_r_err": c["lam_se"]}


class Forgetting(Metric):
    """One-step forgetting on the retention loss: predicted (second order + linear terms, docs/theory.md
    §5a) beside measured, for the FO step −ηg, the norm-matched ZO step −ηZg/√κ and the RISE step.

    Measured: F_FO = L_r(θ−ηg) − L_r(θ); F_ZO, F_RISE = mean ± se over M seeded draws (the shapes of
    `eos_probe.optim.shaping`, the RISE source's own code). η = the run's lr, q = the run's queries,
    directions = the run's law when it can be norm-matched (else Gaussian). The value is the measured gap
    F_FO − mean F_ZO (err: its se), whose sign the theory ties to e_r (logged as forgetting_e_r).

    Theory: [docs/theory.md#rise][rise].
    """

    name = "forgetting"
    description = ("one-step forgetting gap F_FO - mean F_ZO on the retention loss (measured; err = se over M "
                   "seeded norm-matched ZO steps); predicted and measured FO / ZO / RISE forgetting beside it")
    defaults = {"M": 8, "n_probes": 8, "queries": None, "directions": None, "rise_blocks": None}

    def check(self) -> None:
        _check_common(self)
        spec = self.options["rise_blocks"] or self.run["config"].get("rise_blocks") or "tensor"
        try:
            rise_blocks([1], spec)
        except Exception as e:  # InvalidValueError: one line for --probe
            raise UserError(f"probe metric {self.name!r}: {e}") from None
        self.blocks_spec = spec

    def columns(self) -> list[Column]:
        extra = {"pred_fo": "predicted F_FO = -lr grad L_r.g + lr^2/2 g^T H_r g",
                 "pred_zo": "predicted E F_ZO (norm-matched, linear term -lr/sqrt(kappa) grad L_r.g)",
                 "pred_rise": "predicted E F_RISE (blockwise, cross-block terms included)",
                 "pred_gap": "predicted F_FO - E F_ZO", "pred_gap_err": "uncertainty of pred_gap (trace se)",
                 "pred_linear": "the gap's first-order part -lr grad L_r.g (1 - 1/sqrt(kappa)), exact: the gap "
                                "minus it is the curvature part whose sign e_r decides",
                 "fo": "measured L_r(theta - lr g) - L_r(theta)", "zo": "measured mean over M ZO steps",
                 "zo_err": "standard error of zo", "rise": "measured mean over M RISE steps",
                 "rise_err": "standard error of rise", "e_r": "curvature excess rho_r(g) - lambda_bar_r",
                 "zo_cv": "zo with each draw's exact first-order term -lr grad L_r.v replaced by its mean "
                          "(a control variate: same expectation, the linear term's noise removed)",
                 "zo_cv_err": "standard error of zo_cv",
                 "curv": "measured curvature part of the gap: fo - zo_cv - pred_linear (err: zo_cv_err)"}
        return super().columns() + [Column(f"{self.name}_{k}", attrs={"description": v}) for k, v in extra.items()]

    def _rise_prediction(self, ctx: ProbeContext, blocks, zhz: Tensor, q: int, lr: float) -> tuple[float, int]:
        """Predicted E F_RISE from one H_r product per block (h_b and the cross terms from the same products)."""
        g, gr = train_grad(ctx), retention_grad(ctx)
        op = ctx.operator("H_r")
        n0 = op.n_hvp
        masked = torch.zeros((len(blocks), g.numel()), dtype=g.dtype, device=g.device)
        for b, (a, c) in enumerate(blocks):
            masked[b, a:c] = g[a:c]
        HG = op.matmat(masked)  # row b: H_r g^(b)
        scale = torch.cat([torch.full((c - a,), 1 / math.sqrt(th.norm_inflation(q, c - a)), dtype=g.dtype,
                                      device=g.device) for a, c in blocks])
        gbar = g * scale
        cross = float(sum(gbar @ HG[b] * scale[a] for b, (a, _) in enumerate(blocks)))
        h = [float(g[a:c] @ HG[b, a:c]) for b, (a, c) in enumerate(blocks)]
        tr = [float(zhz[:, a:c].sum(1).mean()) for a, c in blocks]
        quad = th.rise_quadratic(h, [float(g[a:c] @ g[a:c]) for a, c in blocks], tr, [c - a for a, c in blocks],
                                 cross, q)
        return th.forgetting_rise(lr, float(gr @ gbar), quad), op.n_hvp - n0

    def _measure(self, ctx: ProbeContext, blocks, q: int, law: str, lr: float) -> dict[str, float]:
        ret, g, M = _retention(ctx), train_grad(ctx), self.options["M"]
        base = float(ret.loss(ctx.theta))
        gen = ctx.generator(f"{self.name}/zo")
        V = torch.stack([zo_shape(g, q, gen, law, norm_match=True) for _ in range(M)])
        R = torch.stack([rise_shape(g, blocks, q, lambda b, m=m: ctx.generator(f"{self.name}/rise/{m}/{b}"))
                         for m in range(M)])
        steps = ctx.theta - lr * torch.cat([g[None], V, R])
        losses = ret.loss(steps).to(torch.float64).cpu().numpy() - base
        zo, zo_se = _mean_se(losses[1:M + 1])
        rise, rise_se = _mean_se(losses[M + 1:])
        # exact control variate: each draw's first-order term −lr ∇L_r·v is known; replacing it by its mean
        # −lr ∇L_r·g/√κ keeps the expectation and removes the noise that hides the curvature part
        gr = retention_grad(ctx)
        k = th.inflation(q, g.numel(), law)
        lin = (lr * (V @ gr)).to(torch.float64).cpu().numpy() - lr * float(gr @ g) / math.sqrt(k)
        zo_cv, zo_cv_se = _mean_se(losses[1:M + 1] + lin)
        return {"fo": float(losses[0]), "zo": zo, "zo_err": zo_se, "rise": rise, "rise_err": rise_se,
                "zo_cv": zo_cv, "zo_cv_err": zo_cv_se}

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        if _retention(ctx) is None:
            return self.nan_row()
        o, lr = self.options, float(ctx.config.lr)
        q, law = _queries(ctx.config, o["queries"]), _law(ctx.config, o["directions"])
        c, spent = retention_curvature(ctx, o["n_probes"])
        g, gr = train_grad(ctx), retention_grad(ctx)
        d, grg = g.numel(), float(gr @ g)
        zhz, _ = retention_probes(ctx, o["n_probes"])
        tr, tr_se = c["lam"] * d, c["lam_se"] * d
        pred = {"pred_fo": th.forgetting_fo(lr, grg, c["gHg"]),
                "pred_zo": th.forgetting_zo(lr, grg, c["gHg"], c["gg"], tr, q, d, law)}
        sizes = [int(math.prod(s)) for s in ctx.objective.space.shapes]
        blocks = rise_blocks(sizes, self.blocks_spec)
        pred["pred_rise"], n_rise = self._rise_prediction(ctx, blocks, zhz, q, lr)
        pred["pred_gap"] = pred["pred_fo"] - pred["pred_zo"]
        pred["pred_linear"] = th.forgetting_gap_linear(lr, grg, q, d, law)
        # d(pred_zo)/d(Tr) = (lr²/2)(c/q)‖g‖²/κ: the gap's uncertainty is the trace's
        k = th.inflation(q, d, law)
        pred["pred_gap_err"] = 0.5 * lr * lr * (th._fourth(d, law) / q) * c["gg"] / k * tr_se
        meas = self._measure(ctx, blocks, q, law, lr)
        meas["curv"] = meas["fo"] - meas["zo_cv"] - pred["pred_linear"]
        row = {f"{self.name}_{k}": v for k, v in {**pred, **meas}.items()}
        row.update({self.name: meas["fo"] - meas["zo"], f"{self.name}_err": meas["zo_err"],
                    f"{self.name}_nhvp": spent + n_rise, f"{self.name}_e_r": c["e"]})
        return row


# ------------------------------------------------------------------------------------------ ZO descent
class ZODescent(TraceUser, Metric):
    """η/η_ZO(g) on the training loss: η_ZO = 2‖g‖²/gᵀE[ZHZ]g is the largest step whose ZO-GD update
    (Zg, or Zg/√κ when the run norm-matches) descends in expectation; Gaussian 2q/((q+1)ρ(g) + Tr H).
    Above 1 the expected one-step change is an increase. Rademacher adds Σ g_i² H_ii (n_matvec probes).

    Theory: [docs/theory.md#rise][rise].
    """

    name = "zo_descent"
    description = ("lr / lr_ZO(g): lr_ZO = 2||g||^2 / g^T E[Z H Z] g, the ZO descent threshold on the training "
                   "loss (Gaussian 2q/((q+1) rho(g) + Tr H)); above 1 one ZO step increases the loss in mean; "
                   "err from the trace's se")
    defaults = {"method": "krylov", "n_matvec": 6, "rtol": None}

    def columns(self) -> list[Column]:
        return super().columns() + [
            Column(f"{self.name}_eta_zo", attrs={"description": "lr_ZO(g), the ZO descent threshold"}),
            Column(f"{self.name}_rho", attrs={"description": "rho(g) = g^T H g / ||g||^2 (training loss)"}),
            Column(f"{self.name}_trace", attrs={"description": "Tr H (the probe's shared trace estimate)"})]

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        (tr, _), new_tr = ctx.trace("H", *ctx.probe.trace_options("H", self.options))
        op = ctx.operator("H")
        n0 = op.n_hvp
        g = train_grad(ctx)
        d, q, lr = g.numel(), _queries(ctx.config, None), float(ctx.config.lr)
        law = getattr(ctx.config, "directions", "gaussian") or "gaussian"
        norm_match = bool(getattr(ctx.config, "norm_match", False))
        gg, gHg = float(g @ g), float(g @ op.matvec(g))
        gdg, gdg_se = None, 0.0
        if law == "rademacher":  # Σ g_i² H_ii = E[(z∘g)ᵀH(z∘g)], z Rademacher
            from ...curvature._probes import rademacher

            Z = rademacher(self.options["n_matvec"], d, ctx.generator(f"{self.name}/diag"), g.dtype, g.device) * g
            gdg, gdg_se = _mean_se((Z * op.matmat(Z)).sum(1).cpu().numpy())
        eta = th.zo_descent_lr(gHg, gg, float(tr.value), q, d, law, norm_match, gdg)
        scale = 1 / math.sqrt(th.inflation(q, d, law)) if norm_match else 1.0
        # lr/η_ZO = lr·gᵀE[ZHZ]g/(2‖g‖²)·scale is linear in Tr H (coefficient c‖g‖²/q) and in Σg_i²H_ii (−2/q)
        err = lr * scale * math.hypot(0.5 * (th._fourth(d, law) / q) * float(tr.error), gdg_se / (q * gg))
        return {self.name: lr / eta, f"{self.name}_err": err,
                f"{self.name}_nhvp": (tr.n_hvp if new_tr else 0) + op.n_hvp - n0,
                f"{self.name}_eta_zo": eta, f"{self.name}_rho": gHg / gg if gg > 0 else math.nan,
                f"{self.name}_trace": float(tr.value)}


# ------------------------------------------------------------------------------------------ 5b: flatness
class Flatness(Metric):
    """Loss increase at radius ρ: random ℓ∞ corners θ ± ρs (≈ (ρ²/2)Tr H), random ℓ2 sphere points
    (≈ (ρ²/2)Tr H/d), and the SAM point θ + ρg/‖g‖ (≈ ρ‖g‖ + (ρ²/2)ρ(g)), each beside its prediction.

    Random points come in ± pairs ((L(θ+Δ) + L(θ−Δ))/2 − L(θ)): the pair cancels the linear term, whose
    mean is zero anyway, and leaves the curvature part. `loss`: "retention" (earlier tasks; NaN without
    them) or "train". The value is the ℓ∞ increase (err: its se over M pairs).

    Theory: [docs/theory.md#hybrid-groups][hybrid-groups].
    """

    name = "flatness"
    description = ("mean loss increase at random l-inf corners of radius rho (pairs +-), err = se over M pairs; "
                   "l2 and SAM increases and the Hessian predictions beside it (retention loss by default)")
    defaults = {"rho": 0.01, "M": 8, "n_probes": 8, "loss": "retention"}

    def check(self) -> None:
        _check_common(self)
        positive_float(self.name, "rho", self.options["rho"])
        if self.options["loss"] not in LOSS_CHOICES:
            raise UserError(f"probe metric {self.name!r}: loss must be one of {', '.join(LOSS_CHOICES)}, "
                            f"got {self.options['loss']!r}")

    def columns(self) -> list[Column]:
        extra = {"linf_pred": "(rho^2/2) Tr H", "l2": "mean increase on the l2 sphere of radius rho (pairs)",
                 "l2_err": "se of l2", "l2_pred": "(rho^2/2) Tr H / d", "sam": "L(theta + rho g/||g||) - L(theta)",
                 "sam_pred": "rho ||g|| + (rho^2/2) rho(g)", "trace": "Tr H of the loss (Hutchinson)",
                 "trace_err": "se of trace"}
        return super().columns() + [Column(f"{self.name}_{k}", attrs={"description": v}) for k, v in extra.items()]

    def _curvature(self, ctx: ProbeContext, obj, g: Tensor) -> tuple[float, float, float, int]:
        """(gᵀHg, Tr H, se, products charged) of the measured loss."""
        n = self.options["n_probes"]
        if obj is ctx.objective:
            from ...curvature import trace

            op = ctx.operator("H")
            n0 = op.n_hvp
            (est, _), new = ctx.shared(f"trace/H/hutchinson/{n}", lambda: (
                trace(op, method="hutchinson", n_matvec=n, generator=ctx.generator(f"{self.name}/trace")), ""))
            gHg = float(g @ op.matvec(g))
            return gHg, float(est.value), float(est.error), op.n_hvp - n0
        op = ctx.operator("H_r")
        zhz, spent = retention_probes(ctx, n)
        n0 = op.n_hvp
        gHg = float(g @ op.matvec(g))  # g = ∇L_r here: not the shared H_r ∇L
        mean, se = _mean_se(zhz.sum(1).cpu().numpy())
        return gHg, mean, se, spent + op.n_hvp - n0

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        o = self.options
        obj = ctx.objective if o["loss"] == "train" else _retention(ctx)
        if obj is None:
            return self.nan_row()
        g = train_grad(ctx) if obj is ctx.objective else retention_grad(ctx)
        gHg, tr, tr_se, spent = self._curvature(ctx, obj, g)
        rho, M, d, th0 = float(o["rho"]), o["M"], g.numel(), ctx.theta
        gen = ctx.generator(f"{self.name}/points")
        S = torch.empty((M, d), dtype=th0.dtype, device=th0.device).bernoulli_(0.5, generator=gen).mul_(2).sub_(1)
        U = torch.randn((M, d), generator=gen, dtype=th0.dtype, device=th0.device)
        U = U * (rho / U.norm(dim=1, keepdim=True))
        gn = float(g.norm())
        pts = torch.cat([th0 + rho * S, th0 - rho * S, th0 + U, th0 - U, (th0 + rho * g / gn)[None]])
        L = obj.loss(pts).to(torch.float64).cpu().numpy() - float(obj.loss(th0))
        linf, linf_se = _mean_se(0.5 * (L[:M] + L[M:2 * M]))
        l2, l2_se = _mean_se(0.5 * (L[2 * M:3 * M] + L[3 * M:4 * M]))
        return {self.name: linf, f"{self.name}_err": linf_se, f"{self.name}_nhvp": spent,
                f"{self.name}_linf_pred": th.flatness_linf(rho, tr), f"{self.name}_l2": l2, f"{self.name}_l2_err": l2_se,
                f"{self.name}_l2_pred": th.flatness_l2(rho, tr, d), f"{self.name}_sam": float(L[-1]),
                f"{self.name}_sam_pred": th.flatness_sam(rho, gn, gHg / (gn * gn)),
                f"{self.name}_trace": tr, f"{self.name}_trace_err": tr_se}


# ------------------------------------------------------------------------------------------ 5b: hybrid bands
class Restricted(CurvatureOperator):
    """H restricted to the coordinates `index` (H_gg = E_gᵀ H E_g): each product is one product of H."""

    def __init__(self, H: CurvatureOperator, index: Tensor) -> None:
        self.H, self.index = H, index.to(H.device)
        self.dim, self.dtype, self.device = int(index.numel()), H.dtype, H.device

    def matvec(self, v: Tensor) -> Tensor:
        return self.matmat(v[None])[0]

    def matmat(self, V: Tensor) -> Tensor:
        full = torch.zeros((V.shape[0], self.H.dim), dtype=self.dtype, device=self.device)
        full[:, self.index] = self._check(V)
        return self.H.matmat(full)[:, self.index]

    @property
    def n_hvp(self) -> int:
        return self.H.n_hvp


def _groups(optimizer) -> dict[str, Any]:
    return dict(getattr(optimizer, "groups", None) or {})


class HybridBands(Metric):
    """Block-diagonal stability bands of a hybrid ZO/FO optimizer (docs/theory.md §5b), per group of
    ``optimizer.groups``: ZO groups Tr(H_ZZ) against 2q(1−β)/η (Hutchinson on the group's coordinates),
    FO groups λ_max(H_FF) against 2(1+β)/η (Lanczos on H restricted to the group), and the coupling ratio
    ‖H_off‖_F/‖H_diag‖_F between the groups (frozen parameters excluded), estimated from Rademacher probes
    restricted to each group: E‖(H z_c)_b‖² = ‖H_bc‖_F². The value is the largest ratio curvature/limit
    (< 1: every group inside its band). NaN when the optimizer has no groups.

    Theory: [docs/theory.md#hybrid-groups][hybrid-groups].
    """

    name = "hybrid_bands"
    description = ("hybrid ZO/FO bands: max over groups of Tr(H_ZZ)/(2q(1-beta)/lr) (ZO) and "
                   "lambda_max(H_FF)/(2(1+beta)/lr) (FO); per-group values and the coupling ratio "
                   "||H_off||_F/||H_diag||_F beside it; NaN without parameter groups")
    defaults = {"n_probes": 8, "tol": 1e-3, "max_iter": 100}

    def check(self) -> None:
        _check_common(self)
        positive_float(self.name, "tol", self.options["tol"])
        positive_int(self.name, "max_iter", self.options["max_iter"], 2)
        self.names = list(_groups(self.run.get("optimizer")))

    def columns(self) -> list[Column]:
        n = (max(1, len(self.names)),)
        g = {"groups": self.names}
        cols = super().columns()
        cols[0] = Column(cols[0].name, attrs={**cols[0].attrs, **g})
        return cols + [
            Column(f"{self.name}_curvature", shape=n, attrs={**g, "description": "Tr(H_gg) (ZO group) or "
                                                                               "lambda_max(H_gg) (FO group)"}),
            Column(f"{self.name}_curvature_err", shape=n, attrs={**g, "description": "its uncertainty"}),
            Column(f"{self.name}_limit", shape=n, attrs={**g, "description": "2q(1-beta)/lr (ZO) or 2(1+beta)/lr (FO)"}),
            Column(f"{self.name}_zeroth_order", "i1", shape=n, attrs={**g, "description": "1 for a ZO group"}),
            Column(f"{self.name}_coupling", attrs={"description": "||H_off||_F / ||H_diag||_F between the groups"}),
            Column(f"{self.name}_coupling_err", attrs={"description": "standard error of the coupling ratio"})]

    def _probe_groups(self, ctx: ProbeContext, specs: list) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Per probe: Σ_c ‖(H z_c)_c‖², Σ_c ‖(H z_c)_others‖², and per group the samples z_cᵀ(H z_c)_c."""
        from ...curvature._probes import rademacher

        op, n = ctx.operator("H"), self.options["n_probes"]
        idx = [s.index.to(ctx.theta.device) for s in specs]
        allidx = torch.cat(idx)
        diag, off, traces = np.zeros(n), np.zeros(n), []
        for c, ic in enumerate(idx):
            Z = rademacher(n, ic.numel(), ctx.generator(f"{self.name}/{self.names[c]}"), op.dtype, op.device)
            full = torch.zeros((n, op.dim), dtype=op.dtype, device=op.device)
            full[:, ic] = Z
            HZ = op.matmat(full)
            own = (HZ[:, ic] ** 2).sum(1)
            diag += own.cpu().numpy()
            off += ((HZ[:, allidx] ** 2).sum(1) - own).cpu().numpy()
            traces.append((Z * HZ[:, ic]).sum(1).cpu().numpy())
        return diag, off, traces

    def compute(self, ctx: ProbeContext) -> dict[str, Any]:
        groups = _groups(ctx.optimizer)
        if not groups or list(groups) != self.names:
            return self.nan_row()
        op = ctx.operator("H")
        n0 = op.n_hvp
        specs = [groups[k] for k in self.names]
        diag, off, traces = self._probe_groups(ctx, specs)
        curv, err, limit = [], [], []
        for s, t in zip(specs, traces):
            lr = float(s.lr if getattr(s, "lr", None) is not None else ctx.config.lr)
            beta = float(getattr(s, "momentum", 0.0) or 0.0)
            if s.zeroth_order:
                m, se = _mean_se(t)
                limit.append(th.zo_band_limit(lr, _queries(ctx.config, getattr(s, "queries", None)), beta))
            else:
                from ...curvature import lambda_max

                est = lambda_max(Restricted(op, s.index), tol=self.options["tol"],
                                 max_iter=min(self.options["max_iter"], max(2, int(s.index.numel()))),
                                 generator=ctx.generator(f"{self.name}/lanczos/{s.index.numel()}"))
                m, se = float(est.value), float(est.error)
                limit.append(th.fo_band_limit(lr, beta))
            curv.append(m)
            err.append(se)
        ratio, ratio_se = _ratio(off, diag)
        r = np.asarray(curv) / np.asarray(limit)
        worst = int(np.argmax(r))
        return {self.name: float(r[worst]), f"{self.name}_err": err[worst] / limit[worst],
                f"{self.name}_nhvp": op.n_hvp - n0, f"{self.name}_curvature": np.asarray(curv),
                f"{self.name}_curvature_err": np.asarray(err), f"{self.name}_limit": np.asarray(limit),
                f"{self.name}_zeroth_order": np.asarray([int(bool(s.zeroth_order)) for s in specs], dtype=np.int8),
                f"{self.name}_coupling": ratio, f"{self.name}_coupling_err": ratio_se}


def _ratio(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """√(mean num / mean den) with its delta-method standard error (paired samples)."""
    mn, md = float(num.mean()), float(den.mean())
    if not md > 0:
        return math.nan, math.nan
    r = math.sqrt(max(mn, 0.0) / md)
    if mn <= 0 or num.size < 2:
        return r, 0.0
    c = np.cov(np.stack([num, den]), ddof=1) / num.size
    var = (mn / md) ** 2 * (c[0, 0] / mn**2 + c[1, 1] / md**2 - 2 * c[0, 1] / (mn * md))
    return r, 0.5 * math.sqrt(max(var, 0.0)) / r
