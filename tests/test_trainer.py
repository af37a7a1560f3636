"""The trainer's parts on their own: the hook-driven loop's call order and unwinding, a custom hook on a real
run, dropping copies from a stack, and the package not importing `eos_probe.train` (no cycle)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eos_probe.config import TrainConfig
from eos_probe.interrupt import RunInterrupted
from eos_probe.optim import make_optimizer
from eos_probe.trainer.copies import CopyStack
from eos_probe.trainer.hooks import Hook, StepContext
from eos_probe.trainer.loop import run_loop


class _Stack:
    """A stand-in for CopyStack: one copy, an update that counts."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.alive, self.updates, self.fail_at = [0], [], fail_at

    def step(self, objective, step: int) -> dict:
        if step == self.fail_at:
            raise RuntimeError("boom")
        self.updates.append(step)
        return {}


class _Record(Hook):
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def before_step(self, ctx: StepContext) -> None:
        self.log.append((self.name, "before", ctx.step, ctx.final))

    def after_step(self, ctx: StepContext) -> None:
        self.log.append((self.name, "after", ctx.step, ctx.info is not None))

    def end(self, ctx: StepContext) -> None:
        self.log.append((self.name, "end"))

    def interrupted(self, ctx: StepContext, exc: RunInterrupted) -> None:
        self.log.append((self.name, "interrupted", ctx.step))

    def failed(self, ctx: StepContext) -> None:
        self.log.append((self.name, "failed", ctx.step))


def _ctx(stack, start: int = 0, steps: int = 2) -> StepContext:
    return StepContext(stack, [], None, start, steps, 0.0)


def test_loop_calls_hooks_in_order_and_updates_all_but_the_final_step() -> None:
    log: list = []
    stack = _Stack()
    run_loop(_ctx(stack, start=1, steps=3), [_Record("a", log), _Record("b", log)])
    assert stack.updates == [1, 2]
    assert log == [("a", "before", 1, False), ("b", "before", 1, False), ("a", "after", 1, True), ("b", "after", 1, True),
                   ("a", "before", 2, False), ("b", "before", 2, False), ("a", "after", 2, True), ("b", "after", 2, True),
                   ("a", "before", 3, True), ("b", "before", 3, True), ("a", "after", 3, False), ("b", "after", 3, False),
                   ("a", "end"), ("b", "end")]


def test_loop_unwinds_in_reverse_order_on_failure_and_on_a_signal() -> None:
    log: list = []
    with pytest.raises(RuntimeError, match="boom"):
        run_loop(_ctx(_Stack(fail_at=1)), [_Record("a", log), _Record("b", log)])
    assert log[-2:] == [("b", "failed", 1), ("a", "failed", 1)]

    class _Signal(Hook):
        def before_step(self, ctx: StepContext) -> None:
            if ctx.step == 2:
                raise RunInterrupted(2)

    log.clear()
    with pytest.raises(RunInterrupted):
        run_loop(_ctx(_Stack()), [_Record("a", log), _Signal(), _Record("b", log)])
    assert log[-2:] == [("b", "interrupted", 2), ("a", "interrupted", 2)]


def test_loop_stops_when_every_copy_is_dropped() -> None:
    class _DropAll(Hook):
        def after_step(self, ctx: StepContext) -> None:
            ctx.stack.alive.clear()

    log: list = []
    stack = _Stack()
    run_loop(_ctx(stack, steps=5), [_DropAll(), _Record("a", log)])
    assert stack.updates == [0] and log[-1] == ("a", "end")


def test_drop_keeps_the_other_copies_rows() -> None:
    opts = [make_optimizer("gdm", lr=lr, momentum=0.9) for lr in (0.1, 0.2, 0.3)]
    stack = CopyStack(torch.arange(4.0), opts)
    stack.theta += torch.arange(3.0)[:, None]
    for part in stack.state.values():
        for t in part.values():
            t += torch.arange(3.0).view(-1, *[1] * (t.dim() - 1))
    before = [stack.view(i) for i in range(3)]
    before = [(th.clone(), {p: {n: t.clone() for n, t in v.items()} for p, v in st.items()}) for th, st in before]
    stack.drop([1])
    assert stack.alive == [0, 2]
    for i, j in enumerate(stack.alive):
        th, st = stack.view(i)
        assert torch.equal(th, before[j][0])
        for p, v in st.items():
            for n, t in v.items():
                assert torch.equal(t, before[j][1][p][n])
    assert stack.probe_view(1)[2] is opts[2]


def test_a_custom_hook_sees_every_logged_step_of_a_real_run(tmp_path: Path, monkeypatch) -> None:
    """A new per-step measurement plugs in as a hook; the standard ones are untouched."""
    import eos_probe.train as train_mod
    from eos_probe.trainer import hooks

    seen: list[tuple[int, float]] = []

    class _Watch(Hook):
        def after_step(self, ctx: StepContext) -> None:
            if ctx.log_due:
                seen.append((ctx.step, ctx.files[0].last[0]))

    real = hooks.ProgressHook

    class _WithWatch(real):  # the last standard hook; a custom one rides along with it
        def after_step(self, ctx: StepContext) -> None:
            super().after_step(ctx)
            _Watch().after_step(ctx)

    monkeypatch.setattr(train_mod, "ProgressHook", _WithWatch)
    cfg = TrainConfig(model="mlp", model_args={"hidden": [6]}, n_per_class=3, optimizer="gd", lr=0.05, steps=3,
                      log_every=1, probe=[], device="cpu", out=str(tmp_path / "a.h5"))
    res = train_mod.train(cfg, progress=False)
    assert [s for s, _ in seen] == [0, 1, 2, 3] and seen[-1][1] == res.final_loss


def test_the_trainer_package_never_imports_the_train_module() -> None:
    code = ("import sys, eos_probe.trainer.loop, eos_probe.trainer.hooks, eos_probe.trainer.runfile, "
            "eos_probe.trainer.copies; assert 'eos_probe.train' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_loop_stays_short() -> None:
    import eos_probe.trainer.loop as loop

    tree = ast.parse(Path(loop.__file__).read_text())
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run_loop"]
    assert fn.end_lineno - fn.lineno + 1 <= 60


@pytest.mark.parametrize("regression", [False, True])
def test_progress_bar_shows_accuracy_for_classification_only(regression: bool) -> None:
    """Regression runs (float targets) log NaN accuracy; the bar must not print `acc nan`."""
    from types import SimpleNamespace

    from eos_probe.trainer.hooks import ProgressHook

    shown: list[str] = []
    bar = SimpleNamespace(set_postfix_str=lambda s, refresh=True: shown.append(s), update=lambda n=1: None)
    stack = SimpleNamespace(alive=[0], stacked=False)
    file = SimpleNamespace(last=(0.25, float("nan") if regression else 0.5))
    obj = SimpleNamespace(loss_spec=SimpleNamespace(regression=regression))
    ctx = StepContext(stack, [file], obj, 0, 2, 0.0, log_due=True)
    ProgressHook(bar).after_step(ctx)
    assert shown == (["loss 0.25"] if regression else ["loss 0.25 acc 0.500"])
