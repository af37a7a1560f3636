"""The sweep driver: expand the grid, look at what is on disk, run what is missing, keep `sweep.json`.

Re-running is idempotent because the run files are the truth: a point whose file says finished or diverged
is skipped, one whose file has no status (killed) is resumed from its checkpoint, a missing one is trained.
The manifest is rewritten atomically (temp file, fsync, rename) after every finished task, so killing the
driver at any moment loses no finished point and leaves a readable manifest.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from .spec import Point, SweepSpec, packs
from .job import config_difference, file_state, is_done

MANIFEST = "sweep.json"
MANIFEST_VERSION = 1


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class SweepReport:
    out_dir: Path
    entries: list[dict[str, Any]]
    seconds: float
    skipped: int
    engine: str
    tasks: int = 0
    retried: int = 0  # tasks re-run after their worker died
    counts: dict[str, int] = field(default_factory=dict)


def _entry(p: Point, out_dir: Path) -> dict[str, Any]:
    return {"name": p.name, "settings": p.settings, "file": os.path.relpath(p.file, out_dir), "status": "pending",
            "stop_reason": "", "stop_step": None, "error": "", "task": None, "seconds": None}


def prepare_out_dir(out_dir: Path) -> None:
    """Make the output directory; its parent must exist (a typo is not silently turned into a new tree),
    except under runs/, the tool's own directory."""
    if out_dir.is_dir():
        return
    if out_dir.exists():
        raise UserError(f"--out-dir {out_dir} exists and is not a directory")
    parent = out_dir.parent
    if not parent.exists() and parent.parts[:1] != ("runs",):
        raise UserError(f"--out-dir {out_dir}: parent directory {parent} does not exist")
    out_dir.mkdir(parents=True)


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, engine: str = "local", workers: int | None = None,
              address: str | None = None, pack: bool = True, cpus_per_task: float | None = None,
              gpus_per_task: float = 0.0, echo: Callable[[str], None] = lambda s: None,
              engine_obj: Any = None) -> SweepReport:
    """Run every point of `spec` that is not done yet; return what each point's file says at the end."""
    from .engines import make_engine

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    points = spec.points(out_dir)
    manifest_path = out_dir / MANIFEST
    entries = [_entry(p, out_dir) for p in points]
    todo_resume, todo_fresh = _triage(points, entries)
    skipped = sum(1 for e in entries if e.get("skipped"))
    tasks = _tasks(points, entries, todo_resume, todo_fresh, pack)

    def save() -> None:
        write_json_atomic(manifest_path, {
            "version": MANIFEST_VERSION, "config_file": spec.source, "engine": engine,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base": spec.base, "sweep": spec.axes, "zip": spec.zips,
            "points": [{k: v for k, v in e.items() if k != "skipped"} for e in entries]})

    eng = None
    if tasks:  # before anything is written: a cluster that cannot be reached leaves no trace
        eng = engine_obj or make_engine(engine, workers=workers, n_tasks=len(tasks), address=address,
                                        cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task)
    try:
        prepare_out_dir(out_dir)
    except BaseException:
        if engine_obj is None and hasattr(eng, "close"):
            eng.close()
        raise
    save()
    n = len(points)
    if skipped:
        echo(f"{skipped} of {n} points already done (skipped); {n - skipped - sum(e['status'] == 'failed' for e in entries)} to run")
    if tasks:
        _execute(eng, engine_obj is None, points, entries, tasks, skipped, save, echo)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    return SweepReport(out_dir, entries, time.perf_counter() - t0, skipped, engine, len(tasks),
                       getattr(eng, "retried", 0), counts)


def _triage(points: list[Point], entries: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Read each point's file: mark done, failed (unreadable, other settings) or resuming points in
    ``entries``; returns the indices to resume and those to train afresh."""
    todo_resume: list[int] = []
    todo_fresh: list[int] = []
    for i, p in enumerate(points):
        st = file_state(p.file)
        e = entries[i]
        if st["state"] == "missing":
            todo_fresh.append(i)
            continue
        if st["state"] == "unreadable":
            e.update(status="failed", error=st["error"] + "; move it away to retrain the point")
            continue
        diff = config_difference(st.get("config"), p.config)
        if diff:
            e.update(status="failed", error=f"{p.file} holds a run with other settings ({', '.join(diff)}); "
                                            "move it away or use another --out-dir")
            continue
        if is_done(st, p.config["steps"]):
            e.update(status=st["state"], stop_reason=st["stop_reason"], stop_step=st["stop_step"], skipped=True)
            continue
        e["status"] = "resuming"
        todo_resume.append(i)
    return todo_resume, todo_fresh


def _tasks(points: list[Point], entries: list[dict[str, Any]], todo_resume: list[int], todo_fresh: list[int],
           pack: bool) -> list[list[int]]:
    """Group the points to run into tasks (resumed points alone; fresh ones packed when ``pack``), recorded in
    each entry's "task"."""
    tasks: list[list[int]] = [[i] for i in todo_resume]
    if pack:
        index = {p.name: i for i, p in enumerate(points)}
        tasks += [[index[q.name] for q in group] for group in packs([points[i] for i in todo_fresh])]
    else:
        tasks += [[i] for i in todo_fresh]
    for t, idx in enumerate(tasks):
        for i in idx:
            entries[i]["task"] = t
    return tasks


def _execute(eng, owned: bool, points: list[Point], entries: list[dict[str, Any]], tasks: list[list[int]],
             done_count: int, save: Callable[[], None], echo: Callable[[str], None]) -> None:
    """Run the tasks on the engine, recording each result in its entry and the manifest as it arrives;
    closes the engine if the sweep made it (``owned``)."""
    n = len(points)
    try:
        for t, results in eng.run([[points[i].config for i in idx] for idx in tasks]):
            for i, res in zip(tasks[t], results):
                e = entries[i]
                e.update(status=res["status"], stop_reason=res.get("stop_reason", ""),
                         stop_step=res.get("stop_step"), error=res.get("error", ""),
                         seconds=res.get("task_seconds"))
                done_count += 1
                echo(f"[{done_count}/{n}] {e['name']}: {e['status']}" +
                     (f" at step {e['stop_step']} ({e['stop_reason']})" if e["status"] == "diverged" else "") +
                     (f": {e['error']}" if e["error"] else ""))
            save()
    finally:
        if owned and hasattr(eng, "close"):
            eng.close()
    if getattr(eng, "retried", 0):
        echo(f"{eng.retried} task(s) ran again after their worker died (resumed from their checkpoints)")


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    p = Path(out_dir)
    if not p.is_dir():
        raise UserError(f"{p} is not a directory (expected a sweep output directory)")
    m = p / MANIFEST
    if not m.is_file():
        raise UserError(f"{p} has no {MANIFEST}; is it the --out-dir of an `eos-probe sweep`?")
    try:
        return json.loads(m.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{m} is damaged ({e}); run the sweep again to rewrite it") from None
