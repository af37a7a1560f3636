"""When the probe runs: every N steps, or on a wall-time budget that spends itself where the curvature moves.

`FixedSchedule(N)` (``--probe-every N``) probes steps 0, N, 2N, … and the final one — deterministic, so a
resumed or repeated run probes the same steps and logs bitwise the same values.

`BudgetSchedule(F)` (``--probe-every auto``, the default, with ``--probe-budget F``) keeps the probe's long-run
share of the wall time at F with a token bucket: the balance earns F/(1−F) second per second of training and
pays each probe's (and each tracking step's) seconds. The first probe (step 0) is always taken — it also
prices the next ones. After that a certified probe runs

* on a **trigger**: the free ZO monitor moved by more than
  `Triggers.monitor_z` combined standard errors since the last probe, one raw monitor sample lies
  `Triggers.spike_z` noise s.d. above the tracked value (a catapult or a blow-up starting: raw samples are
  read, not the smoothed window), the loss rose `Triggers.loss_jump` above its minimum since the last probe,
  or the tracking bracket moved wholly across S = 1;
* **routinely** when the balance holds three probes (two stay in reserve for triggers), or one probe while the
  run is near the edge (`BudgetSchedule.near_edge`) — so the reserve is spent at the edge and quiet stretches
  go at the budget's pace;
* at the **final step** if the balance is above minus half a probe.

A trigger is answered by a certified probe while the balance is above minus half a probe (after the first
probe's debt is half repaid), else by a tracking step.

Between certified probes a **tracking step** (a warm-started λ_max of a few products and the monitor's trace,
`Probe.track`) logs the bracket [S_lo, S_hi] of `eos_probe.theory.bracket`: every `TRACK_MIN` steps near the
edge and every `TRACK_QUIET` elsewhere, as far as its own account allows (`TRACK_SHARE` of the budget, three times
that near the edge, where a crossing of S = 1 is only seen by tracking at this pace; away from the edge only while
the whole balance also holds one probe, kept for the final step); a spike or a bracket wholly
past 1 (`URGENT`) tracks every step on the whole budget until answered, since a blow-up may be starting. The schedule depends on wall time, so which steps are probed varies between two
runs of one seed (the trajectory never does: probes do not touch θ).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..config import DEFAULT_PROBE_BUDGET

#: share of the budget that tracking steps may spend, away from the edge and near it
TRACK_SHARE, TRACK_SHARE_EDGE = 0.25, 0.75
#: triggers that may run tracking on the whole budget, every step, until answered: a blow-up may be starting
URGENT = ("spike", "bracket")
#: tracking cadence in steps: near the edge, and elsewhere (both as far as the tracking account allows)
TRACK_MIN, TRACK_QUIET = 10, 100
#: tracking steps the tracking account may run ahead of its earnings
TRACK_ALLOWANCE = 3
#: products of one tracking step's warm λ_max
TRACK_HVPS = 4
#: |S − 1| below which a run counts as near the edge (dense probing and tracking)
NEAR_EDGE = 0.3


#: why a probe ran, as the integer codes of /probe/reason
REASONS = {"every": 0, "final": 1, "first": 2, "budget": 3, "monitor": 4, "spike": 5, "loss": 6, "bracket": 7}


@dataclass(frozen=True)
class Triggers:
    """Thresholds of the events that call for an early probe (see the module docstring)."""

    monitor_z: float = 3.0
    spike_z: float = 5.0
    loss_jump: float = 0.2
    near_edge_z: float = 2.0


class FixedSchedule:
    """Probe every `every` steps and at the final step."""

    kind = "fixed"

    def __init__(self, every: int) -> None:
        self.every = int(every)

    def due(self, step: int, final: bool) -> str | None:
        """The reason to probe at `step` ("every", "final") or None."""
        if final:
            return "final"
        return "every" if step % self.every == 0 else None

    def track_due(self, step: int) -> bool:
        return False

    def observe(self, step: int, loss: float, monitor: dict[str, float] | None) -> None:
        """Fixed schedules read no events."""

    def charged(self, seconds: float, kind: str, step: int, row: dict[str, Any] | None = None) -> None:
        """Fixed schedules keep no account."""

    def description(self) -> dict[str, Any]:
        return {"probe_schedule": "fixed", "probe_every": self.every}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        pass


class BudgetSchedule:
    """The token-bucket schedule of ``--probe-every auto`` (module docstring).

    Args:
        budget: the probe's share F of the wall time, in (0, 1).
        log_every: the logging interval (tracking steps fall on logged steps, where the monitor is fresh).
        triggers: the event thresholds.
        clock: seconds, monotonic (tests pass a fake one).
    """

    kind = "budget"

    def __init__(self, budget: float, *, log_every: int = 1, triggers: Triggers = Triggers(),
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget, self.ratio = float(budget), float(budget) / (1.0 - float(budget))
        self.log_every, self.triggers, self.clock = max(1, int(log_every)), triggers, clock
        self.t0: float | None = None
        self.spent = 0.0  # probe + tracking seconds
        self.track_spent = 0.0
        self.track_earned, self._accrued_to = 0.0, 0.0
        self.cost: float | None = None  # seconds of one certified probe (running mean of the last ones)
        self.track_cost: float | None = None
        self.first_step: int | None = None
        self.pending: str | None = None
        self.last_probe: dict[str, float] = {}  # S, S_err, negative mass, monitor at the last certified probe
        self.last_track_step: int | None = None
        self.last_track: dict[str, float] = {}
        self.loss_min = math.inf

    # ---------------------------------------------------------------- the accounts
    def _now(self) -> float:
        if self.t0 is None:
            self.t0 = self.clock()
        return self.clock() - self.t0

    def balance(self) -> float:
        """Seconds of probing the budget allows now: F/(1−F) × training seconds − seconds spent (probes and
        tracking)."""
        return self.ratio * (self._now() - self.spent) - self.spent

    def track_balance(self) -> float:
        """The tracking account: what it earned (`TRACK_SHARE` of the budget's rate, `TRACK_SHARE_EDGE` near the
        edge, accrued as training goes), less tracking's own spending, plus `TRACK_ALLOWANCE` tracking steps."""
        train = self._now() - self.spent
        share = TRACK_SHARE_EDGE if self.near_edge() else TRACK_SHARE
        self.track_earned += share * self.ratio * max(0.0, train - self._accrued_to)
        self._accrued_to = max(self._accrued_to, train)
        return self.track_earned - self.track_spent + TRACK_ALLOWANCE * (self.track_cost or 0.0)

    # ---------------------------------------------------------------- decisions
    def due(self, step: int, final: bool) -> str | None:
        """The reason for a certified probe at `step`, or None."""
        self._now()  # the clock starts at the first decision, before the first probe
        if self.first_step is None:
            self.first_step = step
        if self.cost is None:
            return "first"
        b = self.balance()
        if final:
            return "final" if b >= -0.5 * self.cost else None
        if self.pending is not None and b >= -0.5 * self.cost:
            return self.pending
        reserve = 1.0 if self.near_edge() else 3.0
        return "budget" if b >= reserve * self.cost else None

    def track_due(self, step: int) -> bool:
        """Whether a tracking step runs at `step` (never at a certified probe's step): every `TRACK_MIN` steps
        near the edge and every `TRACK_QUIET` elsewhere while the tracking account allows, and at once for a
        trigger that the balance cannot pay a certified probe for."""
        if self.cost is None:
            return False
        if self.pending in URGENT:  # a spike or a bracket past 1: track every step, on the whole budget
            return self.balance() >= -self.cost
        if self.pending is not None:  # a trigger a certified probe cannot answer yet: tracking, on its account
            return self.track_balance() >= -TRACK_ALLOWANCE * (self.track_cost or 0.0)
        if step % self.log_every:
            return False
        last = self.last_track_step if self.last_track_step is not None else self.first_step or 0
        if self.near_edge():
            return step - last >= TRACK_MIN and self.track_balance() >= 0
        # away from the edge tracking only spends what the whole account holds beyond one probe, the final
        # probe's reserve: a 1,000-step default CNN run spent 26 s of quiet tracking and ended at a 29 % share
        return step - last >= TRACK_QUIET and self.track_balance() >= 0 and self.balance() >= self.cost

    def near_edge(self) -> bool:
        """The last certified S(η) lies within max(`near_edge_z` s.e., `NEAR_EDGE`) of 1, or the last tracking
        bracket overlaps [1 − NEAR_EDGE, 1 + NEAR_EDGE]: probe and track densely."""
        s, e = self.last_probe.get("S", math.nan), self.last_probe.get("S_err", math.nan)
        width = max(self.triggers.near_edge_z * (e if math.isfinite(e) else 0.0), NEAR_EDGE)
        if math.isfinite(s) and abs(s - 1.0) <= width:
            return True
        lo, hi = self.last_track.get("s_lo", math.nan), self.last_track.get("s_hi", math.nan)
        return math.isfinite(lo) and lo < 1.0 + NEAR_EDGE and hi > 1.0 - NEAR_EDGE

    # ---------------------------------------------------------------- what happened
    def charged(self, seconds: float, kind: str, step: int, row: dict[str, Any] | None = None) -> None:
        """Book `seconds` of a certified probe (`kind` "probe", with its `row`) or a tracking step ("track")."""
        self._now()
        seconds, row = float(seconds), row or {}
        self.spent += seconds
        self.last_track_step = step
        if kind == "probe":
            self.cost = seconds if self.cost is None else 0.5 * (self.cost + seconds)
            self.pending = None
            self.loss_min = math.inf
            self.last_probe = {"S": _num(row, "ms_margin"), "S_err": _num(row, "ms_margin_err"),
                               "neg": _num(row, "ms_margin_neg"), "neg_err": _num(row, "ms_margin_neg_err")}
            self.last_track = {}
            return
        self.track_spent += seconds
        self.track_cost = seconds if self.track_cost is None else 0.5 * (self.track_cost + seconds)
        self.last_track = {k: _num(row, k) for k in ("s_lo", "s_hi")}
        if self.pending is not None and self.balance() < -0.5 * self.cost:
            self.pending = None  # answered by tracking: a certified probe would overdraw the account
        s, lo, hi = self.last_probe.get("S", math.nan), self.last_track["s_lo"], self.last_track["s_hi"]
        if math.isfinite(s) and ((s < 1.0 < lo) or (s > 1.0 > hi)):
            self.pending = self.pending or "bracket"

    def observe(self, step: int, loss: float, monitor: dict[str, float] | None) -> None:
        """A logged step's loss and ZO-monitor row: sets a pending trigger when an event shows."""
        tr = self.triggers
        if math.isfinite(loss):
            if self.loss_min > 0 and loss > (1.0 + tr.loss_jump) * self.loss_min:
                self.pending = self.pending or "loss"
            self.loss_min = min(self.loss_min, loss)
        if not monitor:
            return
        est, err, raw = (monitor.get(k, math.nan) for k in ("zo_trace", "zo_trace_err", "zo_trace_raw"))
        if not (math.isfinite(est) and math.isfinite(err)):
            return
        if "monitor" not in self.last_probe:  # the reference: the first monitor reading after a probe
            self.last_probe["monitor"], self.last_probe["monitor_err"] = est, err
        ref, ref_err = self.last_probe["monitor"], self.last_probe["monitor_err"]
        if abs(est - ref) > tr.monitor_z * math.hypot(err, ref_err):
            self.pending = self.pending or "monitor"
        sd = monitor.get("noise_sd", math.nan)  # one sample's noise s.d., from the samples before this one
        if math.isfinite(raw) and math.isfinite(sd) and raw > est + tr.spike_z * sd:
            self.pending = self.pending or "spike"

    def description(self) -> dict[str, Any]:
        return {"probe_schedule": "budget", "probe_budget": self.budget, "track_hvps": TRACK_HVPS,
                "track_share": [TRACK_SHARE, TRACK_SHARE_EDGE], "track_every": [TRACK_MIN, TRACK_QUIET]}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on deciding: the costs and the last values (the accounts restart with
        the new process's clock)."""
        return {"cost": self.cost, "track_cost": self.track_cost, "last_probe": dict(self.last_probe)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.cost, self.track_cost = d.get("cost"), d.get("track_cost")
        self.last_probe = dict(d.get("last_probe", {}))


def _num(row: dict[str, Any], key: str) -> float:
    try:
        v = float(row.get(key, math.nan))
    except (TypeError, ValueError):
        return math.nan
    return v


def make_schedule(probe_every: int | str, budget: float | None, log_every: int):
    """The schedule for a config: fixed for an integer `probe_every`, the budget one for "auto"."""
    if probe_every == "auto":
        return BudgetSchedule(DEFAULT_PROBE_BUDGET if budget is None else budget, log_every=log_every)
    return FixedSchedule(int(probe_every))
