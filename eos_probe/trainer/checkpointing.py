"""When the trainer checkpoints and how: one policy object, and the hook that applies it.

A copy is checkpointed at step `start` of a new run, at the step after a probe (no probe is ever lost), at the
first step boundary once `CHECKPOINT_SECONDS` of work passed since the last, every `checkpoint_every` steps if
set, at the end, and when a signal stops the run. Every `keep_checkpoints_every` steps θ is also kept in its
own file for `eos-probe edge`. The file format lives in `eos_probe.checkpoint`.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ..checkpoint import checkpoint_path, kept_checkpoint_path, save_checkpoint
from ..config import TrainConfig
from ..errors import UserError
from ..interrupt import RunInterrupted
from ..store import write_error_message
from .hooks import Hook, StepContext
from .runfile import RunFile

#: the most work (seconds) a kill may cost: a checkpoint is written at the first step boundary after this long
CHECKPOINT_SECONDS = 300.0


class CheckpointPolicy:
    """The checkpoint timing of one run, and the write.

    Args:
        every, keep_every: `checkpoint_every`, `keep_checkpoints_every` (None/0: off).
        from_checkpoint: the run continues from a checkpoint (none is due at its first step).
        resuming: the files were resumed (a kept checkpoint at the first step already exists).
        seconds: the most work a kill may cost (default `CHECKPOINT_SECONDS`, read when the policy is made).
    """

    def __init__(self, *, every: int | None = None, keep_every: int | None = None, from_checkpoint: bool = False,
                 resuming: bool = False, seconds: float | None = None) -> None:
        self.every, self.keep_every = every, keep_every
        self.from_checkpoint, self.resuming = from_checkpoint, resuming
        self.seconds = CHECKPOINT_SECONDS if seconds is None else seconds
        self.last = time.monotonic()
        self.after_probe = False

    @classmethod
    def for_run(cls, cfg: TrainConfig, *, from_checkpoint: bool, resuming: bool) -> "CheckpointPolicy":
        """The policy of a config (`checkpoint_every`, `keep_checkpoints_every`)."""
        return cls(every=cfg.checkpoint_every, keep_every=cfg.keep_checkpoints_every,
                   from_checkpoint=from_checkpoint, resuming=resuming)

    def due(self, step: int, start: int) -> bool:
        """Whether θ_step is checkpointed (before its update)."""
        if step == start:
            return not self.from_checkpoint
        fixed = self.every is not None and step % self.every == 0
        return fixed or self.after_probe or time.monotonic() - self.last > self.seconds

    def kept_due(self, step: int, start: int) -> bool:
        """Whether θ_step is also kept as `<run>.step<step>.ckpt`."""
        return bool(self.keep_every) and step % self.keep_every == 0 and (step != start or not self.resuming)

    def write(self, f: RunFile, step: int, theta: torch.Tensor, state: dict, *, probe_state: dict | None = None,
              kept: bool = False) -> None:
        """Checkpoint θ_step of one copy; its run file first gets every row before `step`.

        Args:
            f: the copy.
            step: the step whose θ (before its update) is saved.
            theta, state: the copy's parameters and optimizer state.
            probe_state: the probe state to save; default the probe's current one.
            kept: write the kept checkpoint of this step instead of the resume checkpoint.

        Raises:
            UserError: the write failed; the previous checkpoint is kept.
        """
        f.writer.flush()
        extra: dict[str, Any] = {"config": f.cfg.to_dict(), "run_id": f.run_id}
        if f.probe is not None:
            extra["probe"] = probe_state if probe_state is not None else f.probe.state_dict()
        ck = kept_checkpoint_path(f.path, step) if kept else checkpoint_path(f.path)
        try:
            save_checkpoint(ck, step, theta, state, extra)
        except (OSError, RuntimeError) as e:  # disk full, file-size limit, ... (torch.save: RuntimeError)
            ck.with_name(ck.name + ".tmp").unlink(missing_ok=True)
            raise UserError(write_error_message(ck, e) + "; the previous checkpoint is kept") from None
        if not kept:
            self.last = time.monotonic()


class CheckpointHook(Hook):
    """Applies a `CheckpointPolicy` to every live copy; on a signal, checkpoints and marks the files interrupted."""

    reads = frozenset({"after:probed", "interrupted:probed"})

    def __init__(self, policy: CheckpointPolicy) -> None:
        self.policy = policy

    def _all(self, ctx: StepContext, step: int, **kw: Any) -> None:
        for i, f in ctx.live():
            self.policy.write(f, step, *ctx.stack.view(i), **kw)

    def before_step(self, ctx: StepContext) -> None:
        if self.policy.due(ctx.step, ctx.start):
            self._all(ctx, ctx.step)
        if self.policy.kept_due(ctx.step, ctx.start):
            self._all(ctx, ctx.step, kept=True)

    def after_step(self, ctx: StepContext) -> None:
        self.policy.after_probe = bool(ctx.probed)

    def end(self, ctx: StepContext) -> None:
        self._all(ctx, ctx.steps)

    def interrupted(self, ctx: StepContext, exc: RunInterrupted) -> None:
        # θ is θ_step (signals wait for step boundaries; a cut-short probe never changes θ): checkpoint here
        # with each probe's state from before this step's probe, which is redone on resume
        exc.step, exc.paths = ctx.step, [f.path for _, f in ctx.live()]
        wall = time.perf_counter() - ctx.t0
        for i, f in ctx.live():
            self.policy.write(f, ctx.step, *ctx.stack.view(i), probe_state=ctx.probed.get(ctx.stack.alive[i]))
            f.finish("interrupted", exc.args[0], ctx.step, wall)

    def failed(self, ctx: StepContext) -> None:
        for _, f in ctx.live():  # keep what was measured; each run stays resumable from its last checkpoint
            f.close_quietly()
