"""The probe's schedules (eos_probe.probe.schedule): fixed every N steps, or a wall-time budget with triggers.

The budget schedule is driven here by a fake clock, so the share it spends and the steps it picks are exact:
a quiet run spends its budget F at the budget's pace, a trigger (a monitor shift, a raw spike, a loss jump)
gets a probe at once when the balance allows and a tracking step otherwise, and the bracket is tracked densely
near the edge."""
from __future__ import annotations

import math

import numpy as np
import pytest

from eos_probe.probe.schedule import TRACK_MIN, BudgetSchedule, FixedSchedule, make_schedule
from eos_probe.theory import ms_term_function
from eos_probe.theory.bracket import s_bracket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def simulate(sched: BudgetSchedule, clock: Clock, steps: int, *, step_s: float, probe_s: float, track_s: float,
             events: dict[int, tuple] | None = None, S: float = 0.5) -> dict[str, list]:
    """Drive a schedule as the trainer does: per step due → probe, track_due → track, a training step, observe."""
    out = {"probe": [], "reason": [], "track": []}
    events = events or {}
    for step in range(steps + 1):
        final = step == steps
        reason = sched.due(step, final)
        if reason is not None:
            clock.t += probe_s
            sched.charged(probe_s, "probe", step, {"ms_margin": S, "ms_margin_err": 0.01})
            out["probe"].append(step)
            out["reason"].append(reason)
        elif sched.track_due(step):
            clock.t += track_s
            sched.charged(track_s, "track", step, {"s_lo": 0.9 * S, "s_hi": 1.7 * S})
            out["track"].append(step)
        if final:
            break
        clock.t += step_s
        loss, mon = events.get(step, (1.0, {"zo_trace": 10.0, "zo_trace_err": 0.5, "zo_trace_raw": 10.0,
                                            "noise_sd": 2.0}))
        sched.observe(step, loss, mon)
    out["share"] = (sched.spent / clock.t)
    return out


def test_fixed_schedule_probes_every_n_steps_and_the_last() -> None:
    s = FixedSchedule(10)
    assert [t for t in range(35) if s.due(t, t == 34)] == [0, 10, 20, 30, 34]
    assert not s.track_due(5)
    assert isinstance(make_schedule(7, None, 1), FixedSchedule)
    assert isinstance(make_schedule("auto", 0.3, 1), BudgetSchedule)


@pytest.mark.parametrize("budget", [0.1, 0.2, 0.4])
def test_a_quiet_run_spends_its_budget(budget) -> None:
    clock = Clock()
    sched = BudgetSchedule(budget, log_every=10, clock=clock)
    out = simulate(sched, clock, 20000, step_s=0.01, probe_s=1.0, track_s=0.04)
    assert out["probe"][0] == 0 and out["reason"][0] == "first"
    assert abs(out["share"] - budget) < 0.03, out["share"]
    assert set(out["reason"][1:]) <= {"budget", "final"}
    assert len(out["track"]) > 5  # the bracket is tracked between certified probes


def test_a_trigger_gets_a_probe_at_once_when_affordable_and_a_tracking_step_otherwise() -> None:
    calm = (1.0, {"zo_trace": 10.0, "zo_trace_err": 0.5, "zo_trace_raw": 10.0, "noise_sd": 2.0})
    spike = (1.0, {"zo_trace": 11.0, "zo_trace_err": 0.5, "zo_trace_raw": 40.0, "noise_sd": 2.0})
    shift = (1.0, {"zo_trace": 20.0, "zo_trace_err": 0.5, "zo_trace_raw": 20.0, "noise_sd": 2.0})
    jump = (1.5, calm[1])
    for event, name in ((spike, "spike"), (shift, "monitor"), (jump, "loss")):
        clock = Clock()
        sched = BudgetSchedule(0.2, log_every=10, clock=clock)
        out = simulate(sched, clock, 3000, step_s=0.01, probe_s=1.0, track_s=0.04,
                       events={2500: event, 30: event})
        i = out["reason"].index(name)  # step 2500: the balance holds more than half a probe
        assert out["probe"][i] == 2501
        # step 30: the first probe's debt is not half repaid, so a tracking step answers it at once
        assert 31 in out["track"] and 31 not in out["probe"]


def test_near_the_edge_the_bracket_is_tracked_densely() -> None:
    clock = Clock()
    sched = BudgetSchedule(0.2, log_every=10, clock=clock)
    out = simulate(sched, clock, 6000, step_s=0.01, probe_s=1.0, track_s=0.005, S=1.0)
    gaps = np.diff(out["track"][5:])
    assert np.median(gaps) == TRACK_MIN
    far = BudgetSchedule(0.2, log_every=10, clock=(c := Clock()))
    out_far = simulate(far, c, 6000, step_s=0.01, probe_s=1.0, track_s=0.005, S=0.1)
    assert len(out_far["track"]) < len(out["track"]) / 2


