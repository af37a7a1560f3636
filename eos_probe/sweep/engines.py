"""Executors of sweep jobs: a local process pool (default) and Ray (optional extra `eos-probe[ray]`).

Both run `eos_probe.sweep.job.run_job` on each job (a list of configs) and yield (job index, results) as jobs
finish, so the driver can record each finished point at once. A job whose worker dies (kill -9, out of
memory) is retried once (it resumes from its checkpoints); if it dies again it is reported interrupted.
The manifest's ``task`` keys and the ``--cpus-per-task`` flags keep Ray's word for a scheduled call.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Iterator

from ..errors import UserError

Task = list  # list of run-config dicts
Result = list  # list of result dicts, one per config


def _die_with_parent() -> None:
    """Worker initializer: on Linux, get SIGKILL when the driver dies, so a killed driver leaves no orphan
    writing a run file that the next invocation would resume at the same time."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_died(configs: Task, why: str) -> Result:
    return [{"file": c.get("out"), "status": "interrupted", "stop_reason": "", "stop_step": None,
             "error": f"worker died ({why}); run the sweep again to resume it", "task_seconds": float("nan")}
            for c in configs]


class LocalEngine:
    """A process pool (spawned workers: a fork of a process holding torch threads can deadlock)."""

    name = "local"

    def __init__(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.threads = threads
        self.retried = 0  # tasks whose worker died and that were run again

    def run(self, tasks: list[Task], fn: Any = None) -> Iterator[tuple[int, Result]]:
        """Run `fn(task, threads)` (default: train the task's points) for every task; yield as they finish."""
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        from .job import run_job

        fn = fn or run_job
        todo = list(range(len(tasks)))
        for attempt in range(2):
            if not todo:
                return
            lost: list[int] = []
            with ProcessPoolExecutor(max_workers=min(self.workers, len(todo)), mp_context=mp.get_context("spawn"),
                                     initializer=_die_with_parent) as pool:
                futures = {pool.submit(fn, tasks[i], self.threads): i for i in todo}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = futures[fut]
                        try:
                            yield i, fut.result()
                        except BrokenProcessPool:
                            lost.append(i)
            todo = sorted(lost)
            self.retried += len(todo) if attempt == 0 else 0
        for i in todo:
            yield i, _worker_died(tasks[i], "twice")


def check_address(address: str, timeout: float = 5.0) -> None:
    """`HOST:PORT` must accept a TCP connection (Ray would otherwise retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        host, sep, port = address[len("ray://"):].rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--address must be 'auto' or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); "
                        "start one with `ray start --head` or drop --address to start a local one") from None


class RayEngine:
    """One Ray task per point or pack, each with its own CPU/GPU request.

    `address` joins an existing cluster ("auto": the one started on this machine by `ray start`); None starts
    a local one for the duration of the sweep (reused if this process already initialised Ray).
    """

    name = "ray"

    def __init__(self, address: str | None, cpus_per_task: float, gpus_per_task: float, threads: int,
                 num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--engine ray needs Ray: pip install -e '.[ray]' (or pip install 'eos-probe[ray]')") from None
        self.ray = ray
        self.cpus_per_task, self.gpus_per_task, self.threads = cpus_per_task, gpus_per_task, threads
        self.started = False
        if ray.is_initialized():
            return
        if address not in (None, "auto"):
            check_address(address)
        try:
            if address is None:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR", configure_logging=True)
            else:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot connect to Ray at {address}: {' '.join(str(e).split())[:200]}") from None
        self.started = True

    def run(self, tasks: list[Task], fn: Any = None) -> Iterator[tuple[int, Result]]:
        """Run `fn(task, threads)` (default: train the task's points) as one Ray task per task."""
        from .job import run_job

        ray = self.ray
        remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=1)(fn or run_job)
        refs = {remote.remote(t, self.threads): i for i, t in enumerate(tasks)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = refs[ref]
                    try:
                        res = ray.get(ref)
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.RayTaskError, ray.exceptions.RaySystemError) as e:
                        res = _worker_died(tasks[i], type(e).__name__)
                    yield i, res
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_engine(engine: str, *, workers: int | None, n_tasks: int, address: str | None,
                cpus_per_task: float | None = None, gpus_per_task: float = 0.0) -> Any:
    """The executor for `engine` ('local' | 'ray') with torch threads split over the concurrent tasks."""
    cores = os.cpu_count() or 1
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be a positive integer, got {workers}")
    if engine == "local":
        if address is not None:
            raise UserError("--address is for --engine ray")
        n = workers or max(1, min(cores, n_tasks))
        return LocalEngine(n, max(1, cores // min(n, max(n_tasks, 1))))
    if engine == "ray":
        n = workers or max(1, min(cores, n_tasks))
        cpt = cpus_per_task if cpus_per_task is not None else max(1, cores // min(n, max(n_tasks, 1)))
        # a local cluster gets --workers slots of cpus_per_task each; a joined cluster schedules by its own size
        num_cpus = int(round(n * cpt)) if address is None else None
        return RayEngine(address, cpt, gpus_per_task, max(1, int(cpt)), num_cpus=num_cpus)
    raise UserError(f"unknown engine {engine!r}; choose local or ray")


__all__ = ["LocalEngine", "RayEngine", "check_address", "make_engine"]
