"""ZO empirical NTK (THEORY.md §5c): the exact second-moment formula against Monte Carlo, and the probe metric
against an independent dense computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eos_probe.theory.entk import effective_rank, relative_mse, zo_kernel_mse


def _mc_mse(A: np.ndarray, B: np.ndarray, P: int, law: str, draws: int, seed: int) -> tuple[float, float]:
    """Monte-Carlo mean and standard error of ‖K_ZO − K‖_F² over `draws` independent K_ZO."""
    rng = np.random.default_rng(seed)
    d = A.shape[1]
    K = A @ B.T
    vals = []
    for _ in range(draws // 1000):
        if law == "gaussian":
            U = rng.standard_normal((1000, d, P))
        elif law == "rademacher":
            U = rng.choice([-1.0, 1.0], size=(1000, d, P))
        else:
            U = rng.standard_normal((1000, d, P))
            U *= np.sqrt(d) / np.linalg.norm(U, axis=1, keepdims=True)
        Kzo = (A @ U) @ np.swapaxes(B @ U, 1, 2) / P
        vals.append(((Kzo - K) ** 2).sum(axis=(1, 2)))
    v = np.concatenate(vals)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


@pytest.mark.parametrize("law", ["gaussian", "rademacher", "sphere"])
@pytest.mark.parametrize("P", [1, 4])
def test_second_moment_formula_matches_monte_carlo(law, P) -> None:
    rng = np.random.default_rng(0)
    # A ≠ B, anisotropic columns (so the Rademacher correction is far from 0)
    A = rng.standard_normal((3, 10)) * np.linspace(0.2, 2.0, 10)
    B = rng.standard_normal((4, 10)) * np.linspace(2.0, 0.2, 10) + 0.5 * A[:1]
    exact = zo_kernel_mse(A, B, P, law)
    mean, se = _mc_mse(A, B, P, law, draws=100_000, seed=1)
    assert abs(mean - exact) < 4 * se and abs(mean / exact - 1) < 0.02, (mean, exact, se)


def test_rademacher_and_gaussian_formulas_differ_where_they_should() -> None:
    rng = np.random.default_rng(3)
    J = rng.standard_normal((5, 8)) * np.array([3, 1, 1, 1, 1, 1, 1, 0.1])
    K = J @ J.T
    r = effective_rank(K)
    assert relative_mse(J, 4) == pytest.approx((1 + r) / 4, rel=1e-12)  # THEORY §5c, independent of d
    assert relative_mse(J, 4, "rademacher") < relative_mse(J, 4)
    assert relative_mse(J, 4, "sphere") == pytest.approx(((8 / 10) * (r + 2) - 1) / 4, rel=1e-12)


def test_probe_metric_measures_the_law_on_a_small_network(tmp_path, one_thread) -> None:
    """The metric's exact eNTK equals J Jᵀ from an independent per-example jacobian, its measured error per P
    follows the prediction, and its function-space step error is that of the actual ZO update."""
    from eos_probe.config import TrainConfig
    from eos_probe.probe import build_probe
    from eos_probe.probe.metrics.systems import probe_batch_indices
    from eos_probe.build import build

    cfg = TrainConfig(model="mlp", model_args={"hidden": [8]}, n_per_class=10, optimizer="zo-gd", lr=1e-3,
                      dtype="float64", probe=["entk_fidelity:m=6:pool=4096"])
    setup = build(cfg)
    probe = build_probe(cfg, setup)
    (metric,) = probe.metrics
    from eos_probe.probe import ProbeContext

    ctx = ProbeContext(probe, 0, setup.theta, setup.optimizer.init(setup.theta), setup.optimizer, setup.objective, cfg)
    J = metric.jacobian(ctx)
    obj = setup.objective
    idx = probe_batch_indices(int(obj.x.shape[0]), 6)
    # independent J: one example at a time through the nn.Module with autograd
    rows = []
    params = dict(obj.model.named_parameters())
    for i in idx.tolist():
        out = obj.model(obj.x[i:i + 1])[0]
        for v in range(out.shape[0]):
            gs = torch.autograd.grad(out[v], list(params.values()), retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in gs]))
    assert torch.allclose(J, torch.stack(rows), rtol=1e-10, atol=1e-12)
    row = metric.compute(ctx)
    ratio = row["entk_fidelity_mse_ratio"]
    assert np.all((ratio > 0.75) & (ratio < 1.33)), ratio  # 4096 directions: ≤ ~10 % MC error at P = 64
    # the ZO update's function-space error: its mean square over seeds follows the prediction
    errs = []
    for step in range(40):
        ctx = ProbeContext(probe, step, setup.theta, {}, setup.optimizer, obj, cfg)
        r = metric.compute(ctx) if step == 0 else None
        from eos_probe.probe.metrics.systems import _next_direction

        g = _next_direction(ctx).to(torch.float64)
        grad = obj.grad(setup.theta)
        errs.append(float((J @ (g - grad)).norm() ** 2 / (J @ grad).norm() ** 2))
        if r is not None:
            assert r["entk_fidelity_step_err"] == pytest.approx(errs[0] ** 0.5, rel=1e-9)
            pred = r["entk_fidelity_step_err_pred"] ** 2
    assert np.mean(errs) == pytest.approx(pred, rel=0.35)


def test_entk_fidelity_without_a_probe_batch_is_one_line(tmp_path, capsys) -> None:
    from eos_probe.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "mlp", "--model-arg", "hidden=[2]", "--n-per-class", "2", "--steps", "1",
              "--probe", "entk_fidelity:m=100", "--quiet", "--out", str(tmp_path / "x.h5")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "probe batch" in err and len(err.strip().splitlines()) == 1


def test_entk_plot_draws_measured_and_predicted_errors(tmp_path, one_thread) -> None:
    from eos_probe.config import TrainConfig
    from eos_probe.plot.figures import make_figure
    from eos_probe.train import train

    cfg = TrainConfig(model="mlp", model_args={"hidden": [4]}, n_per_class=5, optimizer="zo-gd", lr=1e-3, steps=2,
                      probe_every=1, probe=["entk_fidelity:m=4:pool=64"], out=str(tmp_path / "e.h5"))
    res = train(cfg, progress=False)
    import eos_probe

    run = eos_probe.load(res.path)
    assert run.probe_array("entk_fidelity_rel_err").shape == (3, 4)
    assert np.all(np.isfinite(run.probe["entk_fidelity_step_err"].to_numpy()[:2]))
    out = make_figure([res.path], "entk", tmp_path / "e.png")
    assert out.stat().st_size > 10_000
