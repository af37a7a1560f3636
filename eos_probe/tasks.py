"""Task sequences (class-incremental continual learning): which classes each task trains on and for how long.

A run with `tasks = "0,1;2,3"` trains one model on a sequence of class splits of an image dataset (class ids
as the dataset numbers them, like `--classes`), task t for `task_steps[t]` updates (default `steps` each).
Global step s belongs to task `task_at(s)`: task t owns steps [b_t, b_{t+1}) with b = `boundaries`. A task
with 0 steps owns no step and counts as already trained (a run started with `init_from` continues a sequence
that another run began). At every boundary b_{t+1} the parameters θ_{b_{t+1}} are evaluated on every task's
test split: row t of the accuracy/loss table (docs/theory.md §5b: a_{t,j} after task t on task j).

This module is the schedule and its config checks (numpy only: the config validation imports it); the task
data and the trainer's hook (`eos_probe.trainer.tasks`) switch the objective's data in place and write
/tasks/* to the run file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import UserError

__all__ = ["TaskSchedule", "dataset_classes", "parse_tasks", "summary", "validate_tasks"]


def parse_tasks(spec: str | Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Class splits from "0,1;2,3" (tasks separated by ';', classes by ',') or a list of lists.

    Raises:
        UserError: an empty task, a class that is not a non-negative integer, a class in two tasks (or twice).
    """
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(";")]
        tasks: list[list[Any]] = [[c.strip() for c in p.split(",") if c.strip()] if p else [] for p in parts]
    elif isinstance(spec, (list, tuple)):
        tasks = [list(t) if isinstance(t, (list, tuple)) else [t] for t in spec]
    else:
        raise UserError(f"tasks must be like \"0,1;2,3\" or a list of class lists, got {spec!r}")
    out, seen = [], set()
    for i, task in enumerate(tasks):
        if not task:
            raise UserError(f"tasks {_show(spec)}: task {i} is empty; give each task at least one class")
        classes = []
        for c in task:
            try:
                v = int(c) if not isinstance(c, (bool, float)) else None
            except (TypeError, ValueError):
                v = None
            if v is None or v < 0:
                raise UserError(f"tasks {_show(spec)}: class {c!r} is not a class index (a non-negative integer)")
            if v in seen:
                raise UserError(f"tasks {_show(spec)}: class {v} is in more than one task (or twice); "
                                "class splits must not overlap")
            seen.add(v)
            classes.append(v)
        out.append(tuple(classes))
    if not out:
        raise UserError("tasks is empty; give at least one task, e.g. \"0,1;2,3\"")
    return tuple(out)


def _show(spec: Any) -> str:
    return f"{spec!r}" if isinstance(spec, str) else ";".join(",".join(map(str, t)) for t in spec)


@dataclass(frozen=True)
class TaskSchedule:
    """Tasks, their steps and boundaries; `classes` is None for a run without tasks (one task of all steps).

    Attributes:
        classes: per task, its dataset class ids (None: no task sequence).
        steps: per task, its number of updates (≥ 0).
    """

    classes: tuple[tuple[int, ...], ...] | None
    steps: tuple[int, ...]

    @classmethod
    def from_config(cls, cfg: Any) -> "TaskSchedule":
        """The schedule of a (validated) `TrainConfig`: its tasks and task_steps, or one task of `steps`."""
        if not cfg.tasks:
            return cls(None, (int(cfg.steps),))
        classes = parse_tasks(cfg.tasks)
        steps = cfg.task_steps if cfg.task_steps is not None else [cfg.steps] * len(classes)
        return cls(classes, tuple(int(s) for s in steps))

    @property
    def active(self) -> bool:
        """Whether the run has a task sequence."""
        return self.classes is not None

    @property
    def n_tasks(self) -> int:
        return len(self.steps)

    @property
    def total(self) -> int:
        """T: the run's last step (updates 0..T-1)."""
        return sum(self.steps)

    @property
    def boundaries(self) -> list[int]:
        """b_0 = 0, b_{t+1} = b_t + steps[t]: task t owns steps [b_t, b_{t+1}); its table row is θ at b_{t+1}."""
        return [0, *np.cumsum(self.steps).tolist()]

    def task_at(self, step: int) -> int:
        """The task whose update step `step` is (the last task at the final step T, where no update follows)."""
        b = self.boundaries
        for t in range(self.n_tasks):
            if b[t] <= step < b[t + 1]:
                return t
        return self.n_tasks - 1

    def progress(self, step: int) -> float:
        """Fraction of the current task done before update `step`: in [0, 1) on update steps (1.0 at T)."""
        t = self.task_at(step)
        n = self.steps[t]
        return (step - self.boundaries[t]) / n if n else 0.0

    def ending_at(self, step: int) -> list[int]:
        """The tasks whose table row is θ_step (tasks with 0 steps end where the previous one does)."""
        b = self.boundaries
        return [t for t in range(self.n_tasks) if b[t + 1] == step]


