"""What happens around each update, as hooks the loop calls in order.

Per step t (θ_t = parameters before update t) the loop calls every hook's `before_step` (stop on a signal →
switch the task → checkpoint θ_t when due → evaluate loss/accuracy when logging → probe θ_t when due → track),
updates θ_t → θ_{t+1} (not at the final step), then every hook's `after_step` (log the row → feed the probe
schedule → drop diverged copies → progress). After the last step it calls `end`; when a signal stops the run,
`interrupted`, and on any other exception `failed`, both in reverse order.

Hooks talk to each other only through the fields of `StepContext` that are reset every step, and each hook
declares which of them it writes and reads, per phase (`Hook.writes`, `Hook.reads`); `check_order` refuses a
hook list in which a hook reads a field before the hook that writes it ran. A new measurement or a new kind of
bookkeeping is a new hook with its declarations, not a loop change.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ..errors import DivergedError
from ..interrupt import Guard, RunInterrupted
from ..store import crash_point
from ..zo_monitor import ZOTraceMonitor
from .copies import CopyStack
from .price import probe_cost_line
from .runfile import RunFile

#: the phases of one step, in the order they run; "update" is the loop's own (it writes `info`)
PHASES = ("before", "update", "after")


@dataclass
class StepContext:
    """The run a hook works on, and the fields the hooks of one step share (reset by `begin` every step).

    Run-long attributes: `stack` (the live copies' θ, state and optimizer), `files` (every copy's run file:
    index j; row i of the stack is copy `stack.alive[i]`), `objective`, `start` (the first step: the
    checkpoint's when resuming), `steps` (the last step T), `t0` (`time.perf_counter()` at the loop's start).

    Per-step fields (who writes and reads each is declared by the hooks):
        step, final: the current step and whether it is T (no update follows); set by the loop.
        task: the objective trains the task of this step (`TaskHook`).
        log_due: a /train row is written this step; metrics: (loss, accuracy) of θ_step once known (`LogHook`).
        info: what this step's update measured (None at the final step); set by the loop.
        wall: seconds since t0 when this step was logged; last, monitor: the copies' logged loss and
            ZO-monitor row, kept on their `RunFile`s (`LogHook`).
        probed: copy -> its probe state from before this step's probe, for the copies probed (`ProbeHook`).
        alive: copies were dropped this step (`DivergenceHook`).
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
    probed: dict[int, dict] = field(default_factory=dict)

    def begin(self, step: int) -> None:
        """Reset the per-step fields for `step`."""
        self.step, self.final = step, step == self.steps
        self.log_due, self.metrics, self.info = False, None, None
        if self.probed:
            self.probed = {}

    def live(self) -> list[tuple[int, RunFile]]:
        """(row, file) of each live copy, in stack order (rebuilt only when the stack changed)."""
        alive = self.stack.alive
        if self._live is None or self._live[0] != alive:
            self._live = (list(alive), [(i, self.files[j]) for i, j in enumerate(alive)])
        return self._live[1]

    _live: tuple[list[int], list[tuple[int, RunFile]]] | None = None


class Hook:
    """A per-step hook; every method is optional (a no-op here).

    `writes` and `reads` name the per-step fields (see `StepContext`) the hook sets and uses, each as
    ``"<phase>:<field>"`` with phase ``before`` or ``after`` (``interrupted`` for what `interrupted` reads).
    """

    writes: ClassVar[frozenset[str]] = frozenset()
    reads: ClassVar[frozenset[str]] = frozenset()

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


class HookOrderError(ValueError):
    """A hook reads a per-step field before the hook that writes it runs."""


