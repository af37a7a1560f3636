"""One verdict per probe (docs/theory.md §2, "One verdict per probe"): the classifier against hand-built rows,
and `inspect`, `Run.verdicts`, `eos-probe bands` and the figures agreeing at every probe of real runs.

The issue this answers: on an indefinite Hessian (`--model mlp`, Tr(H) = −25 ± 35) `inspect` said "stable"
from the Tr band while the S panel sat above its own "stable iff S < 1" line and the log-scale Tr panel drew
no Tr line at all.
"""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

import eos_probe
from eos_probe import theory as th
from eos_probe.cli import main
from eos_probe.commands.inspect import render, summary
from eos_probe.config import TrainConfig
from eos_probe.plot import build_figure
from eos_probe.plot.style import pretty
from eos_probe.store import RunWriter
from eos_probe.theory.states import INDEFINITE_NOTE, WIDE_NOTE, classify, classify_row
from eos_probe.train import train

ZO = th.band(0.01, "zo-gd")  # T = 200, c = 2, per-mode limit 100
GD = th.band(0.1, "gd")      # classical: lambda_max < 20


# ------------------------------------------------------------------ the classifier on hand-built rows


def test_classifier_on_hand_built_rows() -> None:
    # S well below 1, within 2 s.e. of 1 (both sides), above; the 2 s.e. boundary itself
    v = classify(ZO, s=0.4, s_err=0.05)
    assert (v.state, v.basis, v.verdict, v.note) == ("stable", "S", "stable", "")
    assert "S = 0.4 ± 0.05" in v.evidence and "below 1" in v.evidence
    for s in (0.93, 1.0, 1.09):
        v = classify(ZO, s=s, s_err=0.05)
        assert (v.state, v.verdict) == ("edge", "at the edge") and "within 2 s.e. of 1" in v.evidence
    assert classify(ZO, s=0.89, s_err=0.05).state == "stable"
    assert classify(ZO, s=1.11, s_err=0.05).state == "unstable"
    v = classify(ZO, s=1.2, s_err=0.05)
    assert (v.state, v.basis, v.verdict) == ("unstable", "S", "unstable") and "above 1" in v.evidence
    v = classify(ZO, s=math.inf, lambda_max=150.0)
    assert v.state == "unstable" and "inf" in v.evidence and "150" in v.evidence
    # a wide error bar is at the edge, and says how little that means
    v = classify(ZO, s=0.35, s_err=1.7)
    assert v.state == "edge" and v.note == WIDE_NOTE
    # an exact S (bands --spectrum): no error bar, plain comparison with 1
    v = classify(ZO, s=0.99, s_err=0.0)
    assert v.state == "stable" and "±" not in v.evidence


def test_indefinite_is_its_own_state_and_instability_still_stands() -> None:
    # the mlp probe at step 0: S = 1.76 ± 0.53 beside S_neg = 1.78 ± 0.55
    v = classify(ZO, s=1.755, s_err=0.534, s_neg=1.778, s_neg_err=0.546, trace=-47.6, trace_err=41.9,
                 lambda_max=11.0)
    assert (v.state, v.basis, v.verdict, v.note) == ("indefinite", "S", "indefinite", INDEFINITE_NOTE)
    assert "S_neg = 1.78" in v.evidence and "S = 1.75" in v.evidence
    # the same numbers from the bounds alone would have read "stable (sufficient bound)"
    assert th.verdict(-47.6, 11.0, 0.01, "zo-gd").label == "stable (sufficient bound)"
    # negative mass below half the positive, or not 2 s.e. above zero: not indefinite
    assert classify(ZO, s=0.3, s_err=0.02, s_neg=0.1, s_neg_err=0.01).state == "stable"
    assert classify(ZO, s=0.3, s_err=0.02, s_neg=0.2, s_neg_err=0.15).state == "stable"
    assert classify(ZO, s=0.3, s_err=0.02, s_neg=0.2, s_neg_err=0.02).state == "indefinite"
    # S decisively above 1 is an instability whatever the negative mass
    assert classify(ZO, s=1.5, s_err=0.05, s_neg=1.5, s_neg_err=0.05).state == "unstable"
    # first order: the classical edge concerns the top mode alone, no indefinite state
    assert classify(GD, s=0.5, s_err=0.001, s_neg=5.0, s_neg_err=0.1).state == "stable"


