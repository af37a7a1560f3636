"""Speed ratios measured side by side in one process (issue 6; `eos-probe bench`).

Every figure is a ratio of two timings taken interleaved (A, B, A, B, …) on the same data, so load from
other processes hits both alike; each ratio is the median of the per-round ratios. The denominators are the
same work done the plain PyTorch way on the same micro-batches (the `nn.Module` called on its own
parameters under `inference_mode`, or `loss.backward()`), so a ratio shows what the tool's machinery adds:

  zo_step_over_two_forwards   ZO-GD step (q = 1, central) / two plain forwards   (goal ≤ 1.15)
  fo_step_over_forward_backward  GD step / one plain forward+backward
  batched_q_speedup           q-query ZO step: query loop / batched (vmapped) queries; `batched_q_auto`
                              says which one the automatic rule picks and `batched_q_auto_speedup` its gain
  sweep_speedup               K single ZO steps one after another / one step of a K-copy sweep (throughput)
  sweep_speedup_fo            the same for GD
  hvp_over_grad               one Hessian-vector product (back end chosen as the probe does) / one gradient
  microbatch_speedup          full-batch forward / forward in the automatic micro-batches
  loop_over_plain_gd, loop_over_plain_zo_gd   the trainer's step (no probe) / a plain PyTorch loop doing the
                              same work (`eos_probe.bench_loop`; goal ≤ 1.3)
  cocd_step_over_2b_forwards  one CoCD step (B coordinates, 2B perturbed losses) / 2B plain forwards, for the
                              loop and the batched evaluation; `cocd_auto` says which the automatic rule picks
                              (goal ≤ 1.2 where batched)
"""
from __future__ import annotations

import datetime
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._util import sync as _sync
from .config import TrainConfig
from .errors import InvalidValueError

#: keys of `run_bench`'s result that are ratios (the test checks they are finite and positive)
RATIO_KEYS = ("zo_step_over_two_forwards", "fo_step_over_forward_backward", "batched_q_speedup",
              "batched_q_auto_speedup", "sweep_speedup", "sweep_speedup_fo", "hvp_over_grad",
              "microbatch_speedup", "cocd_step_over_2b_forwards", "loop_over_plain_gd", "loop_over_plain_zo_gd")


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each function over `rounds` interleaved rounds (after `warmup` untimed rounds)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str, scale: float = 1.0) -> float:
    """Median over rounds of time[num] / (scale · time[den])."""
    return statistics.median(a / (scale * b) for a, b in zip(times[num], times[den]))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} threads)".replace("  ", " ")


from .bench_items import ITEMS  # noqa: E402  (the bench's items, in the order they run)


