"""Text of `eos-probe edge`: the prediction with its path, the model edges, the network's edge against the horizon,
the blow-up law and the surrogate comparison, from the experiment's JSON result."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def _g(x: Any, fmt: str = ".4g") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _ci(ci: list[float] | None) -> str:
    return "[-]" if not ci else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def _model_line(name: str, m: dict[str, Any]) -> str:
    if "measured_edge" not in m:  # rates at fixed η (the indefinite Taylor model)
        rates = ", ".join(f"{t['lr']:.3g}: {t['rate']:.3g} +- {t['stderr']:.1g} (exact {_g(t['predicted_rate'], '.3g')})"
                          for t in m["tested"])
        verdict = ("no edge: the exact rate is > 0 at every eta (negative modes)" if m["exact_rate_positive_everywhere"]
                   else "exact rate not > 0 everywhere")
        return f"{name}: growth rate of E[D'H+D] per step at eta = {rates}; {verdict}"
    if not m["has_edge"]:
        return (f"{name}: no edge - E[D'H+D] grows at every eta tried (smallest tested "
                f"{_g(min(t['lr'] for t in m['tested']))}, rate there {_g(m['tested'][0]['rate'], '.3g')}/step)")
    return (f"{name}: growth-rate edge {_g(m['measured_edge'])} [{_g(m['lo'])}, {_g(m['hi'])}] = "
            f"{_g(m['edge_over_predicted'], '.3f')} x predicted (eta* of its positive part {_g(m['eta_model'])}, "
            f"{'inside' if m['agrees'] else 'OUTSIDE'} the bracket)")


def _median(xs: list) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.median(v)) if 2 * len(v) > len(xs) else None


def _surrogate_lines(s: dict[str, Any], pred: float, factor: str) -> list[str]:
    tau = {m: _median(v.get(factor, [])) for m, v in s["tau"].items()}
    leave = {m: _median(v) for m, v in s["leave"].items()}
    out = [f"  eta = {s['lr']:.4g} ({s['lr'] / pred:.2f} eta*): median blow-up step (x{factor}) network "
           f"{_g(tau['network'], '.0f')}, Taylor(H) {_g(tau.get('taylor'), '.0f')}, Taylor(H+) "
           f"{_g(tau.get('taylor_pos'), '.0f')} ('-': most seeds survive {s['horizon']} steps); the network "
           f"leaves Taylor(H) at step {_g(leave.get('taylor'), '.0f')}, Taylor(H+) at {_g(leave.get('taylor_pos'), '.0f')}"]
    below = [p["step"] for p in s["probes"] if p["eta_star"] < s["lr"]]
    out.append(f"    local eta* on seed 0: " + ", ".join(f"t={p['step']}: {p['eta_star']:.3g}" for p in s["probes"])
               + (f"; first below eta at t={below[0]}" if below else "; never below eta at the probes"))
    pre = s.get("pre_blowup_probe")
    if pre:
        d = pre["displacement"]
        out.append(f"    last probe before seed 0 blew up (t={pre['step']}, blow-up {pre['tau']}): eta* {pre['eta_star']:.3g}, "
                   f"lambda_max {pre['lambda_max']:.3g}, Tr H {pre['trace']:.3g}; |theta - theta_N| {d['norm']:.3g}, "
                   f"share positive {d['positive']:.2f} / negative {d['negative']:.2f} / flat {d['flat']:.2f}")
    return out


def report(res: dict[str, Any], factor: str = "10") -> str:
    """Multi-line summary of an edge result (the network part at blow-up factor `factor`)."""
    p = res["predicted"]
    lines = [f"{res['run']} step {res['step']} ({res['optimizer']}, run lr {_g(res.get('run_lr'))}, d = {res['dim']})",
             f"prediction: eta* = {p['eta']:.4g} [{p['lo']:.4g}, {p['hi']:.4g}] - {p['path']}"]
    for name, m in res.get("models", {}).items():
        lines.append(_model_line({"positive": "positive-part model (H+)", "taylor": "Taylor model (H)"}[name], m))
    net = res.get("network")
    if net:
        f = factor if factor in net["by_factor"] else next(iter(net["by_factor"]))
        b = net["by_factor"][f]
        lines.append(f"network, blow-up = loss > {f} x L(theta_N), {net['seeds']} seeds per eta "
                     f"(protocol: more than half blow up within the horizon):")
        for c in b["edge_vs_horizon"]:
            lines.append(f"  horizon {c['horizon']:>4}: edge {_g(c['edge'])} [{_g(c['lo'])}, {_g(c['hi'])}]"
                         + (f" = {c['over_predicted']:.3f} eta*" if c.get("over_predicted") else
                            f" ({c.get('note', '')})"))
        law = b["law"]
        if "fits" in law:
            fp, ft, fa = law["fits"]["power"], law["fits"]["threshold"], law["fits"]["arrhenius"]
            lines.append(f"  blow-up time ({law['n_points']} step sizes): power tau ~ eta^-{fp['p']:.2f} {_ci(fp.get('p_ci'))}, "
                         f"AIC {fp['aic']:.1f}; threshold eta_c {ft['eta_c']:.3g} {_ci(ft.get('eta_c_ci'))}, "
                         f"nu {ft['nu']:.2f}, AIC {ft['aic']:.1f}; "
                         f"Arrhenius B {fa['B']:.3g}, AIC {fa['aic']:.1f}; best: {law['best']}")
        ans = b["horizon_independent_edge"]
        lines.append(f"  horizon-independent edge: {ans['answer']} ({ans['why']})")
    for s in res.get("surrogates", []):
        lines.append("network beside its Taylor surrogates (same directions, same criterion):")
        lines += _surrogate_lines(s, p["eta"], factor)
    return "\n".join(lines)
