"""`eos-probe inspect`: a summary of a run file (config, progress, last metrics, stability verdict)."""
from __future__ import annotations

import json
import math
from typing import Any

import click


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.5g}"
    return str(x)


def _device(device: Any) -> str:
    """'cpu: x86_64' as recorded; older files wrote 'cpu: cpu' where the processor name was unknown."""
    kind, _, name = str(device).partition(": ")
    return kind if not name or name == kind else f"{kind} ({name})"


def summary(run) -> dict[str, Any]:
    """Everything `inspect` prints, as plain data (also what `--json` writes)."""
    cfg = run.config
    out: dict[str, Any] = {
        "path": str(run.path), "schema_version": run.attrs.get("schema_version"), "status": run.status,
        "stop_reason": run.attrs.get("stop_reason", ""), "stop_step": run.attrs.get("stop_step"),
        "config": cfg, "n_params": run.attrs.get("n_params"), "n_train": run.attrs.get("n_train"),
        "device": run.attrs.get("device"), "versions": run.attrs.get("versions"),
        "resumed": run.attrs.get("resumed", 0), "steps_done": run.steps_done, "train_rows": len(run.train),
        "regression": run.regression,
    }
    if len(run.train):
        last = run.train.iloc[-1]
        out["last_train"] = {"step": int(last["step"]), "loss": float(last["loss"]),
                             "wall_time": float(last["wall_time"])}
        if not run.regression:  # float targets have no accuracy (the column is NaN)
            out["last_train"]["accuracy"] = float(last["accuracy"])
    out["probe_rows"] = len(run.probe)
    out["metrics"] = run.metrics
    out["spectra"] = run.spectra_names
    if len(run.probe):
        last = run.probe.iloc[-1]
        vals = {}
        for m in run.metrics:
            if m in run.probe:
                vals[m] = {"value": float(last[m]), "err": float(last.get(f"{m}_err", math.nan)),
                           "nhvp": int(last.get(f"{m}_nhvp", 0))}
        out["last_probe"] = {"step": int(last["step"]), "values": vals}
        nh = [c for c in run.probe.columns if c.endswith("_nhvp")]
        out["total_hvp"] = int(run.probe[nh].to_numpy().sum()) if nh else 0
    try:
        b = run.band()
        out["band"] = b.as_dict()
    except Exception as e:  # noqa: BLE001 - a summary must not fail on an unknown optimizer
        out["band"] = {"error": str(e)}
    if len(run.probe):
        v = run.verdicts()
        done = v[v["state"] != ""]
        if len(done):
            row = done.iloc[-1]
            out["verdict"] = {"step": int(row["step"]),
                              **{k: (row[k] if isinstance(row[k], str) else float(row[k]))
                                 for k in v.columns if k != "step"},
                              "counts": {k: int(n) for k, n in done["verdict"].value_counts(sort=False).items()}}
    return out


def render(s: dict[str, Any]) -> str:
    cfg = s["config"]
    lines = [f"{s['path']}  (run file schema {s['schema_version']})"]
    if s["status"] == "finished":
        st = f"finished at step {s['stop_step']}"
    elif s["status"] == "diverged":
        st = f"DIVERGED at step {s['stop_step']}: {s['stop_reason']}"
    elif s.get("stop_reason"):  # stopped by a signal after checkpointing
        st = (f"interrupted at step {s['stop_step']} ({s['stop_reason']}) - resume with: "
              f"eos-probe train --resume {s['path']}")
    else:
        last = (f"last logged step {s['steps_done']}" if (s.get("steps_done") or -1) >= 0
                else "no step logged yet")
        st = f"no end recorded (still running, or killed) - {last}"
    if s.get("resumed"):
        st += f"; resumed {s['resumed']}x"
    lines.append(f"status      {st}")
    zo = str(cfg.get("optimizer", "")).startswith("zo-")
    keys = ("model", "data", "optimizer", "lr", "momentum", *(("queries", "mu", "directions") if zo else ()),
            "loss", "steps", "seed")
    conf = " ".join(f"{k}={cfg.get(k)}" for k in keys if cfg.get(k) is not None)
    if cfg.get("model_args"):
        conf += f" model_args={json.dumps(cfg['model_args'])}"
    lines.append(f"config      {conf}")
    lines.append(f"size        {s['n_params']:,} parameters, {s.get('n_train') or '?'} training examples"
                 if isinstance(s.get("n_params"), int) else "size        ?")
    ver = s.get("versions") or {}
    lines.append(f"machine     {_device(s.get('device'))}; eos-probe {ver.get('eos_probe', '?')}, torch {ver.get('torch', '?')}")
    if "last_train" in s:
        t = s["last_train"]
        acc = f"accuracy {_fmt(t['accuracy'])}, " if "accuracy" in t else ""
        lines.append(f"train       {s['train_rows']} rows up to step {t['step']}: loss {_fmt(t['loss'])}, "
                     f"{acc}{t['wall_time']:.1f} s")
    else:
        lines.append("train       no rows yet")
    if s["probe_rows"]:
        p = s["last_probe"]
        lines.append(f"probe       {s['probe_rows']} probes ({', '.join(s['metrics'] + s['spectra'])}); "
                     f"{s['total_hvp']:,} Hessian-vector products in all")
        lines.append(f"last probe  step {p['step']}:")
        for m, v in p["values"].items():
            lines.append(f"              {m:<20} {_fmt(v['value']):>12} ± {_fmt(v['err']):<10} ({v['nhvp']} HVP)")
    else:
        lines.append("probe       no probe data (trained with --probe none, or before the first probe)")
    b = s.get("band", {})
    if "error" in b:
        lines.append(f"band        unavailable: {b['error']}")
    elif b:
        if b.get("c") is None:
            lines.append(f"band        {b['quantity']} < T = {b['threshold']:.5g}  ({b['kind']})")
        else:
            lines.append(f"band        {b['quantity']} < T = {b['threshold']:.5g} necessary, {b['quantity']} + "
                         f"c*{b['lambda_max_quantity']} < T sufficient, c = {b['c']:.4g}  ({b['kind']}; for H "
                         "without negative eigenvalues)")
        lines.append(f"convention  {b['convention']}")
        for w in b.get("warnings", []):
            lines.append(f"warning     {w}")
    if "verdict" in s:
        v = s["verdict"]
        counts = ", ".join(f"{k} {n}" for k, n in v["counts"].items())
        lines.append(f"verdict     {v['verdict']} at step {v['step']}: {v['evidence']}")
        if v.get("note"):
            lines.append(f"            {v['note']}")
        lines.append(f"            over all probes: {counts}")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("run", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(run: str, as_json: bool) -> None:
    """Summarise RUN.h5: config, steps done, last metrics, stability verdict, divergence reason.

    The verdict rests on S(η) ± s.e. where the probe measured it (ms_margin), else on the Tr/λ_max bounds,
    and says which (docs/theory.md §2, "One verdict per probe")."""
    from ..run import Run

    s = summary(Run.from_file(run))
    click.echo(json.dumps(s, indent=2, default=str) if as_json else render(s))
