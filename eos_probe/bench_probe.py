"""`eos-probe bench`'s probe item: one default probe run as the trainer would, timed and its peak memory read.

It needs the whole stack (a built run, the probe, a run file), so it lives beside the other bench modules and
not in `eos_probe.budget`, which only parses the memory budget.
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .probe import build_probe
from .store import RunWriter
from .trainer.price import forward_seconds


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
        import resource  # Unix only

        scale = 1 if sys.platform == "darwin" else 1024
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return hwm, cur if cur is not None else hwm


def measure_probe(setup: Any, *, probe_specs: list[str] | None = None, step: int = 0) -> dict:
    """Run the default (or the given) probe once at the setup's θ, as the trainer would, and measure it.

    Returns probe_seconds, forward_seconds, probe_forward_equivalents (probe wall time over one full-batch
    forward, measured in the same process), probe_peak_bytes (peak RSS during the probe above the RSS before
    it: the probe's own memory, on top of model and data), probe_hvps, probe_metrics, probe_memory (budget).
    CUDA: the peak is torch's max_memory_allocated increase instead.
    """
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
