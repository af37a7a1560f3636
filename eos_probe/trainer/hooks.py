"""What happens around each update, as hooks the loop calls in order.

Per step t (θ_t = parameters before update t) the loop calls every hook's `before_step` (stop on a signal →
checkpoint θ_t when due → evaluate loss/accuracy when logging → probe θ_t when due), updates θ_t → θ_{t+1}
(not at the final step), then every hook's `after_step` (log the row → drop diverged copies → progress).
After the last step it calls `end`; when a signal stops the run, `interrupted`, and on any other exception
`failed`, both in reverse order. A new metric or a new kind of bookkeeping is a new hook, not a loop change.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..config import DEFAULT_PROBE_BUDGET, TrainConfig
from ..errors import DivergedError
from ..interrupt import Guard, RunInterrupted
from ..store import crash_point
from ..zo_monitor import ZOTraceMonitor
from .copies import CopyStack
from .runfile import RunFile


@dataclass
class StepContext:
    """What the hooks of one run share, step by step.

    Attributes:
        stack: the live copies' θ, state and optimizer.
        files: every copy's run file (index j; row i of the stack is copy `stack.alive[i]`).
        objective: the training objective.
        start: the first step (the checkpoint's when resuming); steps: the last step T.
        t0: `time.perf_counter()` at the loop's start (wall times are relative to it).
        step, final: the current step and whether it is T (no update follows).
        log_due: a /train row is written this step; metrics: (loss, accuracy) of θ_step if already known.
        info: what this step's update measured (None at the final step).
        wall: seconds since t0 when this step was logged.
        probed: a probe ran at the step before (so a checkpoint is due).
        pre_probe: copy -> its probe state before this step's probe (what an interrupt checkpoints).
    """

    stack: CopyStack
    files: list[RunFile]
    objective: Any
    start: int
    steps: int
    t0: float
    step: int = 0
    final: bool = False
    log_due: bool = False
    metrics: tuple | None = None
    info: dict | None = None
    wall: float = 0.0
    probed: bool = False
    pre_probe: dict[int, dict] = field(default_factory=dict)

    def begin(self, step: int) -> None:
        """Reset the per-step fields for `step`."""
        self.step, self.final = step, step == self.steps
        self.log_due, self.metrics, self.info = False, None, None
        self.pre_probe = {}

    def live(self) -> list[tuple[int, RunFile]]:
        """(row, file) of each live copy, in stack order (rebuilt only when the stack changed)."""
        alive = self.stack.alive
        if self._live is None or self._live[0] != alive:
            self._live = (list(alive), [(i, self.files[j]) for i, j in enumerate(alive)])
        return self._live[1]

    _live: tuple[list[int], list[tuple[int, RunFile]]] | None = None


class Hook:
    """A per-step hook; every method is optional (a no-op here)."""

    def before_step(self, ctx: StepContext) -> None:
        """Before the update of θ_step."""

    def after_step(self, ctx: StepContext) -> None:
        """After the update (or, at the final step, where it would be)."""

    def end(self, ctx: StepContext) -> None:
        """After the last step, when the run completed."""

    def interrupted(self, ctx: StepContext, exc: RunInterrupted) -> None:
        """A signal stopped the run at `ctx.step` (θ is θ_step)."""

    def failed(self, ctx: StepContext) -> None:
        """Any other exception stopped the run."""


class InterruptHook(Hook):
    """Stops the run at a step boundary once SIGINT/SIGTERM was received (then checkpointed by `CheckpointHook`)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def before_step(self, ctx: StepContext) -> None:
        self.guard.check()


class CheckpointHook(Hook):
    """Checkpoints every live copy at step `start` (a new run), at the step after a probe (no probe is ever
    lost), once `seconds` passed since the last, every `every` steps if set, and at the end; keeps θ_step
    every `keep_every` steps for `eos-probe edge`; on a signal, checkpoints and marks the files interrupted.

    Args:
        every, keep_every: `--checkpoint-every`, `--keep-checkpoints-every` (None/0: off).
        from_checkpoint: the run continues from a checkpoint (none is due at its first step).
        resuming: the files were resumed (a kept checkpoint at the first step already exists).
        seconds: the most work a kill may cost.
        save: the checkpoint writer (`eos_probe.train.save_checkpoint`).
    """

    def __init__(self, *, every: int | None, keep_every: int | None, from_checkpoint: bool, resuming: bool,
                 seconds: float, save: Callable[..., None]) -> None:
        self.every, self.keep_every, self.seconds, self.save = every, keep_every, seconds, save
        self.from_checkpoint, self.resuming = from_checkpoint, resuming
        self.last = time.monotonic()

    def _all(self, ctx: StepContext, step: int, **kw: Any) -> None:
        for i, f in ctx.live():
            f.checkpoint(step, *ctx.stack.view(i), save=self.save, **kw)

    def before_step(self, ctx: StepContext) -> None:
        step, first = ctx.step, ctx.step == ctx.start
        fixed = self.every is not None and step % self.every == 0
        if (first and not self.from_checkpoint) or not first and (
                fixed or ctx.probed or time.monotonic() - self.last > self.seconds):
            self._all(ctx, step)
            self.last = time.monotonic()
        ctx.probed = False
        if self.keep_every and step % self.keep_every == 0 and (not first or not self.resuming):
            self._all(ctx, step, kept=True)

    def end(self, ctx: StepContext) -> None:
        self._all(ctx, ctx.steps)

    def interrupted(self, ctx: StepContext, exc: RunInterrupted) -> None:
        # θ is θ_step (signals wait for step boundaries; a cut-short probe never changes θ): checkpoint here
        # with each probe's state from before this step's probe, which is redone on resume
        exc.step, exc.paths = ctx.step, [f.path for _, f in ctx.live()]
        wall = time.perf_counter() - ctx.t0
        for i, f in ctx.live():
            f.checkpoint(ctx.step, *ctx.stack.view(i), probe_state=ctx.pre_probe.get(ctx.stack.alive[i]),
                         save=self.save)
            f.finish("interrupted", exc.args[0], ctx.step, wall)

    def failed(self, ctx: StepContext) -> None:
        for _, f in ctx.live():  # keep what was measured; each run stays resumable from its last checkpoint
            f.close_quietly()


class LogHook(Hook):
    """Writes a /train row (step, loss, accuracy, wall time, ZO-trace monitor) every `log_every` steps and at
    the end. The loss of θ_step comes from the update where the source measures it, else one evaluation.

    Args:
        log_every: the logging interval.
        zo_monitor: the free curvature monitor of central-difference ZO runs, or None.
    """

    def __init__(self, log_every: int, zo_monitor: ZOTraceMonitor | None) -> None:
        self.log_every, self.zo_monitor = log_every, zo_monitor

    def before_step(self, ctx: StepContext) -> None:
        ctx.log_due = ctx.step % self.log_every == 0 or ctx.final
        if ctx.log_due and (ctx.final or not ctx.stack.opt.source.evaluates_loss):
            ctx.metrics = ctx.objective.evaluate(ctx.stack.theta)

    def after_step(self, ctx: StepContext) -> None:
        if not ctx.log_due:
            return
        stack, metrics, zo_sample = ctx.stack, ctx.metrics, None
        if ctx.info is not None:
            if metrics is None:
                metrics = ctx.metrics = (ctx.info["loss"], ctx.info["accuracy"])
            if self.zo_monitor is not None:
                zo_sample = stack.opt.source.curvature_sample(ctx.info, metrics[0])
        losses = metrics[0].tolist() if stack.stacked else [float(metrics[0])]
        accs = metrics[1].tolist() if stack.stacked else [float(metrics[1])]
        ctx.wall = time.perf_counter() - ctx.t0
        for i, f in ctx.live():
            f.last = (losses[i], accs[i])
            row = {"step": ctx.step, "loss": losses[i], "accuracy": accs[i], "wall_time": f.wall_offset + ctx.wall}
            if self.zo_monitor is not None:
                sample = math.nan if zo_sample is None else float(zo_sample[i] if stack.stacked else zo_sample)
                zo = self.zo_monitor.update(stack.alive[i], sample, ctx.step)
                row.update(zo)
                f.monitor = {**zo, "noise_sd": self.zo_monitor.noise_sd(stack.alive[i])}
            f.log(row)


class ProbeHook(Hook):
    """Runs each live copy's probe on θ_step when due; a signal may cut a probe short (θ is unchanged).

    Args:
        guard: the run's signal guard.
        say: where the one-line cost of the first probe goes (None: not measured, not said).
        cost: builds that line from the probe's row, its seconds and the copy's θ.
    """

    def __init__(self, guard: Guard, say: Callable[[str], None] | None = None,
                 cost: Callable[[dict, float, Any], str] | None = None) -> None:
        self.guard, self.say, self.cost = guard, say, cost

    def before_step(self, ctx: StepContext) -> None:
        for i, f in ctx.live():
            if f.probe is None or not f.probe.due(ctx.step, ctx.final):
                continue
            tp = time.perf_counter()
            theta, state, opt = ctx.stack.probe_view(i)
            ctx.pre_probe[ctx.stack.alive[i]] = f.probe.state_dict()  # what a checkpoint at this step holds
            crash_point("probe")
            with self.guard.interruptible():  # a probe may take minutes: a signal cuts it short
                row = f.probe.run(step=ctx.step, theta=theta, state=state, optimizer=opt, objective=ctx.objective,
                                  writer=self.guard.shielded(f.writer), config=f.cfg)
            f.writer.flush()
            f.probe_seconds += time.perf_counter() - tp
            ctx.probed = True
            if self.say is not None:
                say, self.say = self.say, None
                say(self.cost(row, time.perf_counter() - tp, theta))


class ScheduleHook(Hook):
    """Hands each logged step's loss and ZO-monitor row to the copy's probe schedule (its event triggers).
    Runs after `LogHook` (which measures them) and before the next step's `ProbeHook` (which acts on them)."""

    def after_step(self, ctx: StepContext) -> None:
        if not ctx.log_due:
            return
        for _, f in ctx.live():
            if f.probe is not None:
                f.probe.observe(ctx.step, f.last[0], f.monitor)


class TrackHook(Hook):
    """Between certified probes (budget schedules only): the cheap tracking step — warm λ_max and the bracket on
    S(η) — when the copy's schedule calls for one. Runs after `ProbeHook` and never at a probed step."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def before_step(self, ctx: StepContext) -> None:
        for i, f in ctx.live():
            if f.probe is None or ctx.stack.alive[i] in ctx.pre_probe or not f.probe.track_due(ctx.step):
                continue
            tp = time.perf_counter()
            theta, state, opt = ctx.stack.probe_view(i)
            with self.guard.interruptible():
                f.probe.track(step=ctx.step, theta=theta, state=state, optimizer=opt, objective=ctx.objective,
                              writer=self.guard.shielded(f.writer), config=f.cfg, monitor=f.monitor)
            f.probe_seconds += time.perf_counter() - tp


def check_divergence(loss: float, loss0: float, factor: float, step: int) -> None:
    """Raise `DivergedError` if `loss` is not finite or exceeds `factor` × the initial loss `loss0`."""
    if not math.isfinite(loss):
        raise DivergedError(f"diverged at step {step}: loss is {loss}", step, "non-finite loss")
    if loss > factor * max(loss0, 1e-12):
        raise DivergedError(f"diverged at step {step}: loss {loss:.4g} exceeds {factor:g} x initial loss {loss0:.4g}",
                            step, f"loss exceeded {factor:g} x initial loss")


class DivergenceHook(Hook):
    """On each logged step, records a copy whose loss blew up as diverged in its file and drops it from the
    stack; the others go on (the loop stops when none is left)."""

    def after_step(self, ctx: StepContext) -> None:
        if not ctx.log_due:
            return
        diverged = []
        for i, f in ctx.live():
            try:
                check_divergence(f.last[0], f.loss0, f.cfg.divergence_factor, ctx.step)
            except DivergedError as e:
                f.error = e
                f.finish("diverged", e.reason, e.step, ctx.wall)
                diverged.append(i)
        if diverged:
            ctx.stack.drop(diverged)


class ProgressHook(Hook):
    """Advances the progress bar and shows the first live copy's loss and accuracy (not for regression) on
    logged steps."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def after_step(self, ctx: StepContext) -> None:
        if not ctx.stack.alive:
            return
        if ctx.log_due:
            first = ctx.files[ctx.stack.alive[0]].last
            regression = getattr(getattr(ctx.objective, "loss_spec", None), "regression", False)
            acc = "" if regression else f" acc {first[1]:.3f}"  # float targets: no accuracy to show
            self.bar.set_postfix_str(f"loss {first[0]:.4g}{acc}" +
                                     (f" ({len(ctx.stack.alive)} copies)" if ctx.stack.stacked else ""),
                                     refresh=False)
        if not ctx.final:
            self.bar.update(1)

    def end(self, ctx: StepContext) -> None:
        self.bar.close()

    def interrupted(self, ctx: StepContext, exc: RunInterrupted) -> None:
        self.bar.close()

    def failed(self, ctx: StepContext) -> None:
        self.bar.close()


class _NoBar:
    def write(self, s: str) -> None: ...
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str, refresh: bool = True) -> None: ...
    def close(self) -> None: ...