def test_bracket_contains_s_of_random_positive_spectra_and_is_tight_for_one_mode() -> None:
    rng = np.random.default_rng(0)
    f = ms_term_function({"optimizer": "zo-gd", "lr": 0.01}, 100)
    for _ in range(200):
        lam = rng.exponential(rng.uniform(0.5, 5.0), size=100) * rng.uniform(0.2, 2.0)
        lam[0] = rng.uniform(lam.max(), 99.0)
        S = float(f(lam).sum())
        lo, hi = s_bracket(f, lam.max(), lam.max(), lam.sum(), lam.sum())
        assert lo <= S * (1 + 1e-9) and S <= hi * (1 + 1e-9), (lo, S, hi)
        # widened inputs widen the bracket
        lo2, hi2 = s_bracket(f, 0.95 * lam.max(), 1.05 * lam.max(), 0.9 * lam.sum(), 1.1 * lam.sum())
        assert lo2 <= lo and hi2 >= hi
    lo, hi = s_bracket(f, 50.0, 50.0, 50.0, 50.0)  # one mode: both bounds are f(λ)
    assert lo == pytest.approx(float(f(np.array([50.0]))[0])) == pytest.approx(hi)
    assert s_bracket(f, 50.0, 250.0, 60.0, 60.0)[1] == math.inf  # λ_hi past the per-mode limit 2/η


def test_tracking_step_brackets_the_dense_truth_on_a_small_float64_model() -> None:
    """A tracking step at a fixed θ of a small float64 model: the warm λ_max is a lower bound of the dense
    top eigenvalue, and with the exact trace and negative mass as inputs the bracket holds the exact S(η)."""
    import torch

    from eos_probe.config import TrainConfig
    from eos_probe.curvature import dense_hessian
    from eos_probe.probe import build_probe
    from eos_probe.probe.context import ProbeContext
    from eos_probe.probe.track import track_row
    from eos_probe.build import build

    base = TrainConfig(model="lstm", model_args={"embed": 4, "hidden": 4, "layers": 1}, data_args={"n_train": 16},
                       optimizer="zo-gd", lr=1.0, dtype="float64", probe_budget=0.2)
    setup = build(base)
    obj, theta = setup.objective, setup.theta
    H = dense_hessian(obj, theta).numpy()
    eig, vecs = np.linalg.eigh(H)
    cfg = TrainConfig(**{**base.to_dict(), "lr": 0.4 / eig[-1]})  # ηλ_max = 0.4: S finite, its curvature matters
    probe = build_probe(cfg, setup)
    T = probe.settings["band"].threshold
    probe.schedule.last_probe.update(neg=-eig[eig < 0].sum() / T, neg_err=0.0)
    f = ms_term_function(cfg.to_dict(), obj.dim)
    exact = float(f(eig).sum())  # f = 0 for λ ≤ 0
    monitor = {"zo_trace": float(eig.sum()), "zo_trace_err": 0.0}
    state = setup.optimizer.init(theta)
    # warm start on the top eigenvector (as after a certified probe): λ_max is pinned, the bracket holds S
    probe.warm["lanczos/H"] = torch.as_tensor(vecs[:, -1])
    row = track_row(probe, ProbeContext(probe, 10, theta, state, setup.optimizer, obj, cfg), monitor)
    assert row["nhvp"] == 4 and row["lambda_max"] <= eig[-1] + 1e-9
    assert abs(row["lambda_max"] - eig[-1]) <= row["lambda_max_err"] + 1e-9
    assert row["s_lo"] <= exact <= row["s_hi"] and row["s_hi"] < 10 * exact, (row, exact)
    # a stale start (a random vector): the Ritz value is still a lower bound, and so is S_lo
    probe.warm.clear()
    probe.warm["lanczos/H"] = torch.randn(obj.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    row = track_row(probe, ProbeContext(probe, 20, theta, state, setup.optimizer, obj, cfg), monitor)
    assert row["lambda_max"] <= eig[-1] + 1e-9 and row["s_lo"] <= exact


def test_quiet_tracking_leaves_room_for_the_final_probe() -> None:
    # the default CNN's 1,000-step run (measured: 0.28 s a step, 42 s a probe, 3.3 s a tracking step): quiet
    # tracking overdrew the account and the run ended at a 27-29 % share against a 20 % budget
    clock = Clock()
    sched = BudgetSchedule(0.2, log_every=1, clock=clock)
    out = simulate(sched, clock, 1000, step_s=0.28, probe_s=42.0, track_s=3.3)
    assert out["reason"] == ["first", "final"]
    assert out["share"] <= 0.25, out["share"]
