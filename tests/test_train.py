"""The trainer and `eos-probe train`: every model × preset runs, GD learns, runs are reproducible,
resume extends a run to the identical trajectory, divergence and bad input end cleanly."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from eos_probe.cli import main
from eos_probe.config import TrainConfig
from eos_probe.checkpoint import checkpoint_path
from eos_probe.train import train

TINY_CNN = {"widths": [4, 8], "hidden": 16}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


FAMILIES = ("mlp", "cnn", "resnet", "vit", "lstm", "mamba")


def _user_run(model: str, preset: str, out, capsys, model_args: tuple[str, ...] = (),
              steps: int = 3) -> tuple[int, str, str]:
    """`eos-probe train` as a user types it: not quiet, the default probe, due at steps 0 and 2."""
    args = ["train", "--model", model, "--optimizer", preset, "--steps", str(steps), "--probe-every", "2",
            "--out", str(out), *model_args]
    # little data: sequence models get 16 sort sequences, image models 4 images per class
    args += ["--n-per-class", "4"] if model not in ("lstm", "mamba") else ["--data-arg", "n_train=16"]
    return run_cli(args, capsys)


def _check_user_run(code: int, stdout: str, stderr: str, out, n_steps: int = 3) -> None:
    assert "Traceback" not in stdout + stderr, stdout + stderr
    if code != 0:  # a preset that cannot serve this model (zo-fc/hybrid groups) ends in one clear line
        assert code == 2 and stderr.strip().count("\n") == 0 and stderr.startswith("error:"), stderr
        return
    assert "probe cost:" in stdout + stderr  # the line printed after the first probe
    with h5py.File(out, "r") as f:
        steps = f["train/step"][()]
        assert steps[-1] == n_steps and np.all(np.diff(steps) > 0)
        assert np.all(np.isfinite(f["train/loss"][()]))
        assert f.attrs["status"] == "finished"
        assert list(f["probe/step"][()]) == sorted({0, 2, n_steps})  # due steps and the final one


@pytest.mark.parametrize("preset", __import__("eos_probe.presets", fromlist=["NAMES"]).NAMES)
def test_every_preset_runs_as_a_user_runs_it(preset, tmp_path, capsys) -> None:
    code, stdout, stderr = _user_run("cnn", preset, tmp_path / "run.h5", capsys,
                                     ("--model-arg", "widths=[4,8]", "--model-arg", "hidden=16"))
    _check_user_run(code, stdout, stderr, tmp_path / "run.h5")
    if preset not in ("zo-fc", "hybrid"):
        assert code == 0, stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", FAMILIES)
def test_every_preset_on_every_family_at_default_size_as_a_user_runs_it(model, tmp_path, capsys) -> None:
    """Two steps of each preset (probes at 0 and 2). CoCD and BCCD take block 32: their default block, 1 % of
    the parameters, is 2.9e3 coordinates on the default ResNet, 5.8e3 forwards and ~107 s a step on 2 cores;
    the default-block path is the one the tiny-CNN test above runs."""
    for preset in __import__("eos_probe.presets", fromlist=["NAMES"]).NAMES:
        out = tmp_path / f"{model}-{preset}.h5"
        extra = ("--cocd-block", "32") if preset in ("cocd", "bccd") else ()
        _check_user_run(*_user_run(model, preset, out, capsys, extra, steps=2), out, n_steps=2)


def test_gd_lowers_the_loss_of_the_cnn_on_real_data(tmp_path) -> None:
    cfg = TrainConfig(model="cnn", model_args=TINY_CNN, optimizer="gd", lr=0.1, steps=40, n_per_class=50,
                      out=str(tmp_path / "gd.h5"), probe=[])
    res = train(cfg, progress=False)
    with h5py.File(res.path, "r") as f:
        loss = f["train/loss"][()]
        acc = f["train/accuracy"][()]
        assert f.attrs["loss_convention"].startswith("0.5*sum_outputs")
        assert "fashion" in f.attrs["dataset"].lower()
    assert loss[-1] < 0.6 * loss[0]
    assert acc[-1] > 0.6  # four balanced classes: chance is 0.25


def _final_theta(path) -> torch.Tensor:
    return torch.load(checkpoint_path(path), weights_only=False)["theta"]


def test_same_seed_same_trajectory_and_resume_extends_identically(tmp_path) -> None:
    base = dict(model="cnn", model_args=TINY_CNN, optimizer="zo-gdm", lr=0.005, n_per_class=10, probe=[],
                checkpoint_every=4, log_every=1)
    full = train(TrainConfig(**base, steps=12, out=str(tmp_path / "full.h5")), progress=False)
    again = train(TrainConfig(**base, steps=12, out=str(tmp_path / "again.h5")), progress=False)
    assert torch.equal(_final_theta(full.path), _final_theta(again.path))
    short = train(TrainConfig(**base, steps=7, out=str(tmp_path / "short.h5")), progress=False)
    train(None, resume=short.path, steps=12, progress=False)
    assert torch.equal(_final_theta(full.path), _final_theta(short.path))
    with h5py.File(full.path, "r") as a, h5py.File(short.path, "r") as b:
        assert np.array_equal(a["train/step"][()], b["train/step"][()])
        assert np.array_equal(a["train/loss"][()], b["train/loss"][()])
        assert b.attrs["resumed"] == 1
    other = train(TrainConfig(**{**base, "seed": 1}, steps=12, out=str(tmp_path / "other.h5")), progress=False)
    assert not torch.equal(_final_theta(full.path), _final_theta(other.path))


def test_divergence_stops_cleanly_with_its_own_exit_code(tmp_path, capsys) -> None:
    out = tmp_path / "div.h5"
    code, _, err = run_cli(["train", "--model", "mlp", "--optimizer", "gd", "--lr", "1e4", "--steps", "50",
                            "--n-per-class", "10", "--probe", "none", "--quiet", "--out", str(out)], capsys)
    assert code == 3
    assert "diverged at step" in err and len(err.strip().splitlines()) == 1
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "diverged"
        assert f.attrs["stop_step"] >= 0
        assert f["train/step"].shape[0] >= 1  # what was logged before is kept


@pytest.mark.parametrize("args,needle", [
    (["--model", "transformerXL"], "unknown model"),
    (["--lr", "-0.1"], "lr must be"),
    (["--lr", "nan"], "lr"),
    (["--optimizer", "sgd"], "unknown optimizer"),
    (["--steps", "0"], "steps must be"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--data", "imagenet"], "imagenet"),
    (["--model", "lstm", "--data", "fashion4"], "sequence"),
    (["--model-arg", "hidden=-3"], "hidden"),
    (["--out", "/nonexistent/dir/run.h5"], "does not exist"),
    (["--config", "/nonexistent.toml"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--steps", "3", "--quiet", *args], capsys)
    assert code == 2, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert needle.lower() in err.lower(), err
    assert not any(tmp_path.rglob("*.h5"))  # nothing created


def test_bad_toml_and_existing_output(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "cnn"\nlearning_rate = 0.1\n')
    code, _, err = run_cli(["train", "--config", str(bad)], capsys)
    assert code == 2 and "learning_rate" in err
    bad.write_text('steps = "many"\n')
    code, _, err = run_cli(["train", "--config", str(bad)], capsys)
    assert code == 2 and "steps" in err
    bad.write_text('steps = [\n')
    code, _, err = run_cli(["train", "--config", str(bad)], capsys)
    assert code == 2 and "TOML" in err
    existing = tmp_path / "run.h5"
    existing.write_bytes(b"precious")
    code, _, err = run_cli(["train", "--out", str(existing), "--steps", "2"], capsys)
    assert code == 2 and "--overwrite" in err
    assert existing.read_bytes() == b"precious"


def test_threads_follow_the_free_cores_and_a_resume_keeps_the_runs_count(tmp_path, monkeypatch) -> None:
    from eos_probe import build, train as train_mod

    assert build.default_threads(cores=2, busy=0.1) == 2  # idle: every core (1.0-1.9x faster, benchmarks/threads.py)
    assert build.default_threads(cores=2, busy=1.0) == 1  # one busy process: two threads would wait on each other
    assert build.default_threads(cores=2, busy=3.0) == 1
    assert build.default_threads(cores=8, busy=2.4) == 6
    assert 0.0 <= build.busy_cores() <= build.usable_cores() + 0.5
    cfg = TrainConfig(model="mlp", model_args={"hidden": [8]}, n_per_class=4, optimizer="zo-gd", lr=1e-3, steps=3,
                      probe=[], out=str(tmp_path / "r.h5"))
    monkeypatch.setattr(train_mod, "default_threads", lambda: 1)
    train(cfg, progress=False)
    monkeypatch.setattr(train_mod, "default_threads", lambda: 2)  # the machine is idle now
    train(None, resume=tmp_path / "r.h5", steps=6, progress=False)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert int(f.attrs["threads"]) == 1
