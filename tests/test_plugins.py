"""Plug-in models (file.py:factory, module:factory, entry points) and .npz datasets, end to end through the CLI."""
from __future__ import annotations

import json
import textwrap

import h5py
import numpy as np
import pytest
import torch

from eos_probe.cli import main
from eos_probe.errors import UserError

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    def build(input_shape, num_outputs, hidden=6):
        d = 1
        for s in input_shape:
            d *= s
        return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, num_outputs))
''')


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(args)
    return int(e.value.code or 0)


@pytest.fixture
def plugin_files(tmp_path):
    (tmp_path / "mymodel.py").write_text(MODEL_FILE)
    g = np.random.default_rng(0)
    x = g.standard_normal((60, 5)).astype(np.float32)
    w = g.standard_normal((5, 2))
    np.savez(tmp_path / "reg.npz", x=x, y=(np.tanh(x @ w)).astype(np.float32),
             x_test=x[:10], y_test=np.tanh(x[:10] @ w).astype(np.float32))
    np.savez(tmp_path / "cls.npz", x=x, y=(x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0))
    return tmp_path


@pytest.mark.parametrize("data, loss", [("reg.npz", "mse"), ("cls.npz", "ce")])
def test_plugin_model_and_npz_train_probe_resume_plot(plugin_files, data, loss, capsys, one_thread) -> None:
    d = plugin_files
    out = d / "run.h5"
    common = ["--model", f"{d}/mymodel.py:build", "--model-arg", "hidden=4", "--data", str(d / data),
              "--loss", loss, "--optimizer", "gd", "--lr", "0.1", "--probe-every", "5", "--checkpoint-every", "5",
              "--probe", "lambda_max,trace", "--quiet", "--out", str(out)]
    assert _cli(["train", *common, "--steps", "10"]) == 0
    first = capsys.readouterr().out
    assert _cli(["train", "--resume", str(out), "--steps", "15", "--quiet"]) == 0
    # the summary counts the run's steps, then this session's; regression has no accuracy to print
    summary = capsys.readouterr().out
    assert "finished, 10 steps in " in first and "finished, 15 steps (5 in this session) in " in summary, summary
    assert ("accuracy" in summary) == (loss == "ce") and "nan" not in summary
    # the same run in one go: resuming continues the identical trajectory
    assert _cli(["train", *common, "--steps", "15", "--out", str(d / "once.h5")]) == 0
    with h5py.File(out) as f, h5py.File(d / "once.h5") as g:
        np.testing.assert_array_equal(f["train/loss"][:], g["train/loss"][:])
        np.testing.assert_array_equal(f["probe/lambda_max"][:], g["probe/lambda_max"][:])
        src = json.loads(f.attrs["model_source"])
        ds = json.loads(f.attrs["dataset"])
        assert f.attrs["resumed"] == 1 and list(f["probe/step"][:]) == [0, 5, 10, 15]
        assert np.all(np.isfinite(f["probe/lambda_max"][:])) and np.all(f["probe/trace"][:] > 0)
    import hashlib

    assert src["sha256"] == hashlib.sha256((d / "mymodel.py").read_bytes()).hexdigest()
    assert src["model_args"] == {"hidden": 4}
    assert ds["sha256"] == hashlib.sha256((d / data).read_bytes()).hexdigest()
    assert ds["task"] == ("regression" if loss == "mse" else "classification")
    assert ds["num_outputs"] == (2 if loss == "mse" else 4)
    fig = d / "fig.png"
    assert _cli(["plot", str(out), "--kind", "all", "--out", str(fig)]) == 0
    assert fig.stat().st_size > 1000
    capsys.readouterr()
    assert _cli(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert ("accuracy" in text) == (loss == "ce") and "up to step 15" in text, text
    # a changed model file makes --resume refuse (the run would no longer be one run)
    (d / "mymodel.py").write_text(MODEL_FILE + "\n# edited\n")
    capsys.readouterr()
    assert _cli(["train", "--resume", str(out), "--steps", "20", "--quiet"]) == 2
    assert "changed since the run started" in capsys.readouterr().err


def test_module_factory_and_entry_points(plugin_files, monkeypatch, one_thread) -> None:
    from importlib.metadata import EntryPoint

    from eos_probe.data.plugins import load_data_plugin
    from eos_probe.models.plugins import model_factory

    d = plugin_files
    monkeypatch.syspath_prepend(str(d))
    fn, prov = model_factory("mymodel:build")
    assert isinstance(fn((5,), 3), torch.nn.Module) and prov["sha256"]
    (d / "mydata.py").write_text("import numpy as np\n"
                                 "def load(n=20):\n"
                                 "    return {'x': np.ones((n, 5), np.float32), 'y': np.arange(n) % 3}\n")
    eps = [EntryPoint("tiny", "mymodel:build", "eos_probe.models"),
           EntryPoint("ones", "mydata:load", "eos_probe.datasets")]
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group=None: [e for e in eps if e.group == group])
    ds = load_data_plugin("ones", n=12)
    assert ds.n_train == 12 and ds.num_classes == 3 and ds.meta["entry_point"] == "mydata:load"
    assert _cli(["train", "--model", "tiny", "--data", "ones", "--optimizer", "gd", "--steps", "3", "--probe",
                 "none", "--quiet", "--out", str(d / "ep.h5")]) == 0
    with h5py.File(d / "ep.h5") as f:
        assert json.loads(f.attrs["model_source"])["entry_point"] == "mymodel:build"


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuch.py:build"], "model file nosuch.py does not exist"),
    (["--model", "{d}/mymodel.py:nope"], "has no 'nope'; callables defined there: build"),
    (["--model", "no_such_module_xyz:build"], "cannot import module 'no_such_module_xyz'"),
    (["--model", "{d}/mymodel.py:build", "--model-arg", "width=3"], "unexpected keyword argument 'width'"),
    (["--data", "missing.npz"], "data file missing.npz does not exist"),
    (["--data", "{d}/bad.npz"], "missing array(s) y"),
    (["--model", "{d}/mymodel.py:build", "--data", "{d}/reg.npz", "--loss", "ce"], "loss 'ce' takes integer class"),
])
def test_plugin_mistakes_are_one_line(plugin_files, args, message, capsys) -> None:
    d = plugin_files
    np.savez(d / "bad.npz", x=np.zeros((3, 2), np.float32))
    argv = ["train", "--steps", "1", "--quiet", "--out", str(d / "x.h5")] + [a.replace("{d}", str(d)) for a in args]
    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (d / "x.h5").exists()


def test_npz_loader_rules(tmp_path) -> None:
    from eos_probe.data.plugins import load_npz

    np.savez(tmp_path / "a.npz", x=np.zeros((4, 3)), y=np.array([0.5, 1.0, 2.0, 3.0]))
    ds = load_npz(tmp_path / "a.npz")
    assert ds.y_train.shape == (4, 1) and ds.num_classes == 1 and ds.x_train.dtype == torch.float32
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 3)), y=np.array([0, 1, 1, 0]), x_test=np.zeros((2, 3)))
    with pytest.raises(UserError, match="both x_test and y_test"):
        load_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 3)), y=np.array(["a", "b", "c", "d"]))
    with pytest.raises(UserError, match="y has dtype"):
        load_npz(tmp_path / "c.npz")


def test_default_run_file_name_of_a_plugin_model() -> None:
    """Found by the README test: a plug-in spec's / and : must not end up in the default file name."""
    from pathlib import Path

    from eos_probe.config import TrainConfig
    from eos_probe.train import default_out

    cfg = TrainConfig(model="path/to/mymodel.py:build", optimizer="gd", lr=0.1)
    assert default_out(cfg) == Path("runs/mymodel.build-gd-lr0.1-s0.h5")
    assert default_out(TrainConfig(model="cnn", optimizer="gd", lr=0.1)) == Path("runs/cnn-gd-lr0.1-s0.h5")