def test_bound_states_say_they_are_bounds() -> None:
    v = classify(ZO, trace=150.0, trace_err=1.0, lambda_max=10.0)
    assert (v.state, v.basis, v.verdict) == ("stable", "bounds", "stable (sufficient bound)")
    assert "no negative eigenvalue" in v.note and v.necessary_margin == pytest.approx(50.0)
    v = classify(ZO, trace=150.0, trace_err=1.0, lambda_max=40.0)
    assert (v.state, v.verdict) == ("band", "band: necessary bound only") and "necessary only" in v.note
    assert v.sufficient_margin == pytest.approx(-30.0)
    v = classify(ZO, trace=210.0, trace_err=1.0, lambda_max=1.0)
    assert (v.state, v.verdict) == ("unstable", "unstable (necessary bound violated)") and "210" in v.evidence
    v = classify(ZO, trace=150.0, lambda_max=120.0)  # Tr < T, but λ_max beyond the per-mode limit 100
    assert v.state == "unstable" and "per-mode limit" in v.evidence
    # Tr below λ_max by more than 2 s.e.: indefinite (only negative eigenvalues can do that)
    v = classify(ZO, trace=10.0, trace_err=2.0, lambda_max=30.0)
    assert (v.state, v.basis, v.note) == ("indefinite", "bounds", INDEFINITE_NOTE)
    # the mlp probe at step 50 without ms_margin: Tr = −25 ± 35 is not significantly below λ_max,
    # so the bounds decide, but the evidence names the sign
    v = classify(ZO, trace=-25.1, trace_err=35.1, lambda_max=14.7)
    assert v.state == "stable" and "sign of negative eigenvalues" in v.evidence
    # Tr ≥ T proves instability on an indefinite H too: decided before the indefinite test
    assert classify(ZO, trace=250.0, trace_err=1.0, lambda_max=300.0).state == "unstable"
    # first order: λ_max/T with its Ritz residual
    v = classify(GD, lambda_max=10.0, lambda_max_err=1e-4)
    assert (v.state, v.basis, v.verdict) == ("stable", "lambda_max", "stable") and "lambda_max(H)/T" in v.evidence
    assert classify(GD, lambda_max=19.99, lambda_max_err=0.1).state == "edge"
    assert classify(GD, lambda_max=25.0, lambda_max_err=1e-4).state == "unstable"


def test_nothing_measured_and_probe_rows() -> None:
    v = classify(ZO)
    assert (v.state, v.basis, v.verdict) == ("", "", "") and v.text() == "not measured"
    assert classify(ZO, trace=150.0).state == ""  # λ_max missing: the bounds need both
    assert classify(ZO, s=float("nan"), trace=float("nan"), lambda_max=float("nan")).state == ""
    row = {"ms_margin": 0.4, "ms_margin_err": 0.05, "ms_margin_neg": 0.01, "ms_margin_neg_err": 0.01,
           "trace": 80.0, "trace_err": 1.0, "lambda_max": 5.0, "lambda_max_err": 1e-4}
    assert classify_row(ZO, row) == classify(ZO, s=0.4, s_err=0.05, s_neg=0.01, s_neg_err=0.01, trace=80.0,
                                             trace_err=1.0, lambda_max=5.0, lambda_max_err=1e-4)
    # Adam runs read the P^-1 H columns
    adam = th.band(0.01, "zo-adam")
    pre = {"precond_trace": 150.0, "precond_trace_err": 1.0, "precond_lambda_max": 60.0, "trace": 1.0,
           "lambda_max": 0.1}
    assert classify_row(adam, pre, "precond_").state == "band" and classify_row(adam, pre).state == "stable"


