"""Sweeps in one process and stacked evaluation: K copies trained together must follow the trajectories of
K separate runs of the same seed (the independent truth here is the single-run trainer itself), a diverging
copy must not stop the others, and batched query evaluation must reproduce the query loop."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from eos_probe.cli import main
from eos_probe.config import TrainConfig
from eos_probe.objective import AUTO_CHUNK_BYTES, Objective, activation_bytes, auto_microbatch
from eos_probe.optim.sources import TwoPointSource
from eos_probe.build import build
from eos_probe.checkpoint import checkpoint_path
from eos_probe.train import sweep_configs, train, train_sweep

#: 8 x 28 x 28 float32 = 25 KB per example: above VMAP_MAX_ACTIVATION, so on CPU stacked rows are looped
TINY_CNN = {"widths": [8, 8], "hidden": 16}
TINY_MLP = {"hidden": [16]}


pytestmark = pytest.mark.usefixtures("one_thread")


def _theta(path) -> torch.Tensor:
    return torch.load(checkpoint_path(path), weights_only=False)["theta"]


def _series(path, group: str, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[f"{group}/{name}"][()]


def _assert_same_run(a, b, probe_cols: tuple[str, ...] = (), exact: bool = False) -> None:
    """Same steps, losses, final θ (and probe values). vmapped copies round differently from a single
    evaluation and ZO steps amplify that, hence the tolerances; `exact` demands bitwise equality."""
    rtol, atol = (0.0, 0.0) if exact else (1e-4, 1e-5)
    assert np.array_equal(_series(a, "train", "step"), _series(b, "train", "step"))
    np.testing.assert_allclose(_series(a, "train", "loss"), _series(b, "train", "loss"), rtol=rtol, atol=atol * 1e-2)
    torch.testing.assert_close(_theta(a), _theta(b), rtol=rtol, atol=atol)
    for col in probe_cols:
        np.testing.assert_allclose(_series(a, "probe", col), _series(b, "probe", col), rtol=max(rtol, 1e-6))


def test_lr_sweep_equals_separate_runs_with_per_copy_probes(tmp_path) -> None:
    """Conv model on CPU: rows are looped and each copy's rule is scalar, so ZO copies are bitwise equal."""
    # widths 6, 8: the first activation (6×28×28 floats) exceeds objective.VMAP_MAX_ACTIVATION, so rows loop
    base = TrainConfig(model="cnn", model_args={**TINY_CNN, "widths": [6, 8]}, optimizer="zo-gd", n_per_class=5,
                       steps=12, log_every=1, probe=["lambda_max"], probe_every=6, checkpoint_every=100,
                       out=str(tmp_path / "run.h5"))
    assert not build(base).objective.vectorizes_stacks
    lrs = [0.002, 0.005, 0.01]
    cfgs = sweep_configs(base, lrs=lrs)
    assert [c.out for c in cfgs] == [str(tmp_path / f"run-lr{lr:g}.h5") for lr in lrs]
    results = train_sweep(cfgs, progress=False)
    assert [r.status for r in results] == ["finished"] * 3
    finals = []
    for lr, res in zip(lrs, results):
        single = train(TrainConfig(**{**base.to_dict(), "lr": lr, "out": str(tmp_path / f"single-{lr}.h5")}),
                       progress=False)
        _assert_same_run(res.path, single.path, ("lambda_max",), exact=True)
        with h5py.File(res.path, "r") as f:
            assert f.attrs["status"] == "finished"
            assert '"lr": %r' % lr in f.attrs["config"] or f'"lr": {lr}' in f.attrs["config"]
            assert 0.0 <= f.attrs["probe_share"] <= 1.0
        finals.append(_theta(res.path))
    # the copies really differ (the test could fail if every copy were trained with the same η)
    assert not torch.allclose(finals[0], finals[2])


@pytest.mark.parametrize("preset,momenta", [("gdm", [0.5, 0.9]), ("zo-adam", [0.8, 0.9])])
def test_momentum_sweep_equals_separate_runs(preset, momenta, tmp_path) -> None:
    base = TrainConfig(model="mlp", model_args=TINY_MLP, optimizer=preset, lr=1e-3 if "adam" in preset else 0.02,
                       n_per_class=5, steps=10, log_every=1, probe=[], out=str(tmp_path / "m.h5"))
    cfgs = sweep_configs(base, momenta=momenta)
    results = train_sweep(cfgs, progress=False)
    for beta, res in zip(momenta, results):
        assert res.path.name == f"m-m{beta:g}.h5"
        single = train(TrainConfig(**{**base.to_dict(), "momentum": beta, "out": str(tmp_path / f"s{beta}.h5")}),
                       progress=False)
        _assert_same_run(res.path, single.path)
    assert not torch.allclose(_theta(results[0].path), _theta(results[1].path))