def progress_bar(enabled: bool, start: int, total: int) -> Any:
    """A tqdm bar from `start` to `total` steps, or a silent stand-in when not `enabled`."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.05)


def _cadence(fe: float, step: float, cfg: TrainConfig, share_every: int | None) -> str:
    """'every N steps -> expected probe share S%' (fixed) or the budget's implied cadence (auto)."""
    if not math.isfinite(fe):
        return ""
    if share_every is not None:
        share = fe / (fe + share_every * step)
        return f"every {share_every} steps -> expected probe share {100 * share:.0f}%"
    budget = cfg.probe_budget if cfg.probe_budget is not None else DEFAULT_PROBE_BUDGET
    every = fe * (1 - budget) / (budget * step)
    return (f"budget {100 * budget:.0f}% of wall time -> about one probe every {every:,.0f} steps when quiet, "
            "more where the curvature moves")


def _every(cfg: TrainConfig) -> int | None:
    return None if cfg.probe_every == "auto" else int(cfg.probe_every)


def probe_price_line(probe: Any, obj: Any, theta: Any, cfg: TrainConfig, opt: Any, log_every: int) -> str:
    """The price of one probe before the first is paid: one timed Hessian-vector product × the products the
    probe plans (`Probe.planned_hvps`), in forward passes and seconds, the share or cadence it implies, and a
    warning naming the flag that caps it when a fixed schedule would spend most of the run probing."""
    from ..budget import forward_seconds, hvp_seconds, step_forwards

    th = theta if theta.dim() == 1 else theta[0]
    fwd = forward_seconds(obj, th)
    hvp = hvp_seconds(obj, th, probe.hvp_backend_name())
    n = probe.planned_hvps()
    fe = n * hvp / fwd if fwd > 0 else math.nan
    step = step_forwards(opt, log_every, int(th.shape[-1]))
    line = (f"probe price: about {n} HVPs = {fe:,.0f} forward passes (~{n * hvp:.1f} s; one HVP timed at "
            f"{1e3 * hvp:.0f} ms) per probe; one step = {step:.2g} forwards; " + _cadence(fe, step, cfg, _every(cfg)))
    every = _every(cfg)
    if every is not None and math.isfinite(fe) and fe / (fe + every * step) > 0.5:
        line += ("\nwarning: the probe would take most of this run's time; cap it with --probe-every auto "
                 f"(--probe-budget, default {DEFAULT_PROBE_BUDGET:g}) or a larger --probe-every")
    return line


def probe_cost_line(row: dict, seconds: float, obj: Any, theta: Any, cfg: TrainConfig, opt: Any,
                    log_every: int, copies: int) -> str:
    """One line after the first probe: its measured cost in full-batch forward passes and the share of the run
    (fixed schedule) or the cadence (budget) it implies (step cost: `eos_probe.budget.step_forwards`)."""
    from ..budget import forward_seconds, step_forwards

    fwd = forward_seconds(obj, theta)
    fe = seconds / fwd if fwd > 0 else math.nan
    step = step_forwards(opt, log_every, int(theta.shape[-1]))
    nhvp = int(sum(v for k, v in row.items() if k.endswith("_nhvp") and np.ndim(v) == 0 and np.isfinite(v)))
    per = " per copy" if copies > 1 else ""
    return (f"probe cost: one probe = {fe:,.0f} forward passes{per} ({seconds:.1f} s, {nhvp} HVPs); one step = "
            f"{step:.2g} forwards; " + _cadence(fe, step, cfg, _every(cfg)))