def test_bands_command_gives_the_same_verdict(capsys) -> None:
    def bands(*argv):
        with pytest.raises(SystemExit) as e:
            main(["bands", "--optimizer", "zo-gd", "--lr", "0.01", *argv, "--json"])
        assert e.value.code == 0
        return json.loads(capsys.readouterr().out)

    for tr, lm in ((150.0, 10.0), (150.0, 40.0), (210.0, 1.0), (10.0, 30.0)):
        out, v = bands("--trace", str(tr), "--lambda-max", str(lm)), classify(ZO, trace=tr, lambda_max=lm)
        assert (out["verdict"], out["state"], out["basis"], out["evidence"]) == (v.verdict, v.state, v.basis,
                                                                                 v.evidence)


# ------------------------------------------------------------------ every surface, every probe, real runs


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """The issue's mlp run; a tiny CNN with the default probe (S measured); a tiny CNN probed like the
    quickstart recipe (λ_max and the Gauss–Newton trace only: the bounds decide); a tiny GD run."""
    import torch

    d = tmp_path_factory.mktemp("verdict-runs")
    tiny = dict(model="cnn", model_args={"widths": [4, 8], "hidden": 16}, n_per_class=10)
    specs = {
        "mlp": dict(model="mlp", optimizer="zo-gd", steps=50, probe_every=25),
        "cnn": dict(**tiny, optimizer="zo-gd", steps=50, probe_every=25),
        "quickstart": dict(**tiny, optimizer="zo-gd", lr=0.005, steps=20, probe_every=10,
                           probe=["lambda_max", "trace:method=ggn+residual:n_matvec=20"]),
        "gd": dict(**tiny, optimizer="gd", lr=0.05, steps=10, probe_every=5),
    }
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, kw in specs.items():
            cfg = TrainConfig(**kw, device="cpu", checkpoint_every=10**6, out=str(d / f"{name}.h5"))
            train(cfg, progress=False)
            out[name] = eos_probe.load(cfg.out)
    finally:
        torch.set_num_threads(old)
    return out


def _marked(ax, run) -> dict[int, str]:
    """{probe step: state} as the figure marks it (one marker line per state, gid 'verdict|<path>|<state>')."""
    out: dict[int, str] = {}
    for ln in ax.get_lines():
        gid = ln.get_gid() or ""
        if gid.startswith("verdict|") and gid.split("|")[1] == str(run.path):
            for x in ln.get_xdata():
                assert int(x) not in out, f"probe {x} marked twice"
                out[int(x)] = gid.split("|")[2]
    return out


def _axis(fig, title: str):
    return next(ax for ax in fig.axes if title in ax.get_title())