def validate_tasks(cfg: Any) -> None:
    """Config checks of the task fields (no data needed); normalises `tasks` to lists and fills `task_steps`."""
    if not cfg.tasks:
        cfg.tasks = None
        for name in ("task_steps", "mask_old_logits"):
            if getattr(cfg, name) not in (None, False):
                raise UserError(f"{name} applies to task sequences; give tasks too (e.g. --tasks \"0,1;2,3\")")
        return
    classes = parse_tasks(cfg.tasks)
    cfg.tasks = [list(t) for t in classes]
    if cfg.task_steps is None:
        cfg.task_steps = [int(cfg.steps)] * len(classes)
    raw = cfg.task_steps
    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(",") if s.strip()]
    steps = [_count(s) for s in raw] if isinstance(raw, (list, tuple)) else [None]
    if any(s is None for s in steps):
        raise UserError(f"task_steps must be non-negative integers, one per task, got {cfg.task_steps!r}")
    if len(steps) != len(classes):
        raise UserError(f"task_steps has {len(steps)} entries but there are {len(classes)} tasks; give one per task")
    if sum(steps) == 0:
        raise UserError("task_steps are all 0: nothing to train")
    cfg.task_steps = steps
    if cfg.mask_old_logits is None:  # class-incremental heads: on by default for ce (docs/theory.md §5b)
        cfg.mask_old_logits = cfg.loss == "ce"


def _count(s: Any) -> int | None:
    """s as a step count (a non-negative integer), None if it is not one."""
    if isinstance(s, (bool, float)):
        return None
    try:
        v = int(s)
    except (TypeError, ValueError):
        return None
    return v if v >= 0 else None


def dataset_classes(cfg: Any, builtin: bool) -> list[int] | None:
    """The classes to load: `classes` if given (it must hold every task class), else the tasks' in task order.

    Args:
        cfg: the validated config.
        builtin: the dataset is one of eos-probe's image datasets (a plug-in dataset loads all its classes).
    """
    if not cfg.tasks or not builtin:
        return cfg.classes
    wanted = [c for t in cfg.tasks for c in t]
    if cfg.classes is None:
        return wanted
    missing = [c for c in wanted if c not in cfg.classes]
    if missing:
        raise UserError(f"tasks use classes {missing} that --classes {cfg.classes} does not load; "
                        "drop --classes (the tasks' classes are loaded) or add them")
    return cfg.classes


def summary(acc: np.ndarray) -> dict[str, float]:
    """docs/theory.md §5b summary of a T×T accuracy table a[t, j] (after task t, on task j); NaN until the last row.

    average_accuracy: mean over t of the mean over j ≤ t of a[t, j] (average incremental accuracy);
    last_accuracy: mean over j of a[T-1, j] (every task after the last);
    forgetting: F = mean over j < T-1 of (max over t < T-1 of a[t, j] − a[T-1, j]) (NaN for one task).
    """
    T = acc.shape[0]
    nan = float("nan")
    if T == 0 or np.isnan(acc[-1]).any():
        return {"average_accuracy": nan, "last_accuracy": nan, "forgetting": nan}
    avg = float(np.mean([acc[t, : t + 1].mean() for t in range(T)]))
    forget = float(np.mean(acc[: T - 1, : T - 1].max(axis=0) - acc[T - 1, : T - 1])) if T > 1 else nan
    return {"average_accuracy": avg, "last_accuracy": float(acc[-1].mean()), "forgetting": forget}
