"""The `Probe`: runs its metrics when its schedule says so and appends their rows to the run file.

The trainer only knows this interface (`declare`, `due`, `run`, `observe`, `track_due`, `track`, `state_dict`,
`load_state_dict`), so adding a metric never edits it. The schedule (`eos_probe.probe.schedule`) is fixed
(every N steps) or a wall-time budget; under a budget, `track` logs the cheap bracket between certified probes.
"""
from __future__ import annotations

import json
import time
from typing import Any

import torch
from torch import Tensor

from ..reading import SCHEMA_VERSION
from .bands import band_formula
from .context import ProbeContext
from .registry import METRICS, Metric
from .schedule import REASONS, FixedSchedule, make_schedule
from .shared import NHVP_ATTRIBUTION, lanczos_options, rest_options
from .track import TRACK_COLUMNS, track_row


class Probe:
    """Runs a list of metrics on its schedule (every N steps, or on a wall-time budget) and appends their rows.

    Args:
        metrics: the metrics, in registration order (`build_probe` sorts them).
        every: probe every this many steps, or "auto" (the budget `settings["probe_budget"]`).
        settings: what metrics see as `run` (config dict, dim, band, objective, optimizer, θ; log_every and
            probe_budget for the schedule).
    """

    def __init__(self, metrics: list[Metric], every: int | str, settings: dict[str, Any]) -> None:
        self.metrics = metrics
        self.every = every
        self.settings = settings
        self.schedule = make_schedule(every, settings.get("probe_budget"), settings.get("log_every", 1))
        self.reason: str | None = None
        self.warm: dict[str, Tensor] = {}
        # warm starts as they were before the last run() (see state_dict) and that run's step
        self._warm_before: dict[str, Tensor] = {}
        self._last_step: int | None = None
        self._resumed = False
        self._backend: str | None = None
        self._restored_direction: Tensor | None = None

    # ---------------------------------------------------------------- trainer interface
    def declare(self, writer) -> None:
        """Declare every dataset (before the run starts) and write /bands and the /probe description."""
        writer.declare("probe", "step", "i8")
        writer.declare("probe", "seconds", "f8", attrs={"description": "wall time of the whole probe (s)"})
        writer.declare("probe", "nhvp", "i8", attrs={"description": "Hessian-vector products the whole probe spent "
                                                                    "(shared products once; = sum of *_nhvp)"})
        for m in self.metrics:
            if m.spectrum:
                grp = f"spectra/{m.name}"
                shape = m.spectrum_shape()
                writer.declare(grp, "step", "i8")
                writer.declare(grp, "nodes", "f8", shape,
                               attrs={"description": "Lanczos Ritz values, one row of n_steps per probe vector"})
                writer.declare(grp, "weights", "f8", shape,
                               attrs={"description": "Gauss quadrature weights (squared first components of the "
                                                     "Ritz vectors), one row per probe vector; 0 = padding"})
                writer.declare(grp, "nhvp", "i8", attrs={"description": "Hessian-vector products spent"})
                writer.set_attrs(grp, {"description": m.description, "operator": m.operator_name,
                                       "options": dict(m.options)})
                continue
            for c in m.columns():
                writer.declare("probe", c.name, c.dtype, c.shape, attrs=c.attrs)
        f = getattr(writer, "f", None)
        if f is not None and "probe" in f and "hvp_backend" in f["probe"].attrs:
            # a resumed run keeps the back end its earlier probes used (bitwise-identical values)
            stored = f["probe"].attrs["hvp_backend"]
            self._backend = stored.decode() if isinstance(stored, bytes) else str(stored)
        elif self._backend is None:
            self._backend = self._choose_backend()
        budget = not isinstance(self.schedule, FixedSchedule)
        if budget:  # why each probe ran, and the bracket between probes (fixed schedules keep today's layout)
            writer.declare("probe", "reason", "i1", attrs={"description": "why this probe ran",
                                                           "codes": json.dumps(REASONS)})
            for name, desc in TRACK_COLUMNS.items():
                writer.declare("track", name, "i8" if name in ("step", "nhvp") else "f8",
                               attrs={"description": desc})
        writer.set_attrs("probe", {
            **self.schedule.description(),
            "metrics": [m.name for m in self.metrics if not m.spectrum],
            "spectra": [m.name for m in self.metrics if m.spectrum],
            "specs": {m.name: dict(m.options) for m in self.metrics},
            "probe_every": self.every, "hvp_backend": self._backend, "schema_version": SCHEMA_VERSION,
            "nhvp_attribution": NHVP_ATTRIBUTION, "shared_options": self.shared_options(),
            "seeding": "stream_seed(stream_seed(seed, step, PURPOSE_PROBE), crc32(quantity), 0) per quantity"})
        band = self.settings["band"]
        writer.set_attrs("bands", {**band.as_dict(), "formula": band_formula(band)})

    def due(self, step: int, final: bool) -> bool:
        """Whether the probe runs at `step` (its schedule's decision; the reason is kept for the row)."""
        self.reason = self.schedule.due(step, final)
        return self.reason is not None

    def observe(self, step: int, loss: float, monitor: dict[str, float] | None) -> None:
        """A logged step's loss and ZO-monitor row, for the schedule's event triggers."""
        self.schedule.observe(step, loss, monitor)

    def track_due(self, step: int) -> bool:
        """Whether a tracking step (the bracket between certified probes) runs at `step`."""
        return self.schedule.track_due(step)

    def track(self, *, step: int, theta: Tensor, state: dict, optimizer, objective, writer, config,
              monitor: dict[str, float] | None) -> dict[str, Any]:
        """A tracking step: warm λ_max of a few products, the monitor's trace, and the bracket on S (one /track
        row; `eos_probe.probe.track`)."""
        t0 = time.perf_counter()
        ctx = ProbeContext(self, step, theta, state, optimizer, objective, config)
        row = track_row(self, ctx, monitor)
        row["seconds"] = time.perf_counter() - t0
        writer.append("track", {"step": step, **row})
        self.schedule.charged(row["seconds"], "track", step, row)
        return row

    def run(self, *, step: int, theta: Tensor, state: dict, optimizer, objective, writer, config) -> dict[str, Any]:
        """Measure every metric at θ (never modifying θ or the optimizer state) and append the rows."""
        t0 = time.perf_counter()
        if self._resumed:
            self._resumed = False
            # the checkpoint at step s holds the state after any probe at s; an uninterrupted run reaches s
            # (and the probes after it) with the state before that probe, unless that probe was a regular one
            # that both runs did and this call is already past it
            regular = isinstance(self.schedule, FixedSchedule) and self._last_step is not None \
                and self._last_step % self.every == 0
            if self._last_step is not None and (step == self._last_step or not regular):
                self.warm = dict(self._warm_before)
        self._warm_before = dict(self.warm)  # metrics replace entries, never mutate them
        self._last_step = step
        ctx = ProbeContext(self, step, theta, state, optimizer, objective, config)
        finite = bool(torch.isfinite(theta).all())
        row: dict[str, Any] = {}
        spectra: dict[str, dict[str, Any]] = {}
        for m in self.metrics:
            # a NaN θ (divergence between two loss logs) gets NaN rows instead of a crash mid-run
            out = m.compute(ctx) if finite else m.nan_row()
            if m.spectrum:
                spectra[m.name] = out
            else:
                row.update(out)
        row["seconds"] = time.perf_counter() - t0
        row["nhvp"] = ctx.hessian_products()
        if not isinstance(self.schedule, FixedSchedule):
            row["reason"] = REASONS.get(self.reason or "first", -1)
        writer.append("probe", {"step": step, **row})
        self.schedule.charged(row["seconds"], "probe", step, row)
        for name, out in spectra.items():
            writer.append(f"spectra/{name}", {"step": step, **out})
        return row

    def state_dict(self) -> dict[str, Any]:
        """Warm-start vectors (before and after the last probe) and the HVP back end (the last direction is
        optimizer state, checkpointed with it)."""
        d: dict[str, Any] = {"warm": {k: v.clone() for k, v in self.warm.items()},
                             "warm_before": {k: v.clone() for k, v in self._warm_before.items()},
                             "last_step": self._last_step, "hvp_backend": self._backend,
                             "schedule": self.schedule.state_dict()}
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore what `state_dict` saved (a resumed run): warm starts, back end, and the last direction of
        checkpoints written before it was optimizer state."""
        self.warm = {k: v.clone() for k, v in d.get("warm", {}).items()}
        self._warm_before = {k: v.clone() for k, v in d.get("warm_before", {}).items()}
        self._last_step = d.get("last_step")
        self._resumed = True
        if d.get("hvp_backend"):
            self._backend = d["hvp_backend"]
        self._restored_direction = d.get("last_direction")
        self.schedule.load_state_dict(d.get("schedule", {}))

    def shared_options(self) -> str:
        """The resolved options of the shared Lanczos runs and deflated probe sets, per operator (JSON)."""
        ops = sorted({m.operator for m in self.metrics if isinstance(getattr(m, "operator", None), str)})
        return json.dumps({w: {"lanczos": lanczos_options(self.metrics, w), "rest": rest_options(self.metrics, w)}
                           for w in ops})

    def hvp_backend_name(self) -> str:
        """The HVP back end this probe uses (chosen by `declare`, or now by the fixed rule)."""
        if self._backend is None:
            self._backend = self._choose_backend()
        return self._backend

    def planned_hvps(self) -> int:
        """A rough count of the products one probe spends, known before it runs (for the price line): per
        operator, a Lanczos run of `MIN_KRYLOV` + k + 10 steps (a typical warm stop) and the deflated probe set;
        plus each metric's own trace or density products."""
        from ..curvature.lanczos import MIN_KRYLOV

        n = 0
        for which in sorted({m.operator for m in self.metrics if isinstance(getattr(m, "operator", None), str)}):
            ms = [m for m in self.metrics if m.operator == which]
            if any(getattr(m, "lanczos_need", lambda: None)() for m in ms):
                n += MIN_KRYLOV + lanczos_options(self.metrics, which)["k"] + 10
            if any(getattr(m, "rest_need", lambda: None)() for m in ms):
                r = rest_options(self.metrics, which)
                n += r["n_probes"] * r["n_steps"]
        for m in self.metrics:
            o = m.options
            if "n_matvec" in o and o.get("method", o.get("trace_method", "krylov")) != "krylov":
                n += int(o["n_matvec"])
            if m.spectrum and "n_probes" in o and "n_steps" in o:
                n += int(o["n_probes"]) * int(o["n_steps"])
        return max(n, 1)

    # ---------------------------------------------------------------- helpers for metrics
    def hvp_backend(self, ctx: ProbeContext) -> str:
        """The HVP back end of this run's probes (chosen once, kept across a resume)."""
        if self._backend is None:
            self._backend = self._choose_backend(ctx.objective, ctx.theta)
        return self._backend

    def _choose_backend(self, objective=None, theta=None) -> str:
        """The HVP back end, by a fixed rule: every run of a config measures with the same one.

        The two back ends round differently (last-bit differences in every probe value), and a choice timed
        at run time flips under CPU load — on the default CNN the two cost within 3% of each other for a
        probe's mix of products (README, "Curvature") — so two runs of one seed would not log bitwise the
        same values. CPU: double backward (single products, Lanczos's, ~25% faster there; batched products
        loop on CPU either way). CUDA: forward-over-reverse (batched products are one vmapped call). The
        first of the two that works on this model is used (e.g. a layer without forward-mode AD).
        """
        objective = objective or self.settings.get("objective")
        theta = theta if theta is not None else self.settings.get("theta")
        if objective.hvp_backend != "auto":
            return objective.hvp_backend
        return objective.choose_hvp_backend(theta, timed=False)

    def warm_start(self, key: str, op) -> Tensor | None:
        """Last probe's eigenvector (Lanczos mixes in a little noise itself), or None at the first probe."""
        prev = self.warm.get(key)
        if prev is None or prev.numel() != op.dim:
            return None
        return prev.to(device=op.device, dtype=op.dtype)

    def restored_direction(self) -> Tensor | None:
        """The direction that produced θ at the first probe after a resume (the optimizer has none yet)."""
        g, self._restored_direction = self._restored_direction, None
        return g

    def trace_options(self, which: str, fallback: dict[str, Any]) -> tuple[str, int, float | None]:
        """Options of the shared trace estimate: those of the trace metric on that operator, if it runs."""
        trace_metric = METRICS["trace"]  # by its registered name: the runner imports no metric module
        for m in self.metrics:
            if isinstance(m, trace_metric) and m.operator == which:
                o = m.options
                return o["method"], o["n_matvec"], o["rtol"]
        method = fallback.get("trace_method", fallback.get("method", "krylov"))
        return method, fallback.get("n_matvec", 6), fallback.get("rtol")

