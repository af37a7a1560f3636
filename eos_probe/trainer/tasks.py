"""The task-sequence hook: switches the objective to the task being trained and fills the accuracy/loss table.

Before the update of step s it (1) makes the shared `Objective` train task `task_at(s)` (its data swapped in
place, `objective.task`, `objective.retention`), and (2) when s ends a task (s = b_{t+1}), evaluates θ_s on
every task's test split (no task identity: class-incremental; with masking, the outputs of tasks 0..t) and writes row t of /tasks/accuracy
and /tasks/loss of each live copy's run file, with the docs/theory.md §5b summary in the attributes of /tasks.

Resuming from a checkpoint at step s keeps the rows of tasks that ended before s and redoes the others (the
same θ gives the same numbers), so a resumed run writes the table an uninterrupted one does.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..reading import open_run
from ..tasks import TaskData, summary
from .hooks import Hook, StepContext

DESCRIPTION = ("accuracy[t, j] / loss[t, j]: theta after task t (at step boundaries[t+1]) on task j's test split, "
               "the outputs of tasks 0..t with class-incremental masking, else all (no task identity); NaN = row not reached yet")


class TaskHook(Hook):
    """Switches tasks at their boundaries and writes /tasks/* (see the module docstring).

    Args:
        data: the tasks' training and test data and the schedule.
        start: the step the run starts at (the checkpoint's when resuming).
        resuming: the run files were resumed (their table rows before `start` are kept).
    """

    def __init__(self, data: TaskData, *, start: int, resuming: bool) -> None:
        self.data, self.schedule = data, data.schedule
        self.start, self.resuming = start, resuming
        self.tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # copy index -> (accuracy, loss)

    def prepare(self, objective: Any) -> None:
        """Make `objective` train the task of the first step (before the run files are opened)."""
        self.data.apply(objective, self.schedule.task_at(self.start))

    def _load(self, ctx: StepContext) -> None:
        """The tables of every copy: new (NaN), or a resumed file's rows of tasks that ended before `start`."""
        T, ends = self.schedule.n_tasks, self.schedule.boundaries[1:]
        for i, f in ctx.live():
            acc, loss = np.full((T, T), np.nan), np.full((T, T), np.nan)
            if self.resuming:
                with open_run(f.path) as h:
                    if "tasks/accuracy" in h and h["tasks/accuracy"].shape == (T, T):
                        acc, loss = h["tasks/accuracy"][()], h["tasks/loss"][()]
                redo = [t for t in range(T) if ends[t] >= self.start]
                acc[redo], loss[redo] = np.nan, np.nan
            self.tables[ctx.stack.alive[i]] = (acc, loss)
            self._write(f, ctx.stack.alive[i])

    def _write(self, f: Any, j: int) -> None:
        acc, loss = self.tables[j]
        s = self.schedule
        f.writer.put("tasks", {"accuracy": acc, "loss": loss, "boundaries": np.asarray(s.boundaries, np.int64),
                               "task_steps": np.asarray(s.steps, np.int64),
                               "test_examples": np.asarray([len(y) for _, y in self.data.test], np.int64)},
                     attrs={**summary(acc), "classes": [list(c) for c in s.classes], "labels": self.data.labels,
                            "mask_old_logits": bool(self.data.mask_old_logits), "description": DESCRIPTION})

    def before_step(self, ctx: StepContext) -> None:
        if not self.tables:
            self._load(ctx)
        task = self.schedule.task_at(ctx.step)
        if ctx.objective.task != task:
            self.data.apply(ctx.objective, task)
        rows = self.schedule.ending_at(ctx.step)
        live = ctx.live()
        if not rows or not live or not any(np.isnan(self.tables[ctx.stack.alive[i]][0][rows]).any() for i, _ in live):
            return
        for row in rows:  # row t sees the outputs of tasks 0..t (all of them without class-incremental masking)
            cols = [ctx.objective.evaluate(ctx.stack.theta, x, y, self.data.seen_mask(row)) for x, y in self.data.test]
            for i, _ in live:
                acc, loss = self.tables[ctx.stack.alive[i]]
                for col, (lv, av) in enumerate(cols):
                    loss[row, col] = float(lv[i] if ctx.stack.stacked else lv)
                    acc[row, col] = float(av[i] if ctx.stack.stacked else av)
        for i, f in live:
            self._write(f, ctx.stack.alive[i])
