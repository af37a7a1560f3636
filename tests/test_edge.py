"""`eos-probe edge`: predicted η* at a checkpoint vs the measured edge (quadratic model and network)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from eos_probe.config import TrainConfig
from eos_probe.errors import UserError
from eos_probe.sweep.edge import Spectrum, edge_experiment, find_checkpoint, predict, quadratic_edge
from eos_probe.train import train

TINY = dict(model="cnn", model_args={"widths": [2, 2], "hidden": 4}, n_per_class=5, device="cpu", dtype="float64",
            optimizer="zo-gd", lr=0.05, steps=10, probe_every=5, probe=["lambda_max"], checkpoint_every=10**6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("edge")
    train(TrainConfig(**TINY, keep_checkpoints_every=5, out=str(d / "r.h5")), progress=False)
    return d / "r.h5"


def test_kept_checkpoints_and_a_missing_step(run):
    assert find_checkpoint(run, 5)["step"] == 5 and find_checkpoint(run, 10)["step"] == 10
    assert find_checkpoint(run, 0)["step"] == 0
    with pytest.raises(UserError, match=r"no checkpoint at step 7 \(checkpoints at: 0, 5, 10\)"):
        find_checkpoint(run, 7)
    r = subprocess.run([sys.executable, "-m", "eos_probe.cli", "edge", str(run), "--step", "7"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no checkpoint at step 7" in r.stderr, r.stderr


def test_quadratic_model_matches_the_prediction_to_monte_carlo_accuracy():
    """The theory's own check: the measured edge of the optimizer on ½θᵀdiag(λ)θ brackets η*."""
    rng = np.random.default_rng(0)
    lam = np.sort(rng.gamma(0.5, 1.0, size=40))[::-1]
    for cfg in ({"optimizer": "zo-gd", "lr": 0.01, "queries": 1},
                {"optimizer": "zo-gdm", "lr": 0.01, "momentum": 0.5, "queries": 2}):
        eta, q = quadratic_edge(lam, cfg, start=1.1 * 2 / lam.sum(), seeds=256, steps=200, rounds=3)
        assert q.lo <= eta <= q.hi, (cfg, eta, q.lo, q.hi)
        assert q.hi / q.lo < 1.25  # an interval that can miss
        assert abs(q.edge / eta - 1) < 0.1


def test_top_k_interval_contains_the_full_spectrum_answer():
    """Top-k + trace: the interval from piling / spreading the tail must contain η* of the true spectrum."""
    from eos_probe.theory import critical_lr

    rng = np.random.default_rng(1)
    lam = np.sort(rng.gamma(0.3, 2.0, size=300))[::-1]
    true = critical_lr(lam, "zo-gd")
    spec = Spectrum("top-k + trace", 300, lam[:10].tolist(), [1e-6] * 10, float(lam.sum()), 0.01 * float(lam.sum()))
    eta, lo, hi = predict(spec, {"optimizer": "zo-gd", "lr": 0.01})
    assert lo <= true <= hi and lo < eta < hi
    assert hi / lo < 1.2


@pytest.mark.slow
def test_edge_end_to_end_on_a_tiny_network(run, tmp_path):
    res = edge_experiment(run, 10, quad_seeds=128, quad_steps=150, quad_rounds=2, seeds=2, horizon=20, rounds=1,
                          workers=1)
    assert res["predicted"]["method"] == "dense" and res["dim"] == 466
    p, q, n = res["predicted"], res["quadratic"], res["network"]
    assert p["lo"] == p["eta"] == p["hi"] > 0
    assert q["predicted_eta"] == pytest.approx(p["eta"], rel=1e-9)  # dense: the model is the spectrum itself
    assert q["agrees"] and q["lo"] <= p["eta"] <= q["hi"]
    assert 0 < n["lo"] < n["hi"] and n["ratio"] > 0 and len(n["tested"]) >= 3
    json.dumps(res)
