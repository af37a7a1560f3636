#!/usr/bin/env python
"""The study behind docs/edge.md ("Does the theory predict the edge?"): every number on that page comes from here.

    python scripts/edge_study.py                     # everything (about 2 h on one core); cached blocks are kept
    python scripts/edge_study.py --only headline     # one block: headline, cnn, lstm, vit
    python scripts/edge_study.py --figures-only      # redraw figures and tables from docs/edge-study.json

Blocks:
* **headline**: the issue's run (CNN widths 2/4, hidden 8, 1,694 parameters, 40 fashion4 images, float64, ZO-GD
  η = 0.02), step 40: the prediction three ways (dense; top-20 Ritz + SLQ of the positive part; the old top-20 +
  Tr H tail), the model edges, the network's edge against the horizon, the blow-up law and the surrogates.
* **cnn / lstm / vit**: a training run that reaches S(η_run) ≈ 1 (probed ``ms_margin``), an early checkpoint well
  before the edge and the first kept checkpoint at S ≥ 0.95; at both the full experiment, and at the edge
  checkpoint continuations at 1.1 and 1.25 × η_run classified as diverge / catapult / self-stabilise.
* **bounds**: at every dense checkpoint, the necessary (Tr/T) and sufficient ((Tr + cλ_max)/T) bounds against the
  exact S(η_run); along the training runs, the probed S and its excursions above 1.

Run files and caches go to runs/edge-study/ (not committed); results to docs/edge-study.json, figures to
docs/edge-*.png, tables into docs/edge.md between its marker comments (scripts/edge_study_figures.py).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS = ROOT / "runs" / "edge-study"
OUT = ROOT / "docs" / "edge-study.json"
COMMON = dict(device="cpu", dtype="float64", optimizer="zo-gd", checkpoint_every=10**9)
HEADLINE = dict(model="cnn", model_args={"widths": [2, 4], "hidden": 8}, n_per_class=10, lr=0.02, steps=40)
FAMILIES = {  # η_run: a step size at which the run climbs to S ≈ 1 and stays near it (pilot runs, docs/edge.md)
    "cnn": dict(model="cnn", model_args={"widths": [2, 4], "hidden": 8}, n_per_class=10, lr=0.01, steps=2500),
    "lstm": dict(model="lstm", model_args={"embed": 8, "hidden": 8, "layers": 1}, data_args={"n_train": 100},
                 lr=0.12, steps=2000),
    "vit": dict(model="vit", model_args={"patch": 7, "dim": 8, "depth": 1, "heads": 2, "mlp_dim": 16},
                n_per_class=10, lr=0.012, steps=1500),
}
EXPERIMENT = dict(quad_seeds=512, quad_steps=150, quad_rounds=1, seeds=8, horizon=640, eta_grid=(0.1, 1.6, 11),
                  surrogate_at=(0.5,))
KEEP_EVERY = 50


def train_run(name: str, spec: dict, probe: bool) -> Path:
    """Train (once) and return the run file; checkpoints kept every KEEP_EVERY steps."""
    from eos_probe.config import TrainConfig
    from eos_probe.train import train

    out = RUNS / f"{name}.h5"
    if not out.exists():
        RUNS.mkdir(parents=True, exist_ok=True)
        cfg = TrainConfig(**COMMON, **spec, probe_every=KEEP_EVERY, probe=["ms_margin"] if probe else [],
                          keep_checkpoints_every=min(KEEP_EVERY, spec["steps"]) if probe else 20, out=str(out))
        train(cfg, progress=False)
    return out


def refresh_models(key: str, res: dict) -> dict:
    """Recompute the model block (and the at-run-η block) of a cached experiment made before the resampled
    estimator: a plain mean over seeds measures the typical, not the mean-square, growth at outlier-dominated
    checkpoints (docs/edge.md)."""
    from eos_probe.config import TrainConfig
    from eos_probe.sweep.edge import find_checkpoint, model_block, read_config, run_lr_block
    from eos_probe.sweep.edge_predict import measure_spectrum, predict
    from eos_probe.build import build

    if res.get("models", {}).get("positive", {}).get("estimator") == "resampled":
        return res
    cfg = read_config(res["run"])
    setup = build(TrainConfig(**{**cfg, "out": None}))
    spec = measure_spectrum(setup.objective, find_checkpoint(res["run"], res["step"])["theta"])
    pred = predict(spec, cfg)
    res["models"] = model_block(spec, pred, cfg, seeds=EXPERIMENT["quad_seeds"], steps=EXPERIMENT["quad_steps"],
                                rounds=EXPERIMENT["quad_rounds"], taylor=True, echo=lambda s: print("  " + s, flush=True))
    res["at_run_lr"] = run_lr_block(spec, cfg)
    (RUNS / f"{key}.json").write_text(json.dumps(res, default=float))
    print(f"[{key}] models refreshed", flush=True)
    return res


def refine_network(key: str, res: dict) -> dict:
    """Add the refinement step sizes (inside the longest horizon's bracket, or below the grid) to a cached network
    block made before `eos-probe edge` refined it, and re-analyse it with the current analysis."""
    from eos_probe.sweep.edge import analyse_network, refine_etas
    from eos_probe.sweep.edge_network import run_grid

    net = res.get("network")
    if not net:
        return res
    extra = [] if net.get("refined") else refine_etas(net, 3)
    kw = dict(seeds=net["seeds"], horizon=net["horizon"], factors=tuple(float(f) for f in net["factors"]))
    runs = net["runs"] + (run_grid(res["run"], res["checkpoint"], extra, **kw) if extra else [])
    res["network"] = {**analyse_network(runs, res["predicted"]["eta"], tuple(c["horizon"] for c in
                      net["by_factor"]["10"]["edge_vs_horizon"]), kw["factors"]), "refined": net.get("refined") or extra}
    (RUNS / f"{key}.json").write_text(json.dumps(res, default=float))
    if extra:
        print(f"[{key}] network refined with {len(extra)} step sizes", flush=True)
    return res


def cached(key: str, fn):
    """fn() once; its JSON result is kept in runs/edge-study/<key>.json."""
    path = RUNS / f"{key}.json"
    if path.exists():
        res = json.loads(path.read_text())
        return refine_network(key, refresh_models(key, res)) if "predicted" in res else res
    t0 = time.perf_counter()
    res = fn()
    res["wall_seconds"] = time.perf_counter() - t0
    path.write_text(json.dumps(res, default=float))
    print(f"[{key}] done in {res['wall_seconds']:.0f} s", flush=True)
    return res


def predictions_three_ways(run: Path, step: int) -> dict:
    """The headline checkpoint's η*: dense, iterative positive part, and the old Tr H tail (for the record)."""
    import numpy as np
    import torch

    from eos_probe.config import TrainConfig
    from eos_probe.curvature import HessianOperator, top_k, trace
    from eos_probe.sweep.edge import find_checkpoint, read_config
    from eos_probe.sweep.edge_predict import iterative_spectrum, measure_spectrum, predict
    from eos_probe.theory import critical_lr
    from eos_probe.build import build

    cfg = read_config(run)
    setup = build(TrainConfig(**{**cfg, "out": None}))
    theta = find_checkpoint(run, step)["theta"]
    dense = measure_spectrum(setup.objective, theta)
    it = iterative_spectrum(HessianOperator(setup.objective, theta), 20, 10, 60, seed=0)
    gen = torch.Generator().manual_seed(0)
    op = HessianOperator(setup.objective, theta)
    tk = np.atleast_1d(top_k(op, 20, tol=1e-3, generator=gen, max_iter=300).value)
    tr = float(trace(op, method="ggn+residual", n_matvec=40, generator=gen).value)
    tail = max(tr - tk.sum(), 0.0)  # the old path: the tail as Tr H − Σ top-20, spread evenly
    old = critical_lr(np.concatenate([tk, np.full(setup.objective.dim - 20, tail / (setup.objective.dim - 20))]),
                      "zo-gd", negative="ignore")
    return {"dense": predict(dense, cfg).as_dict() | {"spectrum": dense.as_dict()},
            "iterative": predict(it, cfg).as_dict() | {"spectrum": it.as_dict()},
            "old_trace_tail": {"eta": old, "trace": tr, "top20_sum": float(tk.sum()), "tail": tail}}


def experiment(run: Path, step: int, **over) -> dict:
    """`eos-probe edge` at one checkpoint with the study's settings."""
    from eos_probe.sweep.edge import edge_experiment

    return edge_experiment(run, step, **{**EXPERIMENT, **over}, echo=lambda s: print("  " + s, flush=True))


def pick_checkpoints(run: Path) -> dict:
    """Edge: the first kept checkpoint with probed S ≥ 0.95 (after step 0: the initial point is not trained);
    early: the one with the smallest probed S before it (the run furthest from its edge)."""
    from eos_probe.run import load

    p = load(run).probe
    steps, S = p["step"].to_numpy(), p["ms_margin"].to_numpy()
    edge = next((int(s) for s, v in zip(steps, S) if s > 0 and v >= 0.95), None)
    before = [(v, int(s)) for s, v in zip(steps, S) if 0 < s < (edge if edge is not None else math.inf)]
    early = min(before)[1] if before else None
    return {"early": early, "edge": edge, "probe_steps": steps.tolist(),
            "probe_S": [float(v) if math.isfinite(v) else None for v in S]}


def above_edge(run: Path, step: int, eta_run: float, fracs=(1.1, 1.25)) -> list[dict]:
    """Continuations a little above the training η at the edge checkpoint, beside their surrogates, with local
    probes; each with its outcome counts."""
    from eos_probe.sweep.edge import find_checkpoint
    from eos_probe.sweep.edge_network import outcomes
    from eos_probe.sweep.edge_taylor import surrogate_task

    ck = find_checkpoint(run, step)["path"]
    out = []
    for f in fracs:
        r = surrogate_task(str(run), ck, f * eta_run, seeds=EXPERIMENT["seeds"], horizon=EXPERIMENT["horizon"],
                           probe_steps=(0, 40, 160, 640))
        r["frac_of_run_lr"] = f
        r["outcomes"] = outcomes(r)
        out.append(r)
    return out


def family(name: str) -> dict:
    spec = FAMILIES[name]
    run = train_run(name, spec, probe=True)
    picks = pick_checkpoints(run)
    res = {"name": name, "run": str(run.relative_to(ROOT)), "config": spec, "checkpoints": picks}
    for which in ("early", "edge"):
        step = picks[which]
        if step is None:
            res[which] = {"note": "the run never reached S >= 0.95 at a probe"}
            continue
        res[which] = cached(f"{name}-{which}-{step}", lambda: experiment(run, step, probe_steps=(0, 20, 80, 320)))
    if picks["edge"] is not None:
        res["above"] = cached(f"{name}-above-{picks['edge']}", lambda: {"runs": above_edge(run, picks["edge"],
                                                                                          spec["lr"])})["runs"]
    return res


def headline() -> dict:
    run = train_run("headline-cnn", HEADLINE, probe=False)
    step = HEADLINE["steps"]
    return {"run": str(run.relative_to(ROOT)), "config": HEADLINE, "step": step,
            "predictions": cached("headline-predictions", lambda: predictions_three_ways(run, step)),
            "experiment": cached("headline-experiment", lambda: experiment(run, step))}


def training_S(name: str) -> dict:
    """The probed S along a family's training run: its values and excursions above 1."""
    p = pick_checkpoints(RUNS / f"{name}.h5")
    S = [v for v in p["probe_S"] if v is not None]
    above = [s for s, v in zip(p["probe_steps"], p["probe_S"]) if v is not None and v > 1]
    return {"n_probes": len(S), "n_above_1": len(above), "steps_above_1": above, "max": max(S) if S else None}


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=["headline", *FAMILIES], help="one block (repeatable)")
    ap.add_argument("--figures-only", action="store_true", help="redraw from docs/edge-study.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    full = RUNS / "edge-study-full.json"
    study = json.loads((full if full.exists() else OUT).read_text()) if (full.exists() or OUT.exists()) else {}
    if not a.figures_only:
        blocks = a.only or ["headline", *FAMILIES]
        if "headline" in blocks:
            study["headline"] = headline()
        for name in FAMILIES:
            if name in blocks:
                study.setdefault("families", {})[name] = family(name) | {"training_S": training_S(name)}
        study["machine"] = _machine()
        full.write_text(json.dumps(study, default=float))
        OUT.write_text(json.dumps(slim(study), indent=1, default=float))
    from edge_study_figures import write_all  # noqa: E402 - sibling script

    write_all(study, ROOT)
    return 0


def slim(study: dict) -> dict:
    """The committed JSON: everything but the per-step loss trajectories (kept for the figure's surrogate run)."""
    out = json.loads(json.dumps(study, default=float))
    for name, r in [("headline", out.get("headline", {}).get("experiment", {}))] + [
            (n, f.get(w, {})) for n, f in out.get("families", {}).items() for w in ("early", "edge")]:
        for run in r.get("network", {}).get("runs", []):
            run.pop("losses", None)
        for i, s in enumerate(r.get("surrogates", [])):
            if not (name == "headline" and i == 0):
                s.pop("losses", None)
    for f in out.get("families", {}).values():
        for s in f.get("above", []):
            s.pop("losses", None)
    return out


def _machine() -> str:
    import platform

    import torch

    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    return f"{platform.machine()}, torch {torch.__version__}, 1 thread, load average {load} at the end"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
