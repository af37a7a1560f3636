"""`inspect` text a newcomer misread: 'last logged step -1', 'machine cpu: cpu', ZO settings of a GD run."""
from __future__ import annotations

from eos_probe.commands.inspect import render


def _summary(**kw):
    s = {"path": "runs/x.h5", "schema_version": 1, "status": "interrupted", "stop_reason": "", "stop_step": None,
         "config": {"model": "cnn", "optimizer": "gd", "lr": 0.05, "momentum": None, "queries": 1, "mu": 0.001,
                    "directions": "gaussian", "loss": "mse", "steps": 10, "seed": 0},
         "n_params": 100, "n_train": 10, "device": "cpu: cpu", "versions": {}, "resumed": 0, "steps_done": -1,
         "train_rows": 0, "probe_rows": 0, "metrics": [], "spectra": [], "band": {}}
    s.update(kw)
    return s


def test_empty_first_order_run_on_cpu() -> None:
    text = render(_summary())
    assert "-1" not in text and "no step logged yet" in text
    assert "cpu: cpu" not in text and "machine     cpu;" in text
    assert "queries" not in text and "mu=" not in text and "directions" not in text


def test_zo_run_keeps_its_settings_and_processor_name() -> None:
    cfg = {**_summary()["config"], "optimizer": "zo-gd"}
    text = render(_summary(config=cfg, steps_done=7, device="cpu: x86_64"))
    assert "last logged step 7" in text and "queries=1" in text and "mu=0.001" in text
    assert "machine     cpu (x86_64);" in text


def test_regression_run_shows_no_accuracy() -> None:
    train = {"step": 9, "loss": 0.25, "wall_time": 1.0}
    text = render(_summary(steps_done=9, train_rows=10, last_train=train, regression=True))
    assert "loss 0.25, 1.0 s" in text and "accuracy" not in text
    text = render(_summary(steps_done=9, train_rows=10, last_train={**train, "accuracy": 0.5}))
    assert "loss 0.25, accuracy 0.5, 1.0 s" in text
