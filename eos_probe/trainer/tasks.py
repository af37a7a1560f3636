"""Task sequences in training: each task's data (`TaskData`) and the hook (`TaskHook`) that switches the
objective to the task being trained and fills the accuracy/loss table.

Before the update of step s it (1) makes the shared `Objective` train task `task_at(s)` (its data swapped in
place, `objective.task`, `objective.retention`), and (2) when s ends a task (s = b_{t+1}), evaluates θ_s on
every task's test split (no task identity: class-incremental; with masking, the outputs of tasks 0..t) and
writes row t of /tasks/accuracy and /tasks/loss of each live copy's run file, with the docs/theory.md §5b summary in the attributes of /tasks.

Resuming from a checkpoint at step s keeps the rows of tasks that ended before s and redoes the others (the
same θ gives the same numbers), so a resumed run writes the table an uninterrupted one does.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..objective import Objective
from ..reading import open_run
from ..tasks import TaskSchedule, summary
from .hooks import Hook, StepContext

DESCRIPTION = ("accuracy[t, j] / loss[t, j]: theta after task t (at step boundaries[t+1]) on task j's test split, "
               "the outputs of tasks 0..t with class-incremental masking, else all (no task identity); NaN = row not reached yet")


class TaskData:
    """Each task's training and test examples, on the training device.

    Args:
        ds: the loaded dataset (`eos_probe.data.Dataset`) holding every task's classes.
        schedule: the task schedule (active).
        device, dtype: where the data go (floating inputs take the parameters' dtype).
        mask_old_logits: while training task t, only its own classes' outputs are in the loss (see `output_mask`).
    """

    def __init__(self, ds: Any, schedule: TaskSchedule, device: torch.device, dtype: torch.dtype,
                 mask_old_logits: bool) -> None:
        if ds.y_train.dim() != 1 or ds.y_train.is_floating_point():
            raise UserError(f"tasks split a classification dataset by class; {ds.name!r} has no class labels")
        self.schedule, self.mask_old_logits, self.num_classes = schedule, mask_old_logits, int(ds.num_classes)
        ids = list(ds.meta.get("classes") or range(self.num_classes))  # dataset class id of each label
        self.labels: list[list[int]] = []
        for task in schedule.classes:
            bad = [c for c in task if c not in ids]
            if bad:
                raise UserError(f"tasks name classes {bad} that dataset {ds.name!r} does not have "
                                f"(its classes: {min(ids)}..{max(ids)})")
            self.labels.append([ids.index(c) for c in task])

        def move(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype if x.is_floating_point() else None)

        self.x_train, self.y_train = move(ds.x_train), ds.y_train.to(device)
        self.test = []
        for t, labels in enumerate(self.labels):
            keep = torch.isin(ds.y_test, torch.tensor(labels))
            if not bool(keep.any()):
                raise UserError(f"dataset {ds.name!r} has no test examples of task {t}'s classes; "
                                "the accuracy table needs them")
            self.test.append((move(ds.x_test[keep]), ds.y_test[keep].to(device)))
        for t in range(len(self.labels)):
            if not bool(self._where(range(t, t + 1)).any()):
                raise UserError(f"dataset {ds.name!r} has no training examples of task {t}'s classes")

    def _where(self, tasks: Sequence[int]) -> torch.Tensor:
        labels = [c for t in tasks for c in self.labels[t]]
        return torch.isin(self.y_train, torch.tensor(labels, device=self.y_train.device))

    def train(self, tasks: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples of the union of `tasks`, in dataset order."""
        keep = self._where(tasks)
        return self.x_train[keep], self.y_train[keep]

    def seen_mask(self, t: int) -> torch.Tensor | None:
        """Outputs a class-incremental head has after task t: the classes of tasks 0..t (None: masking off, or
        every class). The accuracy table's row t is evaluated on these, as a head grown task by task would be."""
        if not self.mask_old_logits:
            return None
        mask = torch.zeros(self.num_classes, dtype=torch.bool, device=self.y_train.device)
        mask[[c for s in range(t + 1) for c in self.labels[s]]] = True
        return None if bool(mask.all()) else mask

    def output_mask(self, t: int) -> torch.Tensor | None:
        """Outputs in the loss while training task t: its own classes only (None: masking off).

        Earlier tasks' classes are masked as docs/theory.md §5b says; later tasks' classes too, because a
        class-incremental head has no output for a class before its task (a head that grows). Left in, the
        first task's softmax pushes every later class's logits down on all images, and a later task — which
        never sees the earlier classes' logits — cannot lift its classes above them: measured on
        recipes/zo-fc.toml, task 2 stayed at 0 % accuracy for FO, ZO and hybrid alike.
        """
        if not self.mask_old_logits:
            return None
        mask = torch.zeros(self.num_classes, dtype=torch.bool, device=self.y_train.device)
        mask[self.labels[t]] = True
        return None if bool(mask.all()) else mask

    def apply(self, objective: Any, t: int) -> None:
        """Make `objective` train task t (in place): its data, output mask, `task` and `retention`."""
        objective.set_data(*self.train([t]), self.output_mask(t))
        objective.task = t
        # docs/theory.md §5a: the retention loss L_r is the union of the earlier tasks' training sets, on the
        # outputs the head has now (tasks 0..t with class-incremental masking, else all), as the table sees them
        ret = None
        if t > 0:  # a task with 0 steps counts as trained (init_from)
            ret = Objective(objective.model, *self.train(range(t)), loss=objective.loss_name,
                            num_classes=objective.num_classes, microbatch=objective.microbatch,
                            hvp_backend=objective.hvp_backend)
            ret.probe_memory = objective.probe_memory
            ret.output_mask = self.seen_mask(t)
        objective.retention = ret


class TaskHook(Hook):
    """Switches tasks at their boundaries and writes /tasks/* (see the module docstring).

    Args:
        data: the tasks' training and test data and the schedule.
        start: the step the run starts at (the checkpoint's when resuming).
        resuming: the run files were resumed (their table rows before `start` are kept).
    """

    writes = frozenset({"before:task"})

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
