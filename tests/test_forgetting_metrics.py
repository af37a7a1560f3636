"""The forgetting-diagnostics probe metrics (docs/theory.md §5a–5b) against dense torch.func.hessian on a tiny
float64 network: every logged estimate equals the formula evaluated on the exact Hessian (up to its own
reported standard error), measured losses are the losses of the seeded steps, and without a retention objective
(or without parameter groups) the rows are NaN and cost nothing."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.func import hessian

import eos_probe
from eos_probe.config import TrainConfig
from eos_probe.errors import UserError
from eos_probe.objective import Objective
from eos_probe.optim.shaping import rise_blocks, rise_shape, zo_shape
from eos_probe.probe import Probe, ProbeContext
from eos_probe.probe.metrics.forgetting import CurvatureExcess, Flatness, Forgetting, HybridBands, ZODescent
from eos_probe.theory import shaping as th
from eos_probe.train import train


def _objectives():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(24, 4, dtype=torch.float64), torch.randint(0, 3, (24,))
    obj = Objective(model, x, y, num_classes=3)
    # the retention objective: other data (an earlier task), built by hand as the task trainer would
    xr, yr = torch.randn(16, 4, dtype=torch.float64) + 0.5, torch.randint(0, 3, (16,))
    ret = Objective(model, xr, yr, num_classes=3)
    return obj, ret


def _ctx(metric_cls, retention: bool = True, optimizer=None, step: int = 3, lr: float = 0.05, queries: int = 2,
         law: str = "gaussian", **opts):
    obj, ret = _objectives()
    obj.retention = ret if retention else None
    cfg = TrainConfig(model="mlp", optimizer="zo-gd", lr=lr, queries=queries, directions=law, probe=[])
    theta = obj.initial_theta()
    settings = {"config": cfg.to_dict(), "dim": obj.dim, "optimizer": optimizer, "objective": obj, "theta": theta}
    metric = metric_cls(settings, **opts)
    probe = Probe([metric], 1, settings)
    probe._backend = "double-backward"
    return metric, ProbeContext(probe, step, theta, {}, optimizer, obj, cfg), obj, ret, theta


def _dense(o: Objective, theta: torch.Tensor) -> np.ndarray:
    H = hessian(o._loss_single)(theta).detach().numpy()
    return 0.5 * (H + H.T)


def _within(value: float, exact: float, se: float, k: float = 4.0) -> None:
    assert abs(value - exact) <= k * se + 1e-12 * abs(exact), (value, exact, se)


def test_curvature_excess_is_rho_r_minus_mean_curvature_of_the_dense_retention_hessian() -> None:
    m, ctx, obj, ret, theta = _ctx(CurvatureExcess, n_probes=300)
    row = m.compute(ctx)
    Hr, g = _dense(ret, theta), obj.grad(theta).numpy()
    rho = g @ Hr @ g / (g @ g)
    assert row["curvature_excess_rho_r"] == pytest.approx(rho, rel=1e-10)
    lam = np.trace(Hr) / obj.dim
    _within(row["curvature_excess_lambda_bar_r"], lam, row["curvature_excess_lambda_bar_r_err"])
    assert row["curvature_excess_lambda_bar_r_err"] < 0.2 * abs(lam)  # informative
    assert row["curvature_excess"] == pytest.approx(rho - row["curvature_excess_lambda_bar_r"], rel=1e-12)
    assert row["curvature_excess_nhvp"] == 1 + 300 == ctx.hessian_products()


@pytest.mark.parametrize("cls,opts", [(CurvatureExcess, {}), (Forgetting, {}), (Flatness, {})])
def test_without_retention_objective_the_row_is_nan_and_free(cls, opts) -> None:
    m, ctx, *_ = _ctx(cls, retention=False, **opts)
    row = m.compute(ctx)
    assert math.isnan(row[m.name]) and row[f"{m.name}_nhvp"] == 0 and ctx.hessian_products() == 0
    assert set(row) == {c.name for c in m.columns()}


def test_forgetting_predictions_equal_the_formulas_on_the_dense_hessian_and_measure_the_seeded_steps() -> None:
    lr, q, M = 0.02, 2, 400
    m, ctx, obj, ret, theta = _ctx(Forgetting, lr=lr, queries=q, M=M, n_probes=300)
    row = m.compute(ctx)
    Hr, g, gr = _dense(ret, theta), obj.grad(theta).numpy(), ret.grad(theta).numpy()
    d = obj.dim
    assert row["forgetting_pred_fo"] == pytest.approx(-lr * gr @ g + 0.5 * lr**2 * g @ Hr @ g, rel=1e-10)
    exact_zo = th.forgetting_zo(lr, gr @ g, g @ Hr @ g, g @ g, np.trace(Hr), q, d)
    _within(row["forgetting_pred_zo"], exact_zo, row["forgetting_pred_gap_err"])
    rho, lam = g @ Hr @ g / (g @ g), np.trace(Hr) / d
    _within(row["forgetting_pred_gap"] + lr * gr @ g * (1 - 1 / math.sqrt(th.inflation(q, d))),
            th.forgetting_gap(lr, g @ g, rho, lam, q, d), row["forgetting_pred_gap_err"])
    # RISE (one block per tensor) from the dense blocks; its block traces are Hutchinson estimates
    sizes = [p.numel() for p in obj.model.parameters()]
    blocks = rise_blocks(sizes, "tensor")
    scale = np.concatenate([np.full(b - a, 1 / math.sqrt(th.norm_inflation(q, b - a))) for a, b in blocks])
    gb = g * scale
    quad = th.rise_quadratic([g[a:b] @ Hr[a:b, a:b] @ g[a:b] for a, b in blocks], [g[a:b] @ g[a:b] for a, b in blocks],
                             [np.trace(Hr[a:b, a:b]) for a, b in blocks], [b - a for a, b in blocks], gb @ Hr @ gb, q)
    exact_rise = th.forgetting_rise(lr, gr @ gb, quad)
    assert row["forgetting_pred_rise"] == pytest.approx(exact_rise, rel=0.02)
    # measured: the losses of exactly the documented seeded steps
    base = float(ret.loss(theta))
    assert row["forgetting_fo"] == float(ret.loss(theta - lr * obj.grad(theta))) - base
    gt, gen = obj.grad(theta), ctx.generator("forgetting/zo")
    V = torch.stack([zo_shape(gt, q, gen, "gaussian", norm_match=True) for _ in range(M)])
    zo = ret.loss(theta - lr * V).numpy() - base
    assert row["forgetting_zo"] == pytest.approx(zo.mean(), rel=1e-12)
    R = torch.stack([rise_shape(gt, blocks, q, lambda b, k=k: ctx.generator(f"forgetting/rise/{k}/{b}"))
                     for k in range(M)])
    assert row["forgetting_rise"] == pytest.approx((ret.loss(theta - lr * R).numpy() - base).mean(), rel=1e-12)
    # and they agree with the predictions (small lr: third-order terms below the Monte Carlo error)
    _within(row["forgetting_zo"], exact_zo, row["forgetting_zo_err"])
    _within(row["forgetting_rise"], exact_rise, row["forgetting_rise_err"])
    assert row["forgetting"] == row["forgetting_fo"] - row["forgetting_zo"]
    # the first-order part of the gap and the control-variate ZO mean: each draw's −lr ∇L_r·v swapped for its
    # mean; same expectation (the dense prediction), and the curvature part measured against its prediction
    lin = -lr * gr @ g * (1 - 1 / math.sqrt(th.inflation(q, d)))
    assert row["forgetting_pred_linear"] == pytest.approx(lin, rel=1e-10)
    cv = zo + lr * (V.numpy() @ gr) - lr * (gr @ g) / math.sqrt(th.inflation(q, d))
    assert row["forgetting_zo_cv"] == pytest.approx(cv.mean(), rel=1e-9)
    assert row["forgetting_zo_cv_err"] == pytest.approx(cv.std(ddof=1) / math.sqrt(M), rel=1e-9)
    _within(row["forgetting_zo_cv"], exact_zo, row["forgetting_zo_cv_err"])
    assert row["forgetting_zo_cv_err"] < 0.5 * row["forgetting_zo_err"]  # the noise it exists to remove
    assert row["forgetting_curv"] == pytest.approx(row["forgetting_fo"] - row["forgetting_zo_cv"] - lin, rel=1e-9)
    assert row["forgetting_e_r"] == pytest.approx(rho - lam, abs=4 * row["forgetting_pred_gap_err"] /
                                                  (0.5 * lr**2 * th.shaping_tau(q, d) * (g @ g)))
    assert row["forgetting_nhvp"] == 1 + 300 + len(blocks) == ctx.hessian_products()


@pytest.mark.parametrize("law,norm_match", [("gaussian", False), ("sphere", True), ("rademacher", False)])
def test_zo_descent_ratio_is_lr_over_the_dense_threshold(law: str, norm_match: bool) -> None:
    m, ctx, obj, _, theta = _ctx(ZODescent, lr=0.05, queries=3, law=law, method="hutchinson", n_matvec=300)
    ctx.config.norm_match = norm_match  # the field of the norm-matching branch (read with getattr)
    row = m.compute(ctx)
    H, g = _dense(obj, theta), obj.grad(theta).numpy()
    d, tr = obj.dim, np.trace(H)
    gdg = float(np.sum(g * g * np.diag(H)))
    exact = th.zo_descent_lr(g @ H @ g, g @ g, tr, 3, d, law, norm_match, gdg)
    if law == "gaussian":
        assert exact == pytest.approx(2 * 3 / (4 * (g @ H @ g) / (g @ g) + tr), rel=1e-12)
    assert row["zo_descent_rho"] == pytest.approx(g @ H @ g / (g @ g), rel=1e-10)
    assert row["zo_descent"] == pytest.approx(0.05 / row["zo_descent_eta_zo"], rel=1e-12)
    _within(row["zo_descent"], 0.05 / exact, row["zo_descent_err"])  # err: the trace's (and Σg_i²H_ii's) se


@pytest.mark.parametrize("loss", ["train", "retention"])
def test_flatness_increases_match_their_hessian_predictions(loss: str) -> None:
    rho = 1e-3
    m, ctx, obj, ret, theta = _ctx(Flatness, rho=rho, M=400, n_probes=300, loss=loss)
    row = m.compute(ctx)
    o = obj if loss == "train" else ret
    H, g = _dense(o, theta), o.grad(theta).numpy()
    d, tr = o.dim, np.trace(H)
    _within(row["flatness_trace"], tr, row["flatness_trace_err"])
    assert row["flatness_linf_pred"] == pytest.approx(0.5 * rho**2 * row["flatness_trace"], rel=1e-12)
    _within(row["flatness"], 0.5 * rho**2 * tr, row["flatness_err"], 4.5)
    _within(row["flatness_l2"], 0.5 * rho**2 * tr / d, row["flatness_l2_err"], 4.5)
    sam = rho * np.linalg.norm(g) + 0.5 * rho**2 * g @ H @ g / (g @ g)
    assert row["flatness_sam_pred"] == pytest.approx(sam, rel=1e-10)
    assert row["flatness_sam"] == pytest.approx(sam, rel=1e-4)
    assert row["flatness_nhvp"] == 300 + 1 == ctx.hessian_products()


def _groups(frozen: bool = True):
    body = torch.arange(0, 20 if frozen else 25)  # 20..24 frozen: in no group
    return SimpleNamespace(groups={
        "adapter": SimpleNamespace(index=body, zeroth_order=True, lr=0.01, momentum=0.9, queries=4,
                                   directions="rademacher"),
        "head": SimpleNamespace(index=torch.arange(25, 43), zeroth_order=False, lr=0.1, momentum=0.0, queries=None,
                                directions=None)})


def test_hybrid_bands_against_the_dense_blocks() -> None:
    opt = _groups()
    m, ctx, obj, _, theta = _ctx(HybridBands, optimizer=opt, n_probes=300, tol=1e-9, max_iter=18)
    row = m.compute(ctx)
    H = _dense(obj, theta)
    z, f = opt.groups["adapter"].index.numpy(), opt.groups["head"].index.numpy()
    tr_z, lam_f = np.trace(H[np.ix_(z, z)]), np.linalg.eigvalsh(H[np.ix_(f, f)])[-1]
    curv, err, limit = row["hybrid_bands_curvature"], row["hybrid_bands_curvature_err"], row["hybrid_bands_limit"]
    _within(curv[0], tr_z, err[0])
    assert curv[1] == pytest.approx(lam_f, rel=1e-7)
    assert limit == pytest.approx([2 * 4 * 0.1 / 0.01, 2 / 0.1], rel=1e-12)
    assert list(row["hybrid_bands_zeroth_order"]) == [1, 0]
    assert row["hybrid_bands"] == pytest.approx(max(curv / limit), rel=1e-12)
    both = np.concatenate([z, f])
    Hg = H[np.ix_(both, both)]
    diag = Hg.copy()
    diag[: z.size, z.size:] = 0
    diag[z.size:, : z.size] = 0
    exact = np.linalg.norm(Hg - diag) / np.linalg.norm(diag)  # frozen 20..24 excluded
    _within(row["hybrid_bands_coupling"], exact, row["hybrid_bands_coupling_err"])
    assert row["hybrid_bands_nhvp"] == ctx.hessian_products() > 2 * 300  # probes per group + Lanczos on the head
    assert m.columns()[0].attrs["groups"] == ["adapter", "head"]


def test_hybrid_bands_without_groups_is_nan_and_options_are_checked() -> None:
    m, ctx, *_ = _ctx(HybridBands)
    row = m.compute(ctx)
    assert np.isnan(row["hybrid_bands"]) and np.all(np.isnan(row["hybrid_bands_curvature"]))
    with pytest.raises(UserError, match="forgetting"):
        _ctx(Forgetting, M=1)
    with pytest.raises(UserError, match="directions"):
        _ctx(Forgetting, directions="cauchy")
    with pytest.raises(UserError, match="loss"):
        _ctx(Flatness, loss="test")
    with pytest.raises(UserError, match="rise blocks"):
        _ctx(Forgetting, rise_blocks="x")


def test_the_metrics_run_inside_training_and_their_products_add_up(tmp_path) -> None:
    out = tmp_path / "f.h5"
    cfg = TrainConfig(model="mlp", model_args={"hidden": [4]}, n_per_class=4, dtype="float64", optimizer="zo-gd",
                      lr=1e-4, steps=2, probe_every=1, out=str(out),
                      probe=["curvature_excess", "forgetting:M=2", "zo_descent", "flatness:loss=train", "hybrid_bands"])
    train(cfg, progress=False)
    p = eos_probe.load(out).probe
    assert p["curvature_excess"].isna().all() and p["forgetting_pred_fo"].isna().all()  # no earlier task
    assert p["zo_descent"].notna().all() and p["flatness"].notna().all() and p["hybrid_bands"].isna().all()
    spent = p[[c for c in p.columns if c.endswith("_nhvp")]].sum(axis=1)
    assert (spent == p["nhvp"]).all()


def test_gap_agreement_counts_signs_where_the_prediction_is_decided() -> None:
    from eos_probe.plot.forgetting import gap_agreement

    pred = np.array([1.0, -1.0, 0.1, 2.0, -3.0])
    meas = np.array([0.9, 0.5, -0.1, 2.1, -2.5])
    s = gap_agreement(pred, np.full(5, 0.1), meas, np.full(5, 0.1), e_r=pred)
    assert s["n"] == 5 and s["n_decided"] == 4 and s["agree"] == 0.75  # 0.1 is within 2 se: undecided
    # per sign of e_r: 2.0 agrees (1.0 decided and agrees), -1.0 disagrees, -3.0 agrees
    assert (s["n_decided_pos"], s["agree_pos"], s["n_decided_neg"], s["agree_neg"]) == (2, 1.0, 2, 0.5)
    assert s["slope"] == pytest.approx(np.polyfit(pred, meas, 1)[0]) and -1 < s["pearson_r"] < 1


def test_forgetting_plot_scatters_the_gap_and_draws_the_accuracy_table(tmp_path) -> None:
    """A run file with forgetting rows (from the metric on a tiny network at several θ) and a task table."""
    import h5py
    import pandas as pd

    from eos_probe.plot.forgetting import forgetting_figure

    rows = []
    for step in range(4):
        m, ctx, obj, ret, theta = _ctx(Forgetting, step=step, lr=0.05, M=4)
        ctx.theta = theta + 0.05 * step * torch.randn(theta.shape, generator=torch.Generator().manual_seed(step),
                                                       dtype=theta.dtype)
        rows.append(m.compute(ctx))
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = 1
        f.create_group("train")
        f.create_dataset("tasks/accuracy", data=np.array([[0.9, np.nan], [0.6, 0.8]]))
    run = SimpleNamespace(name="tiny", path=path, probe=pd.DataFrame(rows))
    fig = forgetting_figure([run])
    assert len(fig.axes) == 3  # scatter, heat map, its colour bar
    assert "forgetting gap" in fig.axes[0].get_title() and fig.axes[1].get_ylabel() == "after task t"
    out = tmp_path / "f.png"
    fig.savefig(out)
    assert out.stat().st_size > 10_000
    empty = SimpleNamespace(name="x", path=path, probe=pd.DataFrame({"forgetting": [np.nan]}))
    with pytest.raises(UserError, match="no forgetting"):
        forgetting_figure([empty])


def test_fashion4_halves_splits_the_inputs_between_the_tasks() -> None:
    from eos_probe.data import load_dataset
    from eos_probe.errors import UserError

    base, d = load_dataset("fashion4", n_per_class=20), load_dataset("fashion4-halves", n_per_class=20)
    left = d.y_train < 2
    assert torch.equal(d.y_train, base.y_train)
    assert torch.equal(d.x_train[left][..., :14], base.x_train[left][..., :14])
    assert torch.equal(d.x_train[~left][..., 14:], 3.0 * base.x_train[~left][..., 14:])
    assert not d.x_train[left][..., 14:].any() and not d.x_train[~left][..., :14].any()
    assert not d.x_test[d.y_test < 2][..., 14:].any()
    with pytest.raises(UserError, match="right_scale"):
        load_dataset("fashion4-halves", right_scale=-1)


def test_the_halves_recipe_logs_the_curvature_part_of_the_gap(tmp_path) -> None:
    """recipes/forgetting-halves*.toml, shortened: stage 1, then one point of the sweep with its columns."""
    from eos_probe.config import load_toml
    from eos_probe.sweep.spec import load_sweep_config

    root = Path(__file__).resolve().parents[1] / "recipes"
    s1 = TrainConfig(**{**load_toml(root / "forgetting-halves-stage1.toml"), "task_steps": [30, 0],
                        "out": str(tmp_path / "s1.h5")})
    train(s1, progress=False)
    spec = load_sweep_config(root / "forgetting-halves.toml")
    assert set(spec.axes) == {"lr", "queries", "seed"} and len(spec.axes["seed"]) == 6
    cfg = TrainConfig(**{**spec.base, "lr": spec.axes["lr"][0], "queries": 4, "task_steps": [0, 10],
                         "init_from": str(tmp_path / "s1.h5"), "out": str(tmp_path / "s2.h5")})
    train(cfg, progress=False)
    p = eos_probe.load(tmp_path / "s2.h5").probe
    assert len(p) == 3 and p[["forgetting_curv", "forgetting_zo_cv", "forgetting_pred_linear"]].notna().all().all()
    assert (p["forgetting_zo_cv_err"] < p["forgetting_err"]).all()