def test_a_diverging_copy_is_recorded_and_the_others_go_on(tmp_path) -> None:
    base = TrainConfig(model="mlp", model_args=TINY_MLP, optimizer="gd", n_per_class=5, steps=15, log_every=1,
                       probe=[], out=str(tmp_path / "d.h5"))
    results = train_sweep(sweep_configs(base, lrs=[0.05, 1e4, 0.1]), progress=False)
    assert [r.status for r in results] == ["finished", "diverged", "finished"]
    with h5py.File(results[1].path, "r") as f:
        assert f.attrs["status"] == "diverged" and f.attrs["stop_reason"]
        assert f["train/step"][-1] < 15
    for lr, res in ((0.05, results[0]), (0.1, results[2])):
        single = train(TrainConfig(**{**base.to_dict(), "lr": lr, "out": str(tmp_path / f"s{lr}.h5")}), progress=False)
        _assert_same_run(res.path, single.path)
        assert _series(res.path, "train", "step")[-1] == 15


def test_cli_sweep_writes_one_file_per_copy_and_names_them(tmp_path, capsys) -> None:
    out = tmp_path / "cli.h5"
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "mlp", "--model-arg", "hidden=[8]", "--n-per-class", "3", "--optimizer", "zo-gd",
              "--lr", "0.001,0.002", "--steps", "3", "--probe", "none", "--quiet", "--out", str(out)])
    printed = capsys.readouterr().out
    assert e.value.code == 0
    for name in ("cli-lr0.001.h5", "cli-lr0.002.h5"):
        assert (tmp_path / name).exists() and name in printed
    assert not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--lr", "0.1,abc"], "comma list"),
    (["--lr", "0.1,0.1"], "twice"),
    (["--lr", "0.1,-1"], "lr must be"),
    (["--momentum", "0.5,1.5", "--optimizer", "gdm"], "momentum"),
])
def test_bad_sweep_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--steps", "2", "--quiet", "--out", str(tmp_path / "x.h5"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ stacked evaluation
class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(6, 8)
        self.b = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _objective() -> Objective:
    torch.manual_seed(0)
    x = torch.randn(30, 6, dtype=torch.float64)
    return Objective(_Net().double(), x, torch.randint(0, 3, (30,)), num_classes=3)


@pytest.mark.parametrize("difference", ["central", "forward"])
def test_batched_queries_reproduce_the_query_loop(difference) -> None:
    obj = _objective()
    theta = obj.initial_theta()
    loop = TwoPointSource(queries=5, difference=difference, seed=3, query_mode="loop")
    batched = TwoPointSource(queries=5, difference=difference, seed=3, query_mode="batched")
    g_loop = loop(obj, theta, {}, step=7)[0].clone()
    g_batched = batched(obj, theta, {}, step=7)[0].clone()
    torch.testing.assert_close(g_batched, g_loop, rtol=1e-9, atol=1e-12)
    # an independent evaluation from the directions alone: g = (1/q) Σ_k [L(θ+μu_k) − L(θ−μu_k)]/(2μ) u_k
    gen = torch.Generator().manual_seed(0)
    from eos_probe.optim.sources import PURPOSE_DIRECTIONS, stream_seed

    gen.manual_seed(stream_seed(3, 7, PURPOSE_DIRECTIONS))
    us = [torch.randn(theta.shape, generator=gen, dtype=theta.dtype) for _ in range(5)]
    mu = 1e-3
    if difference == "central":
        ref = sum((obj.loss(theta + mu * u) - obj.loss(theta - mu * u)) / (2 * mu) * u for u in us) / 5
    else:
        ref = sum((obj.loss(theta + mu * u) - obj.loss(theta)) / mu * u for u in us) / 5
    torch.testing.assert_close(g_batched, ref, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(g_batched, loop(obj, theta, {}, step=8)[0])  # another step, other directions


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_shared_directions_give_each_row_the_single_run_estimate(mode) -> None:
    obj = _objective()
    theta = obj.initial_theta()
    rows = torch.stack([theta, theta * 0.5, theta + 0.1])
    single = TwoPointSource(queries=3, seed=5, query_mode=mode)
    stacked = TwoPointSource(queries=3, seed=5, query_mode=mode, shared_directions=True)
    g = stacked(obj, rows, {}, step=2)[0].clone()
    for k in range(3):
        torch.testing.assert_close(g[k], single(obj, rows[k].clone(), {}, step=2)[0], rtol=1e-9, atol=1e-12)
    # without sharing, rows draw independent directions (the Monte-Carlo default)
    independent = TwoPointSource(queries=3, seed=5, query_mode=mode)(obj, rows, {}, step=2)[0]
    assert not torch.allclose(independent[1], g[1])


def test_auto_microbatch_keeps_the_largest_activation_in_budget() -> None:
    from eos_probe.models import build_model

    model = build_model("cnn", input_shape=(1, 28, 28), num_classes=4, widths=[32, 8], hidden=16)
    x = torch.zeros(1000, 1, 28, 28)
    largest, total = activation_bytes(model, x)
    assert largest == 32 * 28 * 28 * 4  # the first conv's output, float32, per example
    mb = auto_microbatch(model, x)
    assert mb is not None and mb * largest <= AUTO_CHUNK_BYTES
    assert (1000 % mb == 0) or (-(-1000 // mb) * mb - 1000 < -(-1000 // mb))  # near-equal chunks
    small = build_model("mlp", input_shape=(1, 28, 28), num_classes=4, hidden=[8])
    assert auto_microbatch(small, x) is None  # small activations: one full-batch call