def _cli(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["mlp", "cnn", "quickstart", "gd"])
def test_inspect_api_and_figures_agree_at_every_probe(real_runs, name, capsys) -> None:
    import matplotlib.pyplot as plt

    run = real_runs[name]
    v = run.verdicts()
    assert len(v) >= 2 and (v["state"] != "").all(), v  # every probe has a verdict to agree on
    expected_basis = {"mlp": "S", "cnn": "S", "quickstart": "bounds", "gd": "lambda_max"}[name]
    assert set(v["basis"]) == {expected_basis}
    band = run.band()
    prefix = "precond_" if run.preconditioned else ""
    # API: a fresh load, and the classifier on the row's numbers passed by name
    again = eos_probe.load(run.path).verdicts()
    assert again[["step", "state", "verdict", "evidence", "note"]].equals(v[["step", "state", "verdict", "evidence",
                                                                             "note"]])
    for (_, row), (_, vrow) in zip(run.probe.iterrows(), v.iterrows()):
        got = classify(band, s=row.get("ms_margin"), s_err=row.get("ms_margin_err"), s_neg=row.get("ms_margin_neg"),
                       s_neg_err=row.get("ms_margin_neg_err"), trace=row.get(prefix + "trace"),
                       trace_err=row.get(prefix + "trace_err"), lambda_max=row.get(prefix + "lambda_max"),
                       lambda_max_err=row.get(prefix + "lambda_max_err"))
        assert (got.state, got.verdict, got.evidence) == (vrow["state"], vrow["verdict"], vrow["evidence"])
    last = v.iloc[-1]
    one = run.verdict()
    assert (one.state, one.verdict, one.evidence, one.note) == (last["state"], last["verdict"], last["evidence"],
                                                                last["note"])
    # inspect: the summary, its text and the JSON of the command line
    s = summary(run)
    assert (s["verdict"]["step"], s["verdict"]["verdict"], s["verdict"]["state"], s["verdict"]["evidence"]) == (
        int(last["step"]), last["verdict"], last["state"], last["evidence"])
    assert s["verdict"]["counts"] == v["verdict"].value_counts().to_dict()
    text = render(s)
    assert f"verdict     {last['verdict']} at step {int(last['step'])}: {last['evidence']}" in text
    if last["note"]:
        assert last["note"] in text
    js = json.loads(_cli(capsys, "inspect", str(run.path), "--json"))["verdict"]
    assert (js["verdict"], js["state"], js["basis"], js["evidence"]) == (last["verdict"], last["state"],
                                                                         last["basis"], last["evidence"])
    # the figure: a marker of the right state at every probe, the last verdict in the run's legend entry
    fig = build_figure([run], "all")
    try:
        states = dict(zip(v["step"].astype(int), v["state"]))
        # first-order runs have no mean-square band panel: their verdict, λ_max/T, is marked on the λ_max panel
        curvature = _axis(fig, "sharpness" if band.kind == "classical" else "measured curvature")
        assert _marked(curvature, run) == states
        if "ms_margin" in run.probe:
            margin = _axis(fig, "mean-square stability sum")
            finite = {k: st for k, st, y in zip(v["step"].astype(int), v["state"], run.probe["ms_margin"])
                      if not math.isnan(y)}
            assert _marked(margin, run) == finite
        legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
        assert any(f"step {int(last['step'])}: {last['verdict']}" in t for t in legend), legend
        keys = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        for label in set(v["verdict"]):
            assert f"verdict: {label}" in keys
        foot = "".join("".join(t.get_text() for t in fig.texts).split())  # the footnote is wrapped
        for note in set(v["note"]) - {""}:
            assert "".join(pretty(note).split()) in foot
    finally:
        plt.close(fig)
    # eos-probe bands on the same numbers, where the bounds decide and no error bar can tell them apart
    if expected_basis == "bounds":
        compared = 0
        for _, row in run.probe.iterrows():
            if row["trace"] > row["lambda_max"]:
                out = json.loads(_cli(capsys, "bands", "--optimizer", run.optimizer, "--lr", str(run.lr), "--trace",
                                      repr(float(row["trace"])), "--lambda-max", repr(float(row["lambda_max"])),
                                      "--json"))
                assert out["verdict"] == v.loc[v["step"] == row["step"], "verdict"].item()
                compared += 1
        assert compared >= 1


# ------------------------------------------------------------------ a negative trace is drawn, never dropped


