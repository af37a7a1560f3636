"""The training loop: steps `start..T`, one update each (none after T), everything else done by hooks."""
from __future__ import annotations

from ..interrupt import RunInterrupted
from .hooks import Hook, StepContext, check_order


def run_loop(ctx: StepContext, hooks: list[Hook]) -> None:
    """Run steps `ctx.start` … `ctx.steps` of the copies in `ctx.stack`, calling `hooks` around each update.

    Stops early when every copy has been dropped (diverged). On a signal (`RunInterrupted`) or any other
    exception the hooks' `interrupted` / `failed` run in reverse order, then the exception propagates.

    Args:
        ctx: the run's shared state (stack, files, objective, step range).
        hooks: called in order; see `eos_probe.trainer.hooks` for what each step does.

    Raises:
        HookOrderError: a hook reads a per-step field before its writer runs (`check_order`).
        RunInterrupted: SIGINT/SIGTERM stopped the run (after every copy was checkpointed).
    """
    check_order(hooks)
    ctx.step = ctx.start
    try:
        for step in range(ctx.start, ctx.steps + 1):
            ctx.begin(step)
            for hook in hooks:
                hook.before_step(ctx)
            if not ctx.final:
                ctx.info = ctx.stack.step(ctx.objective, step)
            for hook in hooks:
                hook.after_step(ctx)
            if not ctx.stack.alive:
                break
        for hook in hooks:
            hook.end(ctx)
    except RunInterrupted as e:
        for hook in reversed(hooks):
            hook.interrupted(ctx, e)
        raise
    except BaseException:
        for hook in reversed(hooks):
            hook.failed(ctx)
        raise
