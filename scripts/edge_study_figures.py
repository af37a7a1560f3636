"""Figures and tables of docs/edge.md from docs/edge-study.json (called by scripts/edge_study.py).

The tables replace the text between ``<!-- edge-study:begin -->`` and ``<!-- edge-study:end -->`` in docs/edge.md;
figures are docs/edge-horizon.png, docs/edge-blowup-law.png and docs/edge-surrogate.png.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

BEGIN, END = "<!-- edge-study:begin -->", "<!-- edge-study:end -->"
FACTOR = "10"


def _g(x, fmt: str = ".3g") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def experiments(study: dict) -> list[tuple[str, dict]]:
    """(label, edge-experiment result) of every checkpoint studied, headline first."""
    out = [("CNN 1,694 (issue run), step 40", study["headline"]["experiment"])] if "headline" in study else []
    for name, fam in study.get("families", {}).items():
        for which in ("early", "edge"):
            r = fam.get(which, {})
            if "predicted" in r:
                out.append((f"{name.upper()} {r['dim']:,}, step {r['step']} ({which})", r))
    return out


def _network_cells(r: dict) -> tuple[str, str, str]:
    b = r["network"]["by_factor"][FACTOR]
    curve = {c["horizon"]: c for c in b["edge_vs_horizon"]}
    cells = []
    for h in (20, 640):
        c = curve.get(h)
        cells.append(f"{_g(c['over_predicted'])} [{_g(c['lo'] / r['predicted']['eta'] if c['lo'] else None)}, "
                     f"{_g(c['hi'] / r['predicted']['eta'] if c['hi'] else None)}]" if c and c.get("edge") else
                     (c or {}).get("note", "–"))
    ans = b["horizon_independent_edge"]
    law = b["law"]
    pe = r["predicted"]["eta"]
    if ans.get("how") == "flat":
        cells.append(f"yes, within 640 steps: bracket [{ans['lo'] / pe:.3f}, {ans['hi'] / pe:.3f}] η* unchanged over "
                     "the last doubling of the horizon")
    elif ans.get("how") == "law":
        f = law["fits"][law["best"]]
        if law["best"] == "power":
            par = f"p = {_g(f.get('p'))} {_ci(f.get('p_ci'))}"
        elif law["best"] == "arrhenius":
            par = f"B = {_g(f.get('B'))} {_ci(f.get('B_ci'))}"
        else:
            par = f"η_c/η* = {f['eta_c'] / pe:.3f} {_ci([x / pe for x in f['eta_c_ci']] if f.get('eta_c_ci') else None)}"
        cells.append(f"{ans['answer']}: best law {law['best']} ({par}), {law['n_points']} step sizes blew up")
    else:
        cells.append(f"{ans['answer']}: {ans['why']}")
    return cells[0], cells[1], cells[2]


def _ci(ci) -> str:
    return "–" if not ci else f"[{_g(ci[0])}, {_g(ci[1])}]"


def _taylor_cell(t: dict | None) -> str:
    if not t:
        return "–"
    rates = ", ".join(f"{x['rate']:+.3g}" for x in t["tested"])
    return (f"rate of E[ΔᵀH₊Δ] at {', '.join(f'{f:g}' for f in t['fractions_of_predicted'])} η*: {rates} /step; "
            + ("exact rate > 0 at every η: no edge" if t["exact_rate_positive_everywhere"] else "exact rate ≤ 0 somewhere"))


def _quiet(r: dict) -> str:
    q = r["network"]["by_factor"][FACTOR].get("largest_quiet_eta")
    return "none (the smallest η blew up)" if q is None else f"{q / r['predicted']['eta']:.3f}"


def headline_table(study: dict) -> str:
    rows = ["| checkpoint | d (negative) | run η | η* predicted (path) | S(run η) | H₊ model: growth-rate edge / η* "
            "[interval] | Taylor model (H) | network edge / η*, horizon 20 | horizon 640 | largest η / η* with no seed "
            "blown in 640 steps | horizon-independent edge? |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in experiments(study):
        p, m = r["predicted"], r["models"]["positive"]
        t = r["models"].get("taylor")
        tay = _taylor_cell(t)
        net = _network_cells(r) if "network" in r else ("–", "–", "–")
        pe = p["eta"]
        rows.append(f"| {label} | {r['dim']:,} ({int(r['spectrum']['n_negative'])}) | {_g(r['run_lr'])} | {pe:.4g} "
                    f"({p['method']}) | {_g(r['at_run_lr']['S'])} | {_g(m['edge_over_predicted'], '.3f')} "
                    f"[{m['lo'] / pe:.3f}, {m['hi'] / pe:.3f}] | {tay} | {net[0]} | {net[1]} | {_quiet(r)} | {net[2]} |")
    return "\n".join(rows)


def prediction_table(study: dict) -> str:
    h = study["headline"]["predictions"]
    d, it, old = h["dense"], h["iterative"], h["old_trace_tail"]
    sp = d["spectrum"]
    return "\n".join([
        "| path | η* | interval | what it rests on |", "| --- | --- | --- | --- |",
        f"| dense (exact) | {d['eta']:.4g} | – | {d['path']} |",
        f"| top-20 Ritz + SLQ, positive part (new) | {it['eta']:.4g} | [{it['lo']:.4g}, {it['hi']:.4g}]; "
        f"convexity bounds [{it['bound_lo']:.4g}, {it['bound_hi']:.4g}] | {it['path']} |",
        f"| top-20 Ritz + Tr H tail (old) | {old['eta']:.4g} | – | Tr H = {old['trace']:.3g} (dense "
        f"{sp['trace']:.3g}) < top-20 sum {old['top20_sum']:.3g}: tail {old['tail']:.3g}, the positive tail "
        f"(dense Tr H₊ = {sp['trace_pos']:.3g}) dropped; {old['eta'] / d['eta'] - 1:+.0%} against dense |"])


def horizon_table(r: dict) -> str:
    by = r["network"]["by_factor"]
    hs = [c["horizon"] for c in next(iter(by.values()))["edge_vs_horizon"]]
    rows = ["| blow-up factor | " + " | ".join(f"h = {h}" for h in hs) + " |", "|---" * (len(hs) + 1) + "|"]
    pe = r["predicted"]["eta"]
    for f, b in by.items():
        cells = [f"{_g(c['edge'])} = {_g(c['edge'] / pe)} η* [{_g(c['lo'])}, {_g(c['hi'])}]" if c.get("edge")
                 else c.get("note", "–") for c in b["edge_vs_horizon"]]
        rows.append(f"| {f} × L(θ_N) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def law_table(study: dict) -> str:
    rows = ["| checkpoint | η with > half blown by 640 | power p [95 %] (AIC) | threshold η_c/η* [95 %], ν (AIC) | "
            "Arrhenius B/η* (AIC) | best | censored η the law calls blown |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in experiments(study):
        law = r["network"]["by_factor"][FACTOR]["law"]
        if "fits" not in law:
            rows.append(f"| {label} | {law['n_points']} | {law.get('note', '')} | | | | |")
            continue
        pe = r["predicted"]["eta"]
        fp, ft, fa = law["fits"]["power"], law["fits"]["threshold"], law["fits"]["arrhenius"]
        ci = ft.get("eta_c_ci") or [math.nan, math.nan]
        viol = ", ".join(f"{k} {law['fits'][k]['censored_violations']}" for k in ("power", "threshold", "arrhenius"))
        rows.append(f"| {label} | {law['n_points']} | {fp['p']:.2f} {_ci(fp.get('p_ci'))} ({fp['aic']:.1f}) | "
                    f"{ft['eta_c'] / pe:.3f} [{ci[0] / pe:.3f}, {ci[1] / pe:.3f}], {ft['nu']:.2f} ({ft['aic']:.1f}) | "
                    f"{fa['B'] / pe:.3g} ({fa['aic']:.1f}) | {law['best']} | {viol} |")
    return "\n".join(rows)


def _median(xs):
    v = [x for x in xs if x is not None]
    return float(np.median(v)) if 2 * len(v) > len(xs) else None


def surrogate_rows(label: str, s: dict, pe: float) -> str:
    tau = {m: _median(v[FACTOR]) for m, v in s["tau"].items()}
    leave = {m: _median(v) for m, v in s["leave"].items()}
    below = [p["step"] for p in s["probes"] if p["eta_star"] < s["lr"]]
    pre = s.get("pre_blowup_probe") or {}
    d = pre.get("displacement", {})
    out = s.get("outcomes")
    outs = ", ".join(f"{k} {v}" for k, v in sorted(out.items())) if out else "–"
    return (f"| {label} | {s['lr'] / pe:.2f} | {_g(tau['network'], '.0f')} / {_g(tau['taylor'], '.0f')} / "
            f"{_g(tau['taylor_pos'], '.0f')} | {_g(leave['taylor'], '.0f')} / {_g(leave['taylor_pos'], '.0f')} | "
            + ", ".join(f"{p['step']}: {p['eta_star'] / s['lr']:.2f}" for p in s["probes"]) +
            f" | {below[0] if below else 'never'} | "
            + (f"t = {pre['step']} (τ = {pre['tau']}): η*/η {pre['eta_star'] / s['lr']:.2f}, λ_max {pre['lambda_max']:.3g}, "
               f"Tr H {pre['trace']:.3g}; ‖Δ‖ {d['norm']:.3g}: + {d['positive']:.2f} / − {d['negative']:.2f} / "
               f"flat {d['flat']:.2f}" if pre else "no blow-up") + f" | {outs} |")


def surrogate_table(study: dict) -> str:
    rows = ["| checkpoint | η / η* | median blow-up step (×10): network / Taylor H / Taylor H₊ | leaves Taylor H / H₊ "
            "at step | local η*/η at probe steps (seed 0) | local η* < η first at | last probe before seed 0 blew up "
            "(Δ shares on H(θ_N)'s +/−/flat directions) | outcomes (8 seeds) |", "|---" * 8 + "|"]
    for label, r in experiments(study):
        for s in r.get("surrogates", []):
            rows.append(surrogate_rows(label, s, r["predicted"]["eta"]))
    for name, fam in study.get("families", {}).items():
        for s in fam.get("above", []):
            rows.append(surrogate_rows(f"{name.upper()} edge checkpoint, {s['frac_of_run_lr']} × run η",
                                       s, fam["edge"]["predicted"]["eta"]))
    return "\n".join(rows)


def bounds_table(study: dict) -> str:
    from eos_probe.sweep.edge import s_bounds

    rows = ["| checkpoint | run η | S(run η) exact | lower Tr H₊/T | upper Tr H₊·f(λ_max)/λ_max | S / lower | upper / S "
            "| band with Tr H: Tr/T, (Tr + cλ_max)/T | band says |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in experiments(study):
        a, sp = r["at_run_lr"], r["spectrum"]
        S = a["S"]
        cfg = {"optimizer": r["optimizer"], "lr": r["run_lr"]}
        lo, hi = s_bounds(sp["trace_pos"], sp["lambda_max"], cfg, r["dim"])
        says = ("stable" if a["upper_over_T"] < 1 else "unstable" if a["tr_over_T"] >= 1 else "band")
        wrong = " (S ≥ 1: wrong)" if says == "stable" and S >= 1 else ""
        rows.append(f"| {label} | {_g(r['run_lr'])} | {S:.3f} | {lo:.3f} | {hi:.3f} | {S / lo:.2f} | {hi / S:.2f} | "
                    f"{a['tr_over_T']:.3f}, {a['upper_over_T']:.3f} | {says}{wrong} |")
    rows += ["", "| training run | probes | probes with S > 1 | largest probed S | steps with S > 1 |",
             "| --- | --- | --- | --- | --- |"]
    for name, fam in study.get("families", {}).items():
        t = fam["training_S"]
        rows.append(f"| {name.upper()} η = {fam['config']['lr']} | {t['n_probes']} | {t['n_above_1']} | "
                    f"{_g(t['max'])} | {', '.join(map(str, t['steps_above_1'][:12]))}"
                    f"{' …' if len(t['steps_above_1']) > 12 else ''} |")
    return "\n".join(rows)


def dense_cost_table(root: Path) -> str:
    p = root / "benchmarks" / "results_edge_dense_cost.json"
    if not p.exists():
        return "(benchmarks/results_edge_dense_cost.json missing: run benchmarks/edge_dense_cost.py)"
    b = json.loads(p.read_text())
    rows = ["| d | dense (s) | iterative (s) | dense / iterative | η* dense | η* iterative [interval] |",
            "| --- | --- | --- | --- | --- | --- |"]
    for r in b["rows"]:
        rows.append(f"| {r['dim']:,} | {r['dense_seconds']:.1f} | {r['iterative_seconds']:.1f} | {r['ratio']:.2f} | "
                    f"{r['eta_dense']:.4g} | {r['eta_iterative']:.4g} [{r['iterative_lo']:.4g}, {r['iterative_hi']:.4g}] |")
    return "\n".join(rows) + f"\n\n({b['machine']}; load average {' '.join(b['load_average_at_end'])} at the end.)"


def fig_horizon(study: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for label, r in experiments(study):
        pe = r["predicted"]["eta"]
        c = [x for x in r["network"]["by_factor"][FACTOR]["edge_vs_horizon"] if x.get("edge")]
        if c:
            ax.plot([x["horizon"] for x in c], [x["edge"] / pe for x in c], "o-", ms=3, label=label)
    h = study.get("headline", {}).get("experiment")
    if h:
        pe = h["predicted"]["eta"]
        for f, style in (("3", ":"), ("100", "--")):
            c = [x for x in h["network"]["by_factor"][f]["edge_vs_horizon"] if x.get("edge")]
            ax.plot([x["horizon"] for x in c], [x["edge"] / pe for x in c], style, color="C0", lw=1,
                    label=f"issue run, blow-up ×{f}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="horizon (steps)", ylabel="network edge / predicted η*",
           title=f"Protocol's edge against the horizon (×{FACTOR})")
    _plain_ticks(ax.xaxis, [20, 40, 80, 160, 320, 640])
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _plain_ticks(axis, ticks) -> None:
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def fig_law(study: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from eos_probe.sweep.edge_laws import predicted_tau

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for i, (label, r) in enumerate(experiments(study)):
        law = r["network"]["by_factor"][FACTOR]["law"]
        if "fits" not in law:
            continue
        pe = r["predicted"]["eta"]
        e = np.asarray(law["etas"])
        ax.plot(e / pe, law["half_time"], "o", ms=3, color=f"C{i}", label=label)
        grid = np.geomspace(e.min(), e.max(), 50)
        ax.plot(grid / pe, predicted_tau(law["best"], law["fits"][law["best"]], grid), "-", lw=0.8, color=f"C{i}")
    ax.set(xscale="log", yscale="log", xlabel="η / predicted η*", ylabel="steps until > half blew up",
           title=f"Blow-up time against η (×{FACTOR}); lines: best law")
    _plain_ticks(ax.xaxis, [0.05, 0.1, 0.2, 0.5, 1.0, 1.5])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def fig_surrogate(study: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    h = study["headline"]["experiment"]
    s = h["surrogates"][0]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(5.2, 4.6), sharex=True)
    labels = {"network": "network", "taylor": "Taylor H (hidden where ≤ 0: unbounded below)", "taylor_pos": "Taylor H₊"}
    for m, style in (("network", "-"), ("taylor", "--"), ("taylor_pos", ":")):
        L = np.asarray(s["losses"][m], dtype=float) / s["loss0"]
        t = np.arange(L.shape[0]) * s["record_every"]
        with np.errstate(invalid="ignore"):
            a1.plot(t, np.nanmedian(np.where(np.isfinite(L), L, np.nan), axis=1), style, label=labels[m])
    a1.set(yscale="log", ylim=(1e-2, 1e4), xlim=(0, 300), ylabel="median loss / L(θ_N) (8 seeds)",
           title=f"issue run, η = {s['lr'] / h['predicted']['eta']:.2f} η*")
    a1.legend(fontsize=7)
    pr = s["probes"] + ([s["pre_blowup_probe"]] if s.get("pre_blowup_probe") else [])
    a2.plot([p["step"] for p in pr], [p["eta_star"] / s["lr"] for p in pr], "o-", ms=3, label="local η* / η")
    a2.plot([p["step"] for p in pr], [p["lambda_max"] / pr[0]["lambda_max"] for p in pr], "s--", ms=3,
            label="λ_max / λ_max(θ_N)")
    a2.axhline(1.0, color="k", lw=0.8)
    a2.set(xlabel="continuation step", yscale="log")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def write_all(study: dict, root: Path) -> None:
    """Figures into docs/, tables into docs/edge.md between the markers."""
    docs = root / "docs"
    if "headline" in study:
        fig_surrogate(study, docs / "edge-surrogate.png")
    fig_horizon(study, docs / "edge-horizon.png")
    fig_law(study, docs / "edge-blowup-law.png")
    parts = [f"Measured by `python scripts/edge_study.py` ({study.get('machine', '')}); raw numbers in "
             "[edge-study.json](edge-study.json).", "", "### Answers", "", summary(study), "", "### Headline", "",
             headline_table(study)]
    if "headline" in study:
        parts += ["", "### The prediction on the issue's run (step 40)", "", prediction_table(study), "",
                  "### The issue run's network edge against the horizon and the blow-up factor", "",
                  horizon_table(study["headline"]["experiment"])]
    parts += ["", "![The protocol's edge against the horizon](edge-horizon.png)", "",
              "### Law of the blow-up time (factor 10)", "", "![Blow-up time against η](edge-blowup-law.png)", "",
              law_table(study), "",
              "### The network beside its Taylor surrogates, and continuations above the training η", "",
              "![The issue run beside its Taylor surrogates](edge-surrogate.png)", "", surrogate_table(study), "",
              "### Bounds against the exact S", "", bounds_table(study), "",
              "### Which path: dense against top-k Ritz + SLQ", "", dense_cost_table(root)]
    page = docs / "edge.md"
    text = page.read_text()
    i, j = text.index(BEGIN) + len(BEGIN), text.index(END)
    page.write_text(text[:i] + "\n" + "\n".join(parts) + "\n" + text[j:])


def summary(study: dict) -> str:
    """The measured answers as bullet points (numbers from the study, nothing typed by hand)."""
    exps = experiments(study)
    out = []
    if "headline" in study:
        p = study["headline"]["predictions"]
        d, it, old = p["dense"]["eta"], p["iterative"], p["old_trace_tail"]["eta"]
        out.append(f"- **Prediction.** On the issue's run η* = {d:.4g} (dense); the iterative positive-part path gives "
                   f"{it['eta']:.4g} [{it['lo']:.4g}, {it['hi']:.4g}], the old trace tail {old:.4g} "
                   f"({old / d - 1:+.0%}).")
    pos = [(lab, r["models"]["positive"]) for lab, r in exps]
    ratios = [m["edge_over_predicted"] for _, m in pos if m["has_edge"]]
    inside = sum(m["agrees"] for _, m in pos)
    out.append(f"- **Positive-part model (H₊).** Growth-rate edge / η* from {min(ratios):.3f} to {max(ratios):.3f} over "
               f"{len(pos)} checkpoints of 3 families; η* inside the measured bracket at {inside} of {len(pos)}.")
    tay = [r["models"]["taylor"]["exact_rate_positive_everywhere"] for _, r in exps if "taylor" in r["models"]]
    out.append(f"- **Taylor model (H, negative modes kept).** Exact asymptotic rate > 0 at every tested η at "
               f"{sum(tay)} of {len(tay)} checkpoints: no edge.")
    for lab, r in exps:
        b = r["network"]["by_factor"][FACTOR]
        ans, curve = b["horizon_independent_edge"], b["edge_vs_horizon"]
        pe = r["predicted"]["eta"]
        pts = ", ".join(f"{c['horizon']}: {c['edge'] / pe:.2f}" for c in curve if c.get("edge"))
        q = b.get("largest_quiet_eta")
        out.append(f"- **Network, {lab}** (run η = {r['run_lr']:.3g} = {r['run_lr'] / pe:.2f} η*): edge / η* by horizon "
                   f"{{{pts}}}; "
                   + (f"no seed blew up in 640 steps up to η = {q / pe:.3g} η*; " if q else
                      "at every tested η some seed blew up within 640 steps; ")
                   + f"horizon-independent edge: **{ans['answer']}** ({ans['why']}).")
    return "\n".join(out)