def _write(path, cfg: TrainConfig, probe: dict[str, list[float]], zo_trace: list[float] | None = None) -> None:
    w = RunWriter.create(path, {"config": cfg.to_dict(), "seed": 0, "n_params": 1000}, overwrite=True)
    for name, dt in (("step", "i8"), ("loss", "f8"), ("accuracy", "f8"), ("wall_time", "f8")):
        w.declare("train", name, dt)
    if zo_trace is not None:
        w.declare("train", "zo_trace", "f8")
    w.declare("probe", "step", "i8")
    for name in probe:
        w.declare("probe", name, "f8")
    w.set_attrs("probe", {"metrics": [k for k in probe if not k.endswith(("_err", "_neg"))]})
    w.set_attrs("bands", th.band_for(cfg.to_dict(), 1000).as_dict())
    w.start()
    n = len(next(iter(probe.values())))
    for i in range(n):
        row = {"step": i * 10, "loss": 1.0 - 0.01 * i, "accuracy": 0.5, "wall_time": float(i)}
        if zo_trace is not None:
            row["zo_trace"] = zo_trace[i]
        w.append("train", row)
        w.append("probe", {"step": i * 10, **{k: v[i] for k, v in probe.items()}})
    w.finish("finished", "", (n - 1) * 10)
    w.close()


def test_a_negative_trace_is_drawn_on_a_symlog_axis_with_a_note(tmp_path) -> None:
    import matplotlib.pyplot as plt

    cfg = TrainConfig(optimizer="zo-gd", lr=0.001)  # T = 2000: Tr ~ ±40 sits far below T, a log-wide panel
    tr = [-47.6, -22.7, 30.0, -25.1]
    probe = {"lambda_max": [11.0, 11.9, 13.0, 14.7], "lambda_max_err": [1e-4] * 4, "trace": tr,
             "trace_err": [41.9, 38.7, 5.0, 35.1], "ms_margin": [1.755, 1.21, 0.05, 0.348],
             "ms_margin_err": [0.53, 2.12, 0.01, 1.74], "ms_margin_neg": [1.78, 1.22, 0.01, 0.36],
             "ms_margin_neg_err": [0.55, 2.12, 0.01, 1.74]}
    _write(tmp_path / "neg.h5", cfg, probe, zo_trace=[5.0, -3.0, 8.0, -9.0])
    run = eos_probe.load(tmp_path / "neg.h5")
    assert list(run.verdicts()["state"]) == ["indefinite", "edge", "stable", "edge"]
    for kind in ("bands", "all", "paper"):
        fig = build_figure([run], kind)
        try:
            ax = fig.axes[0] if kind != "all" else _axis(fig, "measured curvature")
            assert ax.get_yscale() == "symlog"
            lo, hi = ax.get_ylim()
            assert lo < min(tr) and hi > 2000
            drawn = [ln for ln in ax.get_lines() if len(ln.get_ydata()) == len(tr)
                     and np.allclose(np.asarray(ln.get_ydata(), float), tr)]
            assert drawn, "the probe's trace is not drawn as logged"
            notes = [t.get_text() for t in ax.texts if t.get_gid() == "negative-note"]
            assert len(notes) == 1 and "Tr < 0 at 3 probes" in notes[0] and "zo_trace < 0 at 2" in notes[0] \
                and "(indefinite H)" in notes[0]
            assert _marked(ax, run) == {0: "indefinite", 10: "edge", 20: "stable", 30: "edge"}
        finally:
            plt.close(fig)
    # a positive probe trace keeps its log axis when only the free monitor dips below 0 (its noise)
    cfg = TrainConfig(optimizer="zo-gd", lr=0.016)  # T = 125; Tr from 4 to 80: a log-wide panel
    _write(tmp_path / "mon.h5", cfg, {"lambda_max": [1.0, 2.0, 20.0, 30.0], "lambda_max_err": [1e-4] * 4,
                                      "trace": [4.0, 5.0, 60.0, 80.0], "trace_err": [0.1, 0.1, 2.0, 2.0]},
           zo_trace=[4.5, -0.3, 55.0, 82.0])
    fig = build_figure([eos_probe.load(tmp_path / "mon.h5")], "paper")
    try:
        ax = fig.axes[0]
        assert ax.get_yscale() == "log"
        notes = [t.get_text() for t in ax.texts if t.get_gid() == "negative-note"]
        assert len(notes) == 1 and "zo_trace ≤ 0 at 1 logged step" in notes[0] and "not drawn" in notes[0] \
            and "(estimate noise)" in notes[0]  # the monitor below 0 is its noise, not an indefinite H
    finally:
        plt.close(fig)
    # a sign-changing trace on a linear axis keeps its negative part in view
    cfg = TrainConfig(optimizer="zo-gd", lr=0.05)  # T = 40
    _write(tmp_path / "lin.h5", cfg, {"lambda_max": [2.0, 2.0], "lambda_max_err": [0.0, 0.0],
                                      "trace": [-5.0, 20.0], "trace_err": [1.0, 1.0]})
    fig = build_figure([eos_probe.load(tmp_path / "lin.h5")], "bands")
    try:
        ax = fig.axes[0]
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] < -5.0
        assert any("drawn below 0" in t.get_text() for t in ax.texts)
    finally:
        plt.close(fig)