def run_bench(model: str = "cnn", *, model_args: dict | None = None, n_per_class: int | None = None,
              device: str = "auto", dtype: str = "float32", repeats: int = 5, queries: int = 8, copies: int = 3,
              microbatch: int | None = None, log: Callable[[str], None] | None = None,
              cocd_block: int | None = None, probe: bool = True,
              probe_memory: str | None = None, optimizer: str = "zo-gd",
              only: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure the issue-6 ratios for one model on the default data; returns a JSON-ready dict.

    `repeats` rounds per ratio (the q-query and HVP items, several times dearer, use about half).
    `only`: a subset of :data:`ITEMS` to run (default all; "probe" also needs `probe`).

    Raises:
        InvalidValueError: an unknown item in `only`.
    """
    items = set(ITEMS if not only else only)
    unknown = sorted(items - set(ITEMS))
    if unknown:
        raise InvalidValueError(f"unknown bench item(s) {', '.join(unknown)}; choose from {', '.join(ITEMS)}")
    from .train import build

    say = log or (lambda s: None)
    cfg = TrainConfig(model=model, model_args=dict(model_args or {}), n_per_class=n_per_class, device=device,
                      dtype=dtype, microbatch=microbatch, probe=[], optimizer="zo-gd")
    b = _Bench(build(cfg), repeats, say)
    obj = b.obj
    out: dict[str, Any] = {
        "model": model, "model_args": dict(model_args or {}), "device": device_name(b.dev), "dtype": dtype,
        "n_params": obj.dim, "n_train": int(obj.x.shape[0]), "microbatch": obj.microbatch or int(obj.x.shape[0]),
        "repeats": repeats, "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    # the items run (and their keys are written) in this order
    steps = {"zo": lambda: _zo_vs_forwards(b, out), "microbatch": lambda: _microbatching(b, out),
             "fo": lambda: _fo_vs_forward_backward(b, out), "queries": lambda: _query_modes(b, out, queries),
             "sweep": lambda: _sweeps(b, out, copies), "hvp": lambda: _hvp_vs_grad(b, out),
             "cocd": lambda: _cocd(b, out, cocd_block), "loop": lambda: _loop(cfg, out, say)}
    for name in ITEMS[:-1]:
        if name in items:
            steps[name]()
    if probe and "probe" in items:  # one default probe: cost in forward passes and peak memory (eos_probe.budget)
        from dataclasses import replace

        from .budget import measure_probe

        say(f"one default {optimizer} probe")
        pcfg = replace(cfg, optimizer=optimizer, lr=None, probe=None, probe_memory=probe_memory)
        out.update(measure_probe(build(pcfg)))
    return out


class _Bench:
    """What every bench item shares: the built setup, the round counts and the plain-torch baselines."""

    def __init__(self, setup, repeats: int, say: Callable[[str], None]) -> None:
        self.obj, self.dev, self.module, self.theta0 = setup.objective, setup.device, setup.model, setup.theta
        self.repeats = repeats
        self.few = max(1, (repeats + 1) // 2)
        self.say = say
        self.inputs = [x for x, _ in self.obj.chunks]

    def module_forward(self) -> None:
        """One plain forward of the module over the training set (the unit every ratio divides by)."""
        with torch.inference_mode():
            for x in self.inputs:
                self.module(x)

    def module_forward_backward(self) -> None:
        """Plain torch forward + backward of the mean loss (torch's own cross-entropy kernel for ce)."""
        obj, module = self.obj, self.module
        module.zero_grad(set_to_none=True)
        for (x, y) in obj.chunks:
            f = module(x)
            if obj.loss_name == "ce":  # torch's fused kernel, as a plain training loop would use
                target = y.clamp(min=0)
                per = torch.nn.functional.cross_entropy(f.reshape(-1, f.shape[-1]), target.reshape(-1),
                                                        reduction="none").reshape(target.shape)
            else:
                per = obj.loss_spec.per_term(f, y)
            ((per * (y >= 0)).sum() / obj.n_terms).backward()


def _zo_vs_forwards(b: _Bench, out: dict[str, Any]) -> None:
    """One ZO step (q = 1) against two forwards, plain and through the Objective."""
    from .optim import make_optimizer

    b.say("ZO step vs two forwards")
    obj = b.obj
    zo = make_optimizer("zo-gd", lr=1e-6, seed=0)
    th = b.th_zo = b.theta0.clone()  # the micro-batching item times its loss at this (stepped) θ
    st = zo.init(th)
    counter = iter(range(10**9))
    t = interleaved({"zo": lambda: zo.step(obj, th, st, next(counter)),
                     "fwd2": lambda: (b.module_forward(), b.module_forward()),
                     "obj2": lambda: (obj.loss(th), obj.loss(th))}, b.repeats, b.dev)
    out["zo_step_over_two_forwards"] = ratio(t, "zo", "fwd2")
    out["zo_step_over_two_objective_forwards"] = ratio(t, "zo", "obj2")
    out["forward_ms"] = 1e3 * statistics.median(t["fwd2"]) / 2
    out["zo_step_ms"] = 1e3 * statistics.median(t["zo"])


def _microbatching(b: _Bench, out: dict[str, Any]) -> None:
    """The full-batch forward against the micro-batched one (1.0 when the objective does not chunk)."""
    from .objective import Objective

    obj = b.obj
    if obj.microbatch:
        b.say("micro-batching")
        th = b.th_zo
        full = Objective(b.module, obj.x, obj.y, loss=obj.loss_name, num_classes=obj.num_classes, microbatch=None)
        t = interleaved({"full": lambda: full.loss(th), "chunked": lambda: obj.loss(th)}, b.few, b.dev)
        out["microbatch_speedup"] = ratio(t, "full", "chunked")
    else:
        out["microbatch_speedup"] = 1.0


def _fo_vs_forward_backward(b: _Bench, out: dict[str, Any]) -> None:
    """One first-order step against a plain torch forward + backward."""
    from .optim import make_optimizer

    b.say("FO step vs forward+backward")
    fo = make_optimizer("gd", lr=1e-6)
    th_fo = b.theta0.clone()
    st_fo = fo.init(th_fo)
    t = interleaved({"fo": lambda: fo.step(b.obj, th_fo, st_fo, 0), "fb": b.module_forward_backward},
                    b.repeats, b.dev)
    out["fo_step_over_forward_backward"] = ratio(t, "fo", "fb")
    out["fo_step_ms"] = 1e3 * statistics.median(t["fo"])


def _query_modes(b: _Bench, out: dict[str, Any], queries: int) -> None:
    """q queries evaluated in a loop against batched, and what the automatic choice picks."""
    from .optim import make_optimizer

    b.say(f"q = {queries}: query loop vs batched")
    srcs = {mode: make_optimizer("zo-gd", lr=1e-6, queries=queries, seed=0) for mode in ("loop", "batched")}
    for mode, o in srcs.items():
        o.source.query_mode = mode
    ths = {mode: b.theta0.clone() for mode in srcs}
    sts = {mode: srcs[mode].init(ths[mode]) for mode in srcs}
    t = interleaved({mode: (lambda m=mode: srcs[m].step(b.obj, ths[m], sts[m], 0)) for mode in srcs}, b.few, b.dev)
    out["queries"] = queries
    out["batched_q_speedup"] = ratio(t, "loop", "batched")
    auto = make_optimizer("zo-gd", lr=1e-6, queries=queries).source.batch_queries(b.obj, b.theta0)
    out["batched_q_auto"] = "batched" if auto else "loop"
    out["batched_q_auto_speedup"] = out["batched_q_speedup"] if auto else 1.0


def _sweeps(b: _Bench, out: dict[str, Any], copies: int) -> None:
    """A K-copy stacked step against K sequential single steps, zeroth and first order."""
    from .optim import make_optimizer
    from .train import _stack_optimizers

    for preset, key in (("zo-gd", "sweep_speedup"), ("gd", "sweep_speedup_fo")):
        b.say(f"sweep of {copies} copies ({preset}) vs {copies} sequential steps")
        lrs = [1e-6 * (k + 1) for k in range(copies)]
        singles = [make_optimizer(preset, lr=lr, seed=0) for lr in lrs]
        stacked = _stack_optimizers([make_optimizer(preset, lr=lr, seed=0) for lr in lrs])
        th_s = [b.theta0.clone() for _ in lrs]
        st_s = [o.init(x) for o, x in zip(singles, th_s)]
        th_k = b.theta0.expand(copies, -1).clone()
        st_k = stacked.init(th_k)

        def sequential() -> None:
            for o, x, s in zip(singles, th_s, st_s):
                o.step(b.obj, x, s, 0)

        t = interleaved({"seq": sequential, "sweep": lambda: stacked.step(b.obj, th_k, st_k, 0)}, b.repeats, b.dev)
        out[key] = ratio(t, "seq", "sweep")
    out["copies"] = copies


def _hvp_vs_grad(b: _Bench, out: dict[str, Any]) -> None:
    """One Hessian-vector product (the chosen back end) against one gradient."""
    b.say("HVP vs gradient")
    obj, theta0, dev = b.obj, b.theta0, b.dev
    backend = obj.choose_hvp_backend(theta0) if obj.hvp_backend == "auto" else obj.hvp_backend
    op = obj.hvp_at(theta0, backend)
    v = torch.randn(theta0.shape, generator=torch.Generator(dev).manual_seed(0), device=dev, dtype=theta0.dtype)
    t = interleaved({"hvp": lambda: op.matvec(v), "grad": lambda: obj.grad(theta0)}, b.few, dev)
    out["hvp_over_grad"] = ratio(t, "hvp", "grad")
    out["hvp_backend"] = backend


def _cocd(b: _Bench, out: dict[str, Any], cocd_block: int | None) -> None:
    """One CoCD step (B coordinates, looped and batched) against 2B plain forwards, and the automatic choice."""
    from .optim import make_optimizer
    from .optim.cocd import default_block

    obj = b.obj
    B = cocd_block or default_block(obj.dim)
    b.say(f"CoCD step (B = {B}) vs {2 * B} forwards")
    cocd = {mode: make_optimizer("cocd", lr=1e-9, cocd_block=B) for mode in ("loop", "batched")}
    for mode, o in cocd.items():
        o.source.eval_mode = mode
    th_c = {mode: b.theta0.clone() for mode in cocd}
    st_c = {mode: cocd[mode].init(th_c[mode]) for mode in cocd}
    steps_c = iter(range(10**9))

    def forwards_2b() -> None:
        for _ in range(2 * B):
            b.module_forward()

    t = interleaved({"loop": lambda: cocd["loop"].step(obj, th_c["loop"], st_c["loop"], next(steps_c)),
                     "batched": lambda: cocd["batched"].step(obj, th_c["batched"], st_c["batched"], next(steps_c)),
                     "fwd": forwards_2b}, b.few, b.dev)
    out["cocd_block"] = B
    out["cocd_step_over_2b_forwards_loop"] = ratio(t, "loop", "fwd")
    out["cocd_step_over_2b_forwards_batched"] = ratio(t, "batched", "fwd")
    auto = make_optimizer("cocd", lr=1e-9, cocd_block=B).source.batch_queries(obj, b.theta0)
    out["cocd_auto"] = "batched" if auto else "loop"
    out["cocd_step_over_2b_forwards"] = out[f"cocd_step_over_2b_forwards_{out['cocd_auto']}"]


def _loop(cfg: TrainConfig, out: dict[str, Any], say: Callable[[str], None]) -> None:
    """The trainer's step against a plain PyTorch loop (`eos_probe.bench_loop`), GD and ZO-GD."""
    from .bench_loop import loop_overhead

    say("trainer loop vs a plain PyTorch loop (GD, ZO-GD)")
    out.update(loop_overhead(cfg))


def format_table(res: dict[str, Any]) -> str:
    """The ratios as an aligned text table, with the machine named."""
    rows = []

    def row(key: str, name, note) -> None:
        if key in res:  # `--only` leaves items out
            rows.append((name(), res[key], note()))

    row("zo_step_over_two_forwards", lambda: "ZO step / two forwards (q=1)", lambda: "goal <= 1.15")
    row("fo_step_over_forward_backward", lambda: "FO step / forward+backward", lambda: "")
    row("batched_q_speedup", lambda: f"batched-q speed-up (q={res['queries']})",
        lambda: f"auto picks {res['batched_q_auto']}: x{res['batched_q_auto_speedup']:.2f}")
    row("sweep_speedup", lambda: f"sweep throughput / sequential, ZO (K={res['copies']})", lambda: "")
    row("sweep_speedup_fo", lambda: f"sweep throughput / sequential, FO (K={res['copies']})", lambda: "")
    row("hvp_over_grad", lambda: "HVP / gradient", lambda: f"back end {res['hvp_backend']}")
    row("microbatch_speedup", lambda: "full batch / micro-batched forward", lambda: f"micro-batch {res['microbatch']}")
    row("loop_over_plain_gd", lambda: "trainer loop / plain loop, GD",
        lambda: f"{res['loop_gd_ms']:.2f} vs {res['plain_gd_ms']:.2f} ms/step; goal <= 1.3")
    row("loop_over_plain_zo_gd", lambda: "trainer loop / plain loop, ZO-GD",
        lambda: f"{res['loop_zo_gd_ms']:.2f} vs {res['plain_zo_gd_ms']:.2f} ms/step; goal <= 1.3")
    row("cocd_step_over_2b_forwards", lambda: f"CoCD step / {2 * res['cocd_block']} forwards (B={res['cocd_block']})",
        lambda: (f"auto picks {res['cocd_auto']}; loop {res['cocd_step_over_2b_forwards_loop']:.3f}, batched "
                 f"{res['cocd_step_over_2b_forwards_batched']:.3f}; goal <= 1.2"))
    head = (f"eos-probe bench: {res['model']} ({res['n_params']:,} params, {res['n_train']} examples, {res['dtype']}) "
            f"on {res['device']}, torch {res['torch']}, {res['date']}")
    width = max((len(r[0]) for r in rows), default=0)
    lines = [head]
    if {"forward_ms", "zo_step_ms", "fo_step_ms"} <= res.keys():
        lines.append(f"  forward {res['forward_ms']:.1f} ms, ZO step {res['zo_step_ms']:.1f} ms, "
                     f"FO step {res['fo_step_ms']:.1f} ms (medians)")
    for name, value, note in rows:
        lines.append(f"  {name:<{width}}  {_fmt(value)}  {note}".rstrip())
    if "probe_forward_equivalents" in res:
        lines.append(f"  default probe ({', '.join(res['probe_metrics'])}): {res['probe_forward_equivalents']:,.0f} "
                     f"forward passes ({res['probe_seconds']:.1f} s, {res['probe_hvps']} HVPs), peak memory "
                     f"{res['probe_peak_bytes'] / 2**20:,.0f} MB (budget {res['probe_memory'] / 2**30:g} GB)")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:6.3f}" if math.isfinite(x) else "   nan"
