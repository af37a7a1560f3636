"""Task sequences (eos_probe.tasks, trainer/tasks.py): the schedule, bad input, the accuracy table against an
independent evaluation of the saved θ, old-class logit masking against a hand-written loss and GD step,
init_from, bitwise resume mid-sequence, `run.tasks` and `--kind tasks`."""
from __future__ import annotations

import math

import signal
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eos_probe
import eos_probe.train as train_mod
from eos_probe.build import build
from eos_probe.cli import main
from eos_probe.config import TrainConfig, validate
from eos_probe.data import load_dataset
from eos_probe.errors import UserError
from eos_probe.interrupt import RunInterrupted
from eos_probe.models import build_model
from eos_probe.tasks import TaskSchedule, parse_tasks, summary

N_TEST = 12
BASE = dict(model="mlp", model_args={"hidden": [8]}, n_per_class=5, data_args={"n_test_per_class": N_TEST},
            loss="ce", optimizer="gd", lr=0.5, tasks="0,1;2,3", task_steps=[4, 3], log_every=1, probe=[],
            device="cpu", seed=0)


def _cfg(tmp_path: Path, name: str = "a.h5", **kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "out": str(tmp_path / name), **kw})


def _theta(path: Path, step: int) -> torch.Tensor:
    return torch.load(f"{path}.step{step}.ckpt", weights_only=False)["theta"]


# ------------------------------------------------------------------------------------------ the schedule
def test_schedule_boundaries_task_at_progress_and_zero_step_tasks() -> None:
    s = TaskSchedule(parse_tasks("0;1,2;3;4"), (0, 3, 0, 2))
    assert s.boundaries == [0, 0, 3, 3, 5] and s.total == 5
    assert [s.task_at(k) for k in range(6)] == [1, 1, 1, 3, 3, 3]  # 0-step tasks own no step; T -> last
    assert [s.progress(k) for k in range(5)] == [0.0, 1 / 3, 2 / 3, 0.0, 0.5]
    assert s.ending_at(0) == [0] and s.ending_at(3) == [1, 2] and s.ending_at(5) == [3] and s.ending_at(4) == []
    plain = TaskSchedule.from_config(TrainConfig(steps=10))
    assert not plain.active and plain.total == 10 and plain.progress(4) == 0.4
    assert parse_tasks([[0, 1], [2, 3]]) == parse_tasks(" 0, 1 ; 2,3 ") == ((0, 1), (2, 3))


def test_mask_default_is_on_for_ce_only_and_task_steps_default_to_steps() -> None:
    ce = validate(TrainConfig(tasks="0,1;2,3", loss="ce", steps=7))
    assert ce.mask_old_logits is True and ce.task_steps == [7, 7] and ce.tasks == [[0, 1], [2, 3]]
    assert validate(TrainConfig(tasks="0,1;2,3", loss="mse")).mask_old_logits is False
    assert validate(TrainConfig(tasks="0,1;2,3", loss="ce", mask_old_logits=False)).mask_old_logits is False