def check_order(hooks: list[Hook]) -> None:
    """Refuse a hook order in which a hook reads a field of this step before its writer ran.

    The phases run as `PHASES` says, each calling the hooks in list order. A field nobody in the list writes
    (a task field in a run without tasks) constrains nothing.

    Raises:
        HookOrderError: naming the reader, the field and the writer.
    """
    timeline: list[tuple[str, Any]] = [("before", h) for h in hooks] + [("update", None)] + \
                                      [("after", h) for h in hooks]
    writer: dict[str, tuple[int, str]] = {"step": (-1, "the loop"), "final": (-1, "the loop")}
    for pos, (phase, h) in enumerate(timeline):
        for w in (h.writes if h is not None else {"update:info"}):
            p, name = w.split(":")
            if p == phase:
                writer.setdefault(name, (pos, type(h).__name__ if h is not None else "the update"))
    for pos, (phase, h) in enumerate(timeline):
        for r in (h.reads if h is not None else ()):
            p, name = r.split(":")
            if p == phase and name in writer and writer[name][0] > pos:
                raise HookOrderError(f"{type(h).__name__} reads {name!r} in its {phase} phase before "
                                     f"{writer[name][1]} writes it; move it after that hook")


class InterruptHook(Hook):
    """Stops the run at a step boundary once SIGINT/SIGTERM was received (then checkpointed by `CheckpointHook`)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def before_step(self, ctx: StepContext) -> None:
        self.guard.check()


class LogHook(Hook):
    """Writes a /train row (step, loss, accuracy, wall time, ZO-trace monitor) every `log_every` steps and at
    the end. The loss of θ_step comes from the update where the source measures it, else one evaluation.

    Args:
        log_every: the logging interval.
        zo_monitor: the free curvature monitor of central-difference ZO runs, or None.
    """

    writes = frozenset({"before:log_due", "before:metrics", "after:metrics", "after:wall", "after:last",
                        "after:monitor"})
    reads = frozenset({"before:task", "after:info"})

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
        log_every: the logging interval (a step's cost includes its share of a log's forward).
    """

    writes = frozenset({"before:probed"})
    reads = frozenset({"before:task"})

    def __init__(self, guard: Guard, say: Callable[[str], None] | None = None, log_every: int = 1) -> None:
        self.guard, self.say, self.log_every = guard, say, log_every

    def before_step(self, ctx: StepContext) -> None:
        for i, f in ctx.live():
            if f.probe is None or not f.probe.due(ctx.step, ctx.final):
                continue
            tp = time.perf_counter()
            theta, state, opt = ctx.stack.probe_view(i)
            ctx.probed[ctx.stack.alive[i]] = f.probe.state_dict()  # what a checkpoint at this step holds
            crash_point("probe")
            with self.guard.interruptible():  # a probe may take minutes: a signal cuts it short
                row = f.probe.run(step=ctx.step, theta=theta, state=state, optimizer=opt, objective=ctx.objective,
                                  writer=self.guard.shielded(f.writer), config=f.cfg)
            f.writer.flush()
            f.probe_seconds += time.perf_counter() - tp
            if self.say is not None:
                say, self.say = self.say, None
                say(probe_cost_line(row, time.perf_counter() - tp, ctx.objective, theta, f.cfg, ctx.stack.opt,
                                    self.log_every, len(ctx.stack.alive)))


class ScheduleHook(Hook):
    """Hands each logged step's loss and ZO-monitor row to the copy's probe schedule (its event triggers), which
    the next step's `ProbeHook` acts on."""

    reads = frozenset({"after:log_due", "after:last", "after:monitor"})

    def after_step(self, ctx: StepContext) -> None:
        if not ctx.log_due:
            return
        for _, f in ctx.live():
            if f.probe is not None:
                f.probe.observe(ctx.step, f.last[0], f.monitor)


class TrackHook(Hook):
    """Between certified probes (budget schedules only): the cheap tracking step — warm λ_max and the bracket on
    S(η) — when the copy's schedule calls for one; never at a probed step."""

    reads = frozenset({"before:probed", "before:task"})

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def before_step(self, ctx: StepContext) -> None:
        for i, f in ctx.live():
            if f.probe is None or ctx.stack.alive[i] in ctx.probed or not f.probe.track_due(ctx.step):
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

    writes = frozenset({"after:alive"})
    reads = frozenset({"after:log_due", "after:last", "after:wall"})

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

    reads = frozenset({"after:log_due", "after:last", "after:alive"})

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
    from tqdm.auto import tqdm  # tqdm.auto picks the notebook or terminal bar when the run starts

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.05)
