"""The probe's memory budget and cost, in units a user can check (bytes, forward-pass equivalents)."""
from __future__ import annotations

import re
import statistics
import time

import torch

from .errors import UserError

#: default peak-memory budget of one probe (on top of the model and data), in bytes
DEFAULT_PROBE_MEMORY = 2 * 2**30

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """'2GB', '512MB', '1.5g', 3e9 → bytes (binary units: 1 GB = 2**30 B). Raises UserError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise UserError(f"probe memory must be a size such as 2GB or 512MB, got {text!r}")
        value, unit = float(m.group(1)), m.group(2).lower()
    n = int(value * _UNITS[unit])
    if n < 16 * 2**20:
        raise UserError(f"probe memory must be at least 16MB, got {text!r}")
    return n


def forward_seconds(objective, theta: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of one full-batch loss evaluation at θ (after one warm-up)."""
    th = theta if theta.dim() == 1 else theta.reshape(-1, theta.shape[-1])[0]
    objective.loss(th)
    times = []
    for _ in range(repeats):
        if th.device.type == "cuda":
            torch.cuda.synchronize(th.device)
        t0 = time.perf_counter()
        objective.loss(th)
        if th.device.type == "cuda":
            torch.cuda.synchronize(th.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def hvp_seconds(objective, theta: torch.Tensor, backend: str = "auto", repeats: int = 2) -> float:
    """Median wall time of one Hessian-vector product at θ (after one warm-up), with the probe's back end."""
    from .curvature import HessianOperator

    op = HessianOperator(objective, theta, backend=backend)
    v = torch.randn(theta.shape[-1], generator=torch.Generator().manual_seed(0), dtype=theta.dtype).to(theta.device)
    op.matvec(v)
    times = []
    for _ in range(repeats):
        if theta.device.type == "cuda":
            torch.cuda.synchronize(theta.device)
        t0 = time.perf_counter()
        op.matvec(v)
        if theta.device.type == "cuda":
            torch.cuda.synchronize(theta.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_forwards(optimizer, log_every: int, dim: int) -> float:
    """Cost of one training step in forward passes: the source's own (`forwards_per_step`: 2q central or
    q+1 forward ZO, 3 for an exact gradient, 2B for CoCD), plus the loss log's forward every `log_every`
    steps for sources that do not measure the loss themselves."""
    src = optimizer.source
    log = 0.0 if src.evaluates_loss else 1.0 / log_every
    return src.forwards_per_step(dim) + log


# ------------------------------------------------------------------------------------------ measuring
def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux: VmHWM via /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_since(baseline: int | None = None) -> tuple[int, int]:
    """(peak RSS bytes since the last reset, current RSS): VmHWM/VmRSS on Linux, else ru_maxrss (lifetime)."""
    hwm, cur = _status_bytes("VmHWM"), _status_bytes("VmRSS")
    if hwm is None:
        import resource
        import sys

        scale = 1 if sys.platform == "darwin" else 1024
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return hwm, cur if cur is not None else hwm


def measure_probe(setup, *, probe_specs: list[str] | None = None, step: int = 0) -> dict:
    """Run the default (or the given) probe once at the setup's θ, as the trainer would, and measure it.

    Returns probe_seconds, forward_seconds, probe_forward_equivalents (probe wall time over one full-batch
    forward, measured in the same process), probe_peak_bytes (peak RSS during the probe above the RSS before
    it: the probe's own memory, on top of model and data), probe_hvps, probe_metrics, probe_memory (budget).
    CUDA: the peak is torch's max_memory_allocated increase instead.
    """
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from .probe import build_probe
    from .store import RunWriter

    cfg = setup.config if probe_specs is None else replace(setup.config, probe=list(probe_specs))
    obj, theta = setup.objective, setup.theta
    fwd = forward_seconds(obj, theta)
    cuda = theta.device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        writer = RunWriter.create(Path(tmp) / "probe.h5", {"config": cfg.to_dict()})
        try:
            if cuda:
                torch.cuda.synchronize(theta.device)
                torch.cuda.reset_peak_memory_stats(theta.device)
                base = torch.cuda.memory_allocated(theta.device)
            else:
                reset_peak_rss()
                base = peak_rss_since()[1]
            t0 = time.perf_counter()
            probe = build_probe(cfg, setup)
            probe.declare(writer)  # the HVP back-end choice happens here, as in a run
            state = setup.optimizer.init(theta)
            row = probe.run(step=step, theta=theta, state=state, optimizer=setup.optimizer, objective=obj,
                            writer=writer, config=cfg)
            if cuda:
                torch.cuda.synchronize(theta.device)
            seconds = time.perf_counter() - t0
            peak = (torch.cuda.max_memory_allocated(theta.device) if cuda else peak_rss_since()[0]) - base
        finally:
            writer.close()
    nhvp = sum(int(v) for k, v in row.items() if k.endswith("_nhvp") and getattr(v, "ndim", 0) == 0
               and v == v)
    return {"probe_metrics": [m.name for m in probe.metrics], "probe_seconds": seconds, "forward_seconds": fwd,
            "probe_forward_equivalents": seconds / fwd if fwd > 0 else float("nan"),
            "probe_peak_bytes": int(max(0, peak)), "probe_hvps": nhvp, "probe_hvp_backend": probe._backend,
            "probe_memory": int(getattr(obj, "probe_memory", 0))}