def test_infinite_s_is_marked_at_the_top(tmp_path) -> None:
    import matplotlib.pyplot as plt

    cfg = TrainConfig(optimizer="zo-gd", lr=0.01)  # T = 200, per-mode limit 100
    _write(tmp_path / "inf.h5", cfg, {"lambda_max": [5.0, 150.0], "lambda_max_err": [1e-4, 1e-4],
                                      "trace": [50.0, 190.0], "trace_err": [1.0, 1.0],
                                      "ms_margin": [0.3, math.inf], "ms_margin_err": [0.02, 0.0],
                                      "ms_margin_neg": [0.0, 0.0], "ms_margin_neg_err": [0.0, 0.0]})
    run = eos_probe.load(tmp_path / "inf.h5")
    assert list(run.verdicts()["state"]) == ["stable", "unstable"]
    fig = build_figure([run], "margin")
    try:
        ax = fig.axes[0]
        marked = _marked(ax, run)
        assert marked == {0: "stable", 10: "unstable"}
        top = ax.get_ylim()[1]
        unstable = next(ln for ln in ax.get_lines() if (ln.get_gid() or "").endswith("|unstable"))
        assert list(unstable.get_ydata()) == [top]
        assert any("S = inf at 1 probe" in t.get_text() for t in ax.texts)
    finally:
        plt.close(fig)


def test_api_ms_margin_carries_the_verdict_and_the_negative_mass() -> None:
    """eos_probe.ms_margin's S_neg against the dense spectrum, and its verdict is classify on its numbers."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    H = eos_probe.hessian(model, "mse", (x, y))
    ev = np.linalg.eigvalsh(H.to_scipy() @ np.eye(H.dim))
    lr = 0.05
    est = eos_probe.ms_margin(H, optimizer="zo-gd", lr=lr, n_probes=8, n_steps=H.dim)
    T = est.extra["threshold"]
    neg, neg_err = est.extra["negative"]
    exact_neg = np.sum(np.clip(-ev, 0, None)) / T
    assert exact_neg > 0 and abs(neg - exact_neg) < 4 * neg_err + 0.02 * exact_neg, (neg, neg_err, exact_neg)
    v = est.extra["verdict"]
    assert isinstance(v, th.StabilityVerdict) and v.basis == "S" and v.s == est.value
    ref = classify(est.extra["band"], s=est.value, s_err=est.error, s_neg=neg, s_neg_err=neg_err)
    assert (v.state, v.verdict) == (ref.state, ref.verdict)
    gd = eos_probe.ms_margin(H, optimizer="gd", lr=lr)
    assert gd.extra["verdict"].basis == "lambda_max" and gd.extra["verdict"].s == gd.value


def test_a_stand_in_line_says_so() -> None:
    """RISE, grouped and CoCD presets have no single spectral band: their λ_max/T is against a stand-in line."""
    b = th.band_for({"optimizer": "rise", "lr": 0.1}, 100)
    v = classify(b, lambda_max=5.0, lambda_max_err=1e-4)
    assert v.state == "stable" and "stands in" in v.note
    assert classify(GD, lambda_max=5.0, lambda_max_err=1e-4).note == ""