TRAIN = ["train", "--model", "mlp", "--n-per-class", "3", "--steps", "2", "--quiet", "--probe", "none"]


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "0,1;1,2"], "more than one task"),
    (["--tasks", "0,1;"], "task 1 is empty"),
    (["--tasks", ";"], "empty"),
    (["--tasks", "0,a"], "not a class index"),
    (["--tasks", "0,1;2,7"], "classes 0-3"),
    (["--tasks", "0,1;2,3", "--task-steps", "3"], "one per task"),
    (["--tasks", "0,1;2,3", "--task-steps", "3,-1"], "non-negative"),
    (["--tasks", "0,1;2,3", "--task-steps", "0,0"], "nothing to train"),
    (["--task-steps", "3"], "give tasks"),
    (["--tasks", "0,1;2,3", "--classes", "0,1,2"], "does not load"),
    (["--tasks", "0;1", "--init-from", "missing.h5"], "does not exist"),
])
def test_bad_task_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(TRAIN + ["--out", "x.h5"] + args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle.lower() in err.lower(), err
    assert not (tmp_path / "x.h5").exists()


# ------------------------------------------------------------------------------------------ the table
def _independent(theta: torch.Tensor, seen: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, loss) of θ on each task's test split: a fresh model, plain forward, F.cross_entropy over the
    first `seen` outputs (a class-incremental head after task t has the classes of tasks 0..t; a class without
    an output gets accuracy 0 and loss inf)."""
    ds = load_dataset("fashion4", n_per_class=5, classes=[0, 1, 2, 3], n_test_per_class=N_TEST)
    model = build_model("mlp", input_shape=tuple(ds.input_shape), num_classes=4, seed=0, hidden=[8])
    torch.nn.utils.vector_to_parameters(theta, model.parameters())
    acc, loss = [], []
    with torch.no_grad():
        for labels in ([0, 1], [2, 3]):
            keep = torch.isin(ds.y_test, torch.tensor(labels))
            assert int(keep.sum()) == 2 * N_TEST
            out = model(ds.x_test[keep])[:, :seen]
            acc.append(float((out.argmax(1) == ds.y_test[keep]).double().mean()))
            loss.append(float(F.cross_entropy(out.double(), ds.y_test[keep])) if max(labels) < seen else math.inf)
    return np.array(acc), np.array(loss)


def test_table_matches_an_independent_evaluation_of_the_saved_theta(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, keep_checkpoints_every=1)
    train_mod.train(cfg, progress=False)
    path = tmp_path / "a.h5"
    with h5py.File(path, "r") as f:
        acc, loss = f["tasks/accuracy"][()], f["tasks/loss"][()]
        assert list(f["tasks/boundaries"][()]) == [0, 4, 7] and list(f["tasks/test_examples"][()]) == [24, 24]
        attrs = dict(f["tasks"].attrs)
    for row, step in enumerate((4, 7)):
        a, l = _independent(_theta(path, step), seen=2 * (row + 1))
        np.testing.assert_allclose(acc[row], a, atol=1e-6)
        np.testing.assert_allclose(loss[row], l, rtol=1e-5)
    # THEORY §5b, written out for T = 2
    assert attrs["last_accuracy"] == pytest.approx((acc[1, 0] + acc[1, 1]) / 2)
    assert attrs["average_accuracy"] == pytest.approx((acc[0, 0] + (acc[1, 0] + acc[1, 1]) / 2) / 2)
    assert attrs["forgetting"] == pytest.approx(acc[0, 0] - acc[1, 0])
    run = eos_probe.load(path)
    df = run.tasks
    assert list(df.columns) == ["after", "task", "step", "accuracy", "loss", "classes"] and len(df) == 4
    np.testing.assert_array_equal(df.pivot(index="after", columns="task", values="accuracy").to_numpy(), acc)
    assert list(df["classes"]) == ["0,1", "2,3", "0,1", "2,3"] and list(df["step"]) == [4, 4, 7, 7]
    assert df.attrs["forgetting"] == pytest.approx(attrs["forgetting"])
    assert eos_probe.load(tmp_path / "a.h5").attrs.get("init_from") is None


def test_old_class_logits_are_out_of_the_loss_and_the_gradient(tmp_path: Path) -> None:
    """The logged loss during task 0 against CE on logits 0, 1 only (later classes have no output yet), at the
    first step of task 1 and the GD step taken there against CE on logits 2, 3 only."""
    cfg = _cfg(tmp_path, keep_checkpoints_every=1)
    train_mod.train(cfg, progress=False)
    path = tmp_path / "a.h5"
    ds = load_dataset("fashion4", n_per_class=5, classes=[0, 1, 2, 3])
    model = build_model("mlp", input_shape=tuple(ds.input_shape), num_classes=4, seed=0, hidden=[8])

    def task_loss(theta: torch.Tensor, labels: list[int], masked: bool) -> torch.Tensor:
        params, off = {}, 0
        for n, p in model.named_parameters():
            params[n] = theta[off:off + p.numel()].view_as(p)
            off += p.numel()
        keep = torch.isin(ds.y_train, torch.tensor(labels))
        out = torch.func.functional_call(model, params, (ds.x_train[keep],))
        y = ds.y_train[keep]
        lo = min(labels)
        return F.cross_entropy(out[:, lo:lo + 2], y - lo) if masked else F.cross_entropy(out, y)

    logged = eos_probe.load(path).train.set_index("step")["loss"]
    th3, th4, th5 = _theta(path, 3), _theta(path, 4), _theta(path, 5)
    assert logged[3] == pytest.approx(float(task_loss(th3, [0, 1], True)), rel=1e-5)
    assert logged[3] != pytest.approx(float(task_loss(th3, [0, 1], False)), rel=1e-3)  # the mask matters
    assert logged[4] == pytest.approx(float(task_loss(th4, [2, 3], True)), rel=1e-5)
    g = torch.func.grad(lambda t: task_loss(t, [2, 3], True))(th4)
    torch.testing.assert_close(th5, th4 - 0.5 * g, atol=1e-6, rtol=1e-5)
    bias = list(model.named_parameters())[-1][1].numel()
    assert torch.equal(th5[-bias:][:2], th4[-bias:][:2])  # the old classes' output biases did not move
    th1, th2 = _theta(path, 1), _theta(path, 2)
    assert torch.equal(th2[-bias:][2:], th1[-bias:][2:])  # nor did the later classes' during task 0


def test_retention_and_task_follow_the_data_swap(tmp_path: Path) -> None:
    setup = build(_cfg(tmp_path))
    obj, data = setup.objective, setup.tasks
    data.apply(obj, 0)
    assert obj.task == 0 and obj.retention is None and obj.output_mask.tolist() == [True, True, False, False]
    assert set(obj.y.tolist()) == {0, 1}
    data.apply(obj, 1)
    assert obj.task == 1 and set(obj.y.tolist()) == {2, 3} and obj.output_mask.tolist() == [False, False, True, True]
    ret = obj.retention
    x0, y0 = data.train([0])
    assert torch.equal(ret.x, x0) and torch.equal(ret.y, y0) and ret.output_mask is None
    assert float(ret.loss(setup.theta)) == pytest.approx(float(obj.evaluate(setup.theta, x0, y0)[0]), rel=1e-6)


# ------------------------------------------------------------------------------------------ resume, init_from
def _datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     and not n.endswith("wall_time") else None)
    return out


@pytest.mark.parametrize("stop", [2, 4, 6])  # mid task 0, at the boundary, mid task 1
def test_resume_mid_sequence_is_bitwise(stop: int, tmp_path: Path, monkeypatch) -> None:
    kw = dict(optimizer="zo-gd", lr=0.01, queries=2)
    train_mod.train(_cfg(tmp_path, "full.h5", **kw), progress=False)

    class _StopAt(train_mod.InterruptHook):
        def before_step(self, ctx) -> None:
            if ctx.step == stop and not getattr(_StopAt, "done", False):
                _StopAt.done = True
                raise RunInterrupted(signal.SIGINT)

    monkeypatch.setattr(train_mod, "InterruptHook", _StopAt)
    with pytest.raises(RunInterrupted):
        train_mod.train(_cfg(tmp_path, "cut.h5", **kw), progress=False)
    assert np.isnan(h5py.File(tmp_path / "cut.h5", "r")["tasks/accuracy"][()][1]).all()
    train_mod.train(None, resume=tmp_path / "cut.h5", progress=False)
    full, cut = _datasets(tmp_path / "full.h5"), _datasets(tmp_path / "cut.h5")
    assert full.keys() == cut.keys() and "tasks/accuracy" in full
    for k in full:
        np.testing.assert_array_equal(cut[k], full[k], err_msg=k)
    assert torch.equal(torch.load(tmp_path / "cut.h5.ckpt", weights_only=False)["theta"],
                       torch.load(tmp_path / "full.h5.ckpt", weights_only=False)["theta"])


def test_init_from_continues_a_sequence_another_run_began(tmp_path: Path) -> None:
    train_mod.train(_cfg(tmp_path, "whole.h5"), progress=False)
    train_mod.train(_cfg(tmp_path, "first.h5", task_steps=[4, 0]), progress=False)
    train_mod.train(_cfg(tmp_path, "second.h5", task_steps=[0, 3], init_from=str(tmp_path / "first.h5")),
                    progress=False)
    whole, first, second = (eos_probe.load(tmp_path / n) for n in ("whole.h5", "first.h5", "second.h5"))
    a = whole.tasks.pivot(index="after", columns="task", values="accuracy").to_numpy()
    b = second.tasks.pivot(index="after", columns="task", values="accuracy").to_numpy()
    np.testing.assert_allclose(b, a, atol=1e-6)  # row 0 of `second` is θ_0 = the end of `first`'s task 0
    assert list(second.tasks["step"]) == [0, 0, 3, 3]
    assert second.attrs["init_from"]["run_id"] == first.attrs["run_id"]
    assert second.attrs["init_from"]["step"] == 4
    assert second.tasks.attrs["forgetting"] == pytest.approx(whole.tasks.attrs["forgetting"], abs=1e-6)
    with pytest.raises(UserError, match="parameters"):
        build(_cfg(tmp_path, model_args={"hidden": [9]}, init_from=str(tmp_path / "first.h5")))


def test_resume_refuses_new_steps_for_a_task_run(tmp_path: Path) -> None:
    train_mod.train(_cfg(tmp_path), progress=False)
    with pytest.raises(UserError, match="task_steps"):
        train_mod.train(None, resume=tmp_path / "a.h5", steps=20, progress=False)


def test_summary_follows_theory_5b() -> None:
    acc = np.array([[0.9, 0.1, 0.0], [0.7, 0.8, 0.2], [0.6, 0.5, 0.9]])
    s = summary(acc)
    assert s["last_accuracy"] == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    assert s["average_accuracy"] == pytest.approx((0.9 + 0.75 + (0.6 + 0.5 + 0.9) / 3) / 3)
    assert s["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.5)) / 2)
    acc[2, 1] = np.nan
    assert np.isnan(summary(acc)["forgetting"])


def test_plot_kind_tasks(tmp_path: Path) -> None:
    from eos_probe.plot import make_figure

    train_mod.train(_cfg(tmp_path), progress=False)
    out = make_figure([tmp_path / "a.h5"], "tasks", tmp_path / "t.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    train_mod.train(replace(_cfg(tmp_path, "plain.h5"), tasks=None, task_steps=None, steps=2), progress=False)
    with pytest.raises(UserError, match="no task table"):
        make_figure([tmp_path / "plain.h5"], "tasks", tmp_path / "u.png")
