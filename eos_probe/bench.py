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
from collections.abc import Callable
from typing import Any

import torch

from ._util import sync as _sync
from .config import TrainConfig

#: keys of `run_bench`'s result that are ratios (the test checks they are finite and positive)
RATIO_KEYS = ("zo_step_over_two_forwards", "fo_step_over_forward_backward", "batched_q_speedup",
              "batched_q_auto_speedup", "sweep_speedup", "sweep_speedup_fo", "hvp_over_grad",
              "microbatch_speedup", "cocd_step_over_2b_forwards")


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


def run_bench(model: str = "cnn", *, model_args: dict | None = None, n_per_class: int | None = None,
              device: str = "auto", dtype: str = "float32", repeats: int = 5, queries: int = 8, copies: int = 3,
              microbatch: int | None = None, log: Callable[[str], None] | None = None,
              cocd_block: int | None = None, probe: bool = True,
              probe_memory: str | None = None, optimizer: str = "zo-gd") -> dict[str, Any]:
    """Measure the issue-6 ratios for one model on the default data; returns a JSON-ready dict.

    `repeats` rounds per ratio (the q-query and HVP items, several times dearer, use about half).
    """
    from .objective import Objective
    from .optim import make_optimizer
    from .train import _stack_optimizers, build

    say = log or (lambda s: None)
    cfg = TrainConfig(model=model, model_args=dict(model_args or {}), n_per_class=n_per_class, device=device,
                      dtype=dtype, microbatch=microbatch, probe=[], optimizer="zo-gd")
    setup = build(cfg)
    obj, dev, module = setup.objective, setup.device, setup.model
    theta0 = setup.theta
    chunks = [x for x, _ in obj.chunks]
    few = max(1, (repeats + 1) // 2)
    out: dict[str, Any] = {
        "model": model, "model_args": dict(model_args or {}), "device": device_name(dev), "dtype": dtype,
        "n_params": obj.dim, "n_train": int(obj.x.shape[0]), "microbatch": obj.microbatch or int(obj.x.shape[0]),
        "repeats": repeats, "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }

    def module_forward() -> None:
        with torch.inference_mode():
            for x in chunks:
                module(x)

    def module_forward_backward() -> None:
        module.zero_grad(set_to_none=True)
        for (x, y) in obj.chunks:
            f = module(x)
            target = y.clamp(min=0)
            if obj.loss_name == "mse":
                per = 0.5 * ((f - torch.nn.functional.one_hot(target, obj.num_classes).to(f.dtype)) ** 2).sum(-1)
            else:
                per = torch.nn.functional.cross_entropy(f.reshape(-1, f.shape[-1]), target.reshape(-1),
                                                        reduction="none").reshape(target.shape)
            ((per * (y >= 0)).sum() / obj.n_terms).backward()

    # ---- ZO step vs two forwards -------------------------------------------------------------------
    say("ZO step vs two forwards")
    zo = make_optimizer("zo-gd", lr=1e-6, seed=0)
    th = theta0.clone()
    st = zo.init(th)
    counter = iter(range(10**9))
    t = interleaved({"zo": lambda: zo.step(obj, th, st, next(counter)),
                     "fwd2": lambda: (module_forward(), module_forward()),
                     "obj2": lambda: (obj.loss(th), obj.loss(th))}, repeats, dev)
    out["zo_step_over_two_forwards"] = ratio(t, "zo", "fwd2")
    out["zo_step_over_two_objective_forwards"] = ratio(t, "zo", "obj2")
    out["forward_ms"] = 1e3 * statistics.median(t["fwd2"]) / 2
    out["zo_step_ms"] = 1e3 * statistics.median(t["zo"])

    # ---- full batch vs micro-batches (the forward itself) -------------------------------------------
    if obj.microbatch:
        say("micro-batching")
        full = Objective(module, obj.x, obj.y, loss=obj.loss_name, num_classes=obj.num_classes, microbatch=None)
        t = interleaved({"full": lambda: full.loss(th), "chunked": lambda: obj.loss(th)}, few, dev)
        out["microbatch_speedup"] = ratio(t, "full", "chunked")
    else:
        out["microbatch_speedup"] = 1.0

    # ---- FO step vs forward+backward ---------------------------------------------------------------
    say("FO step vs forward+backward")
    fo = make_optimizer("gd", lr=1e-6)
    th_fo = theta0.clone()
    st_fo = fo.init(th_fo)
    t = interleaved({"fo": lambda: fo.step(obj, th_fo, st_fo, 0), "fb": module_forward_backward}, repeats, dev)
    out["fo_step_over_forward_backward"] = ratio(t, "fo", "fb")
    out["fo_step_ms"] = 1e3 * statistics.median(t["fo"])

    # ---- q queries: loop vs batched ------------------------------------------------------------------
    say(f"q = {queries}: query loop vs batched")
    srcs = {mode: make_optimizer("zo-gd", lr=1e-6, queries=queries, seed=0) for mode in ("loop", "batched")}
    for mode, o in srcs.items():
        o.source.query_mode = mode
    ths = {mode: theta0.clone() for mode in srcs}
    sts = {mode: srcs[mode].init(ths[mode]) for mode in srcs}
    t = interleaved({mode: (lambda m=mode: srcs[m].step(obj, ths[m], sts[m], 0)) for mode in srcs}, few, dev)
    out["queries"] = queries
    out["batched_q_speedup"] = ratio(t, "loop", "batched")
    auto = make_optimizer("zo-gd", lr=1e-6, queries=queries).source.batch_queries(obj, theta0)
    out["batched_q_auto"] = "batched" if auto else "loop"
    out["batched_q_auto_speedup"] = out["batched_q_speedup"] if auto else 1.0

    # ---- K-copy sweep vs K sequential single steps -------------------------------------------------
    for preset, key in (("zo-gd", "sweep_speedup"), ("gd", "sweep_speedup_fo")):
        say(f"sweep of {copies} copies ({preset}) vs {copies} sequential steps")
        lrs = [1e-6 * (k + 1) for k in range(copies)]
        singles = [make_optimizer(preset, lr=lr, seed=0) for lr in lrs]
        stacked = _stack_optimizers([make_optimizer(preset, lr=lr, seed=0) for lr in lrs])
        th_s = [theta0.clone() for _ in lrs]
        st_s = [o.init(x) for o, x in zip(singles, th_s)]
        th_k = theta0.expand(copies, -1).clone()
        st_k = stacked.init(th_k)

        def sequential() -> None:
            for o, x, s in zip(singles, th_s, st_s):
                o.step(obj, x, s, 0)

        t = interleaved({"seq": sequential, "sweep": lambda: stacked.step(obj, th_k, st_k, 0)}, repeats, dev)
        out[key] = ratio(t, "seq", "sweep")
    out["copies"] = copies

    # ---- HVP vs gradient ------------------------------------------------------------------------------
    say("HVP vs gradient")
    backend = obj.choose_hvp_backend(theta0) if obj.hvp_backend == "auto" else obj.hvp_backend
    op = obj.hvp_at(theta0, backend)
    v = torch.randn(theta0.shape, generator=torch.Generator(dev).manual_seed(0), device=dev, dtype=theta0.dtype)
    t = interleaved({"hvp": lambda: op.matvec(v), "grad": lambda: obj.grad(theta0)}, few, dev)
    out["hvp_over_grad"] = ratio(t, "hvp", "grad")
    out["hvp_backend"] = backend

    # ---- CoCD step vs 2B forwards ------------------------------------------------------------------
    from .optim.cocd import default_block

    B = cocd_block or default_block(obj.dim)
    say(f"CoCD step (B = {B}) vs {2 * B} forwards")
    cocd = {mode: make_optimizer("cocd", lr=1e-9, cocd_block=B) for mode in ("loop", "batched")}
    for mode, o in cocd.items():
        o.source.eval_mode = mode
    th_c = {mode: theta0.clone() for mode in cocd}
    st_c = {mode: cocd[mode].init(th_c[mode]) for mode in cocd}
    steps_c = iter(range(10**9))

    def forwards_2b() -> None:
        for _ in range(2 * B):
            module_forward()

    t = interleaved({"loop": lambda: cocd["loop"].step(obj, th_c["loop"], st_c["loop"], next(steps_c)),
                     "batched": lambda: cocd["batched"].step(obj, th_c["batched"], st_c["batched"], next(steps_c)),
                     "fwd": forwards_2b}, few, dev)
    out["cocd_block"] = B
    out["cocd_step_over_2b_forwards_loop"] = ratio(t, "loop", "fwd")
    out["cocd_step_over_2b_forwards_batched"] = ratio(t, "batched", "fwd")
    auto = make_optimizer("cocd", lr=1e-9, cocd_block=B).source.batch_queries(obj, theta0)
    out["cocd_auto"] = "batched" if auto else "loop"
    out["cocd_step_over_2b_forwards"] = out[f"cocd_step_over_2b_forwards_{out['cocd_auto']}"]
    # ---- one default probe: cost in forward passes and peak memory (eos_probe.budget) ----------------
    if probe:
        from dataclasses import replace

        from .budget import measure_probe

        say(f"one default {optimizer} probe")
        pcfg = replace(cfg, optimizer=optimizer, lr=None, probe=None, probe_memory=probe_memory)
        psetup = build(pcfg)
        out.update(measure_probe(psetup))
    return out


def format_table(res: dict[str, Any]) -> str:
    """The ratios as an aligned text table, with the machine named."""
    rows = [
        ("ZO step / two forwards (q=1)", res["zo_step_over_two_forwards"], "goal <= 1.15"),
        ("FO step / forward+backward", res["fo_step_over_forward_backward"], ""),
        (f"batched-q speed-up (q={res['queries']})", res["batched_q_speedup"],
         f"auto picks {res['batched_q_auto']}: x{res['batched_q_auto_speedup']:.2f}"),
        (f"sweep throughput / sequential, ZO (K={res['copies']})", res["sweep_speedup"], ""),
        (f"sweep throughput / sequential, FO (K={res['copies']})", res["sweep_speedup_fo"], ""),
        ("HVP / gradient", res["hvp_over_grad"], f"back end {res['hvp_backend']}"),
        ("full batch / micro-batched forward", res["microbatch_speedup"], f"micro-batch {res['microbatch']}"),
        (f"CoCD step / {2 * res['cocd_block']} forwards (B={res['cocd_block']})", res["cocd_step_over_2b_forwards"],
         f"auto picks {res['cocd_auto']}; loop {res['cocd_step_over_2b_forwards_loop']:.3f}, batched "
         f"{res['cocd_step_over_2b_forwards_batched']:.3f}; goal <= 1.2"),
    ]
    head = (f"eos-probe bench: {res['model']} ({res['n_params']:,} params, {res['n_train']} examples, {res['dtype']}) "
            f"on {res['device']}, torch {res['torch']}, {res['date']}")
    width = max(len(r[0]) for r in rows)
    lines = [head, f"  forward {res['forward_ms']:.1f} ms, ZO step {res['zo_step_ms']:.1f} ms, "
                   f"FO step {res['fo_step_ms']:.1f} ms (medians)"]
    for name, value, note in rows:
        lines.append(f"  {name:<{width}}  {_fmt(value)}  {note}".rstrip())
    if "probe_forward_equivalents" in res:
        lines.append(f"  default probe ({', '.join(res['probe_metrics'])}): {res['probe_forward_equivalents']:,.0f} "
                     f"forward passes ({res['probe_seconds']:.1f} s, {res['probe_hvps']} HVPs), peak memory "
                     f"{res['probe_peak_bytes'] / 2**20:,.0f} MB (budget {res['probe_memory'] / 2**30:g} GB)")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:6.3f}" if math.isfinite(x) else "   nan"
