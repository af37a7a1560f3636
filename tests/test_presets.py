"""The presets: one place that says what each optimizer is, and the protocols the optimizers speak."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from eos_probe import optim, presets, theory
from eos_probe.config import TrainConfig, validate
from eos_probe.errors import InvalidValueError, UserError
from eos_probe.optim.protocols import StackedGradients
from eos_probe.optim.rules import GD, HeavyBall


def test_every_optimizer_has_one_preset_and_the_derived_tables_agree() -> None:
    assert tuple(presets.PRESETS) == presets.NAMES
    assert tuple(n for n, p in presets.PRESETS.items() if p.source == "cocd") == ("cocd", "bccd")
    assert theory.OPTIMIZERS == ("zo-gd", "zo-gdm", "zo-adam", "gd", "gdm", "adam")
    assert {n: presets.PRESETS[n].momentum for n in theory.OPTIMIZERS} == {
        "zo-gd": 0.0, "gd": 0.0, "zo-gdm": 0.9, "gdm": 0.9, "zo-adam": 0.9, "adam": 0.9}
    for name, p in presets.PRESETS.items():
        if p.base or p.grouped or p.source == "rise":  # shaped/grouped presets: tests/test_rise.py, test_hybrid.py
            continue
        assert p.family == name.removeprefix("zo-")
        assert p.zeroth_order == (name.startswith("zo-") or name in ("cocd", "bccd"))
        assert p.preconditioned == name.endswith("adam")
        assert p.takes_momentum == (p.family in ("gdm", "adam"))
        assert p.fo_twin in presets.PRESETS and not presets.PRESETS[p.fo_twin].zeroth_order
        opt = optim.make_optimizer(name, lr=p.lr)
        assert opt.zeroth_order == p.zeroth_order
        assert (opt.preconditioner(opt.init(torch.zeros(3))) is not None) == p.preconditioned


def test_unknown_preset_and_momentum_errors_are_invalid_values_with_the_old_messages() -> None:
    with pytest.raises(InvalidValueError, match="unknown optimizer 'sgd'; choose one of gd, gdm, adam"):
        presets.preset("sgd")
    with pytest.raises(InvalidValueError, match=r"optimizer zo-gd takes no momentum \(got 0.5\); use zo-gdm"):
        optim.make_optimizer("zo-gd", lr=1e-3, momentum=0.5)
    with pytest.raises(InvalidValueError, match=r"optimizer cocd takes no momentum \(got 0.5\)$"):
        validate(TrainConfig(optimizer="cocd", momentum=0.5))
    with pytest.raises(UserError, match="lr must be a positive finite number, got -1"):
        validate(TrainConfig(optimizer="gd", lr=-1.0))
    with pytest.raises(ValueError, match="has no momentum"):  # the theory's wording, also a ValueError
        theory.band(1e-3, "gd", momentum=0.5)


def test_setting_from_config_resolves_preset_defaults() -> None:
    cfg = {"optimizer": "zo-adam", "lr": 1e-3, "queries": 2, "momentum": None, "momentum_style": "heavy_ball",
           "directions": "sphere"}
    s = theory.Setting.from_config(cfg, 50)
    assert (s.optimizer, s.lr, s.momentum, s.momentum_style, s.dim) == ("zo-adam", 1e-3, 0.9, "ema", 50)
    assert s.kwargs()["queries"] == 2 and s.kwargs()["directions"] == "sphere"
    s = theory.Setting.from_config({"optimizer": "cocd", "lr": 0.01, "momentum": None})
    assert (s.optimizer, s.momentum) == ("gd", 0.0)
    assert theory.band_for({"optimizer": "bccd", "lr": 0.01}).optimizer == "bccd"
    assert theory.Setting.from_config({"optimizer": "zo-gdm"}).lr == presets.preset("zo-gdm").lr


def test_ms_term_function_is_ms_terms_continued_by_zero() -> None:
    f = theory.ms_term_function({"optimizer": "zo-gdm", "lr": 1e-3, "momentum": 0.5}, 10)
    lam = np.array([-3.0, 0.0, 1.0, 50.0])
    want = theory.ms_terms(np.maximum(lam, 0.0), 1e-3, "zo-gdm", momentum=0.5)
    np.testing.assert_array_equal(f(lam), want)
    assert f(lam)[0] == 0.0


def test_rules_report_their_preconditioner_and_state_keeps_the_direction() -> None:
    from eos_probe.data.quadratic import QuadraticObjective

    assert GD(0.1).preconditioner({}) is None
    assert HeavyBall(0.1).preconditioner({"m": torch.zeros(2)}) is None
    obj = QuadraticObjective([1.0, 2.0, 3.0])
    assert isinstance(obj, StackedGradients)
    for name in ("gd", "zo-gdm", "adam"):
        opt = optim.make_optimizer(name, lr=1e-2, seed=1)
        theta = torch.ones(2, 3, dtype=torch.float64)
        state = opt.init(theta)
        assert not bool(state["update"]["direction"].any())
        opt.step(obj, theta, state, 0)
        g = optim.Optimizer.direction(state)
        assert torch.equal(g, opt.last_direction) and g is not opt.last_direction  # a copy, not the buffer
    assert optim.Optimizer.direction({"source": {}, "rule": {}}) is None


def _digests(path: Path, groups=("train", "probe")) -> dict[str, str]:
    out = {}
    with h5py.File(path, "r", locking=False) as f:
        for g in groups:
            for k, ds in f[g].items():
                if k not in ("wall_time", "seconds"):
                    out[f"{g}/{k}"] = hashlib.sha256(np.ascontiguousarray(ds[()]).tobytes()).hexdigest()
    return out


def test_checkpoint_without_the_direction_still_resumes(tmp_path: Path, one_thread) -> None:
    """A checkpoint written before the direction was optimizer state resumes to the same run file."""
    from eos_probe.checkpoint import checkpoint_path
    from eos_probe.train import train

    cfg = TrainConfig(model="mlp", model_args={"hidden": [8]}, n_per_class=4, optimizer="zo-gdm", lr=1e-4,
                      steps=4, log_every=1, probe_every=2, probe=["dir_curvature", "lambda_max"], seed=2,
                      device="cpu", checkpoint_every=2, out=str(tmp_path / "a" / "r.h5"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train(cfg, progress=False)
    for p in (tmp_path / "a").iterdir():
        shutil.copy(p, tmp_path / "b" / p.name)
    old = checkpoint_path(tmp_path / "b" / "r.h5")
    ck = torch.load(old, weights_only=False)
    assert "update" in ck["state"] and "last_direction" not in ck["probe"]
    # before the direction was optimizer state, the probe's own checkpoint state carried it
    ck["probe"]["last_direction"] = ck["state"].pop("update")["direction"].clone()
    torch.save(ck, old)
    a = train(None, resume=tmp_path / "a" / "r.h5", steps=8, progress=False)
    b = train(None, resume=tmp_path / "b" / "r.h5", steps=8, progress=False)
    assert a.status == b.status == "finished"
    assert _digests(a.path) == _digests(b.path)
