"""What one worker does with one sweep job: train (or resume) a point, or a pack of stacked points.

A job is a list of run configs (dicts with `out` set); "job", not "task", because a task is a class split of
a continual-learning run (`eos_probe.tasks`). Fresh points of a pack train together with
`train_sweep`; a point whose file exists without a final status (interrupted) is resumed bitwise with
`train(resume=...)`, extended if its config asks for more steps. The run file is the truth about a point:
a job returns what the files say, plus the error of a point that failed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

#: run-file states: no file | interrupted (no status) | finished | diverged
DONE = ("finished", "diverged")


def file_state(path: str | Path) -> dict[str, Any]:
    """{"state": missing|interrupted|finished|diverged|unreadable, "config", "stop_reason", "stop_step", "error"}."""
    from ..errors import UserError
    from ..reading import open_run

    p = Path(path)
    if not p.exists():
        return {"state": "missing"}
    try:  # open_run also reads a file whose SWMR writer was killed (consistency flags still set)
        with open_run(p) as f:
            attrs = dict(f.attrs)
    except (UserError, OSError) as e:
        return {"state": "unreadable", "error": " ".join(str(e).split())}

    def dec(v: Any) -> Any:
        return v.decode() if isinstance(v, bytes) else v

    cfg = dec(attrs.get("config"))
    out: dict[str, Any] = {"state": dec(attrs.get("status", "interrupted")),
                           "config": json.loads(cfg) if isinstance(cfg, str) else None,
                           "stop_reason": dec(attrs.get("stop_reason", "")),
                           "stop_step": int(attrs["stop_step"]) if "stop_step" in attrs else None,
                           "seconds": float(attrs.get("train_seconds", float("nan")))}
    return out


def is_done(st: dict[str, Any], steps: int) -> bool:
    """Diverged, or finished with at least `steps` steps (a finished run asked for more is extended)."""
    return st["state"] == "diverged" or (st["state"] == "finished" and (st.get("stop_step") or 0) >= steps)


def config_difference(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> list[str]:
    """Keys whose recorded value differs from the point's config (out and steps ignored; data is resolved at
    build time)."""
    if stored is None:
        return ["config"]
    diff = []
    for k, v in wanted.items():
        if k in ("out", "steps") or (k == "data" and v is None):  # more steps extend a run
            continue
        if stored.get(k) != v and not (isinstance(v, list) and list(stored.get(k) or []) == v):
            diff.append(k)
    return diff


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def run_job(configs: list[dict[str, Any]], threads: int | None = None) -> list[dict[str, Any]]:
    """Train, resume or extend the points of one job; one result dict per config, in order.

    Never raises for a point's own failure: the result has status "failed" and the error in one line.
    """
    import torch

    from ..config import TrainConfig
    from ..errors import DivergedError
    from ..train import train, train_sweep

    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    errors: dict[int, str] = {}
    fresh: list[int] = []
    for i, cfg in enumerate(configs):
        st = file_state(cfg["out"])
        if st["state"] == "missing":
            fresh.append(i)
            continue
        if is_done(st, cfg["steps"]):
            continue
        try:  # interrupted, or finished with fewer steps than asked: continue from the checkpoint
            train(None, resume=cfg["out"], steps=cfg["steps"], progress=False)
        except DivergedError:
            pass  # recorded in the file
        except Exception as e:  # noqa: BLE001 - a failed point is reported, the others go on
            errors[i] = _one_line(e)
    if fresh:
        try:
            cfgs = [TrainConfig(**configs[i]) for i in fresh]
            if len(cfgs) == 1:
                try:
                    train(cfgs[0], progress=False)
                except DivergedError:
                    pass
            else:
                train_sweep(cfgs, progress=False)
        except Exception as e:  # noqa: BLE001
            for i in fresh:
                errors[i] = _one_line(e)
    seconds = time.perf_counter() - t0
    results = []
    for i, cfg in enumerate(configs):
        st = file_state(cfg["out"])
        res = {"file": cfg["out"], "status": st["state"] if i not in errors else "failed",
               "stop_reason": st.get("stop_reason", ""), "stop_step": st.get("stop_step"),
               "error": errors.get(i, ""), "task_seconds": seconds, "pid": os.getpid()}
        if i not in errors and st["state"] not in DONE:
            res["status"], res["error"] = "failed", st.get("error") or f"run ended without a status ({st['state']})"
        results.append(res)
    return results
