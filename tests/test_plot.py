"""Figures from short real runs: every kind renders a non-empty image whose axes carry the expected labels
and whose lines are the logged numbers and the theory's thresholds; files without probe data fail clearly."""
from __future__ import annotations

import numpy as np
import pytest

import eos_probe
from eos_probe.cli import main
from eos_probe.config import TrainConfig
from eos_probe.errors import UserError
from eos_probe.plot import KINDS, band_figure, build_figure, density_grid, make_figure
from eos_probe.train import train

TINY = dict(model="cnn", model_args={"widths": [2, 4], "hidden": 8}, n_per_class=5, device="cpu", steps=6,
            probe_every=3, checkpoint_every=10**6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    zo = ["lambda_max", "trace:method=hutchinson:n_matvec=10", "ms_margin:n_probes=2:n_steps=6",
          "density:n_probes=2:n_steps=8"]
    out = {}
    for name, opt, lr, probe in (("zo1", "zo-gd", 0.05, zo), ("zo2", "zo-gd", 0.1, zo),
                                 ("adam", "zo-adam", 1e-3, ["precond_lambda_max", "precond_trace:n_matvec=10",
                                                            "commutator_ratio:n_probes=4"]),
                                 ("gd", "gd", 0.1, ["lambda_max"]), ("bare", "zo-gd", 0.05, [])):
        cfg = TrainConfig(**TINY, optimizer=opt, lr=lr, probe=probe, out=str(d / f"{name}.h5"))
        train(cfg, progress=False)
        out[name] = eos_probe.load(cfg.out)
    return out


def _lines(ax):
    return [ln for ln in ax.get_lines() if len(ln.get_xdata())]


def _has_line(ax, y, x=None) -> bool:
    """A line with exactly these y values (and x values, if given); NaNs compare equal."""
    for ln in _lines(ax):
        ly = np.asarray(ln.get_ydata(), float)
        if ly.shape == np.shape(y) and np.allclose(ly, y, rtol=1e-12, equal_nan=True):
            if x is None or np.allclose(np.asarray(ln.get_xdata(), float), x):
                return True
    return False


def _hline(ax, y: float) -> bool:
    return any(np.allclose(np.asarray(ln.get_ydata(), float), y, rtol=1e-12) and len(set(ln.get_ydata())) == 1
               for ln in _lines(ax))


def _texts(fig) -> str:
    parts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
        leg = ax.get_legend()
        parts += [t.get_text() for t in leg.get_texts()] if leg else []
    parts += [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    return "\n".join(parts)


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_bands_draw_trace_upper_bound_and_threshold_per_run(runs) -> None:
    a, b = runs["zo1"], runs["zo2"]
    fig = build_figure([b, a], "bands")
    ax = fig.axes[0]
    for r in (a, b):
        band = r.band()
        steps = r.probe["step"].to_numpy()
        tr, lm = r.probe["trace"].to_numpy(), r.probe["lambda_max"].to_numpy()
        assert band.threshold == pytest.approx(2 / r.lr) and band.c == pytest.approx(2.0)
        assert _has_line(ax, tr, steps)
        assert _has_line(ax, tr + 2.0 * lm, steps)
        assert _hline(ax, 2 / r.lr)
    text = _texts(fig)
    assert "step" in ax.get_xlabel() and "Tr" in ax.get_ylabel()
    assert "η=0.05" in text and "2/η = 40" in text and "2/η = 20" in text and "q=1" in text
    assert "Band convention" in text
    _close(fig)
    fig = build_figure([a, b], "bands", normalize=True)
    assert _hline(fig.axes[0], 1.0) and "/ T" in fig.axes[0].get_ylabel()
    r = a
    assert _has_line(fig.axes[0], r.probe["trace"].to_numpy() * r.lr / 2)
    _close(fig)


def test_bands_draw_the_free_zo_trace_beside_the_probe_trace(runs) -> None:
    r = runs["zo1"]
    zt, steps = r.train["zo_trace"].to_numpy(), r.train["step"].to_numpy()
    ok = np.isfinite(zt)
    assert ok.any()
    for normalize, scale in ((False, 1.0), (True, r.lr / 2)):
        fig = build_figure([r], "bands", normalize=normalize)
        assert _has_line(fig.axes[0], zt[ok] * scale, steps[ok])
        assert "zo_trace" in _texts(fig)
        _close(fig)
    # Adam: the band is about P^-1 H, the ZO directions measure H — not drawn on that axis
    a = runs["adam"]
    assert "zo_trace" in a.train
    fig = build_figure([a], "bands")
    assert "zo_trace" not in _texts(fig)
    assert not _has_line(fig.axes[0], a.train["zo_trace"].to_numpy()[np.isfinite(a.train["zo_trace"].to_numpy())])
    _close(fig)


def test_adam_bands_use_the_preconditioned_hessian_and_say_so(runs) -> None:
    r = runs["adam"]
    fig = build_figure([r], "bands")
    ax = fig.axes[0]
    c = 1 + 0.1 / 1.9  # THEORY.md §3: c = 1 + q(1−β1)/(1+β1)
    tr, lm = r.probe["precond_trace"].to_numpy(), r.probe["precond_lambda_max"].to_numpy()
    assert _has_line(ax, tr) and _has_line(ax, tr + c * lm) and _hline(ax, 2 / r.lr)
    text = _texts(fig)
    assert "P^{-1}H" in ax.get_ylabel().replace(" ", "") or "P^{-1} H" in ax.get_ylabel()
    assert "commutes" in text and "measured commutator ratio" in text and "β₁=0.9" in text
    _close(fig)


def test_lambda_draws_the_first_order_thresholds(runs) -> None:
    fig = build_figure([runs["gd"], runs["zo1"]], "lambda")
    ax = fig.axes[0]
    assert _hline(ax, 2 / 0.1) and _hline(ax, 2 / 0.05)  # 2/η for GD and for ZO-GD's first-order twin
    assert _has_line(ax, runs["gd"].probe["lambda_max"].to_numpy())
    assert "lambda" in ax.get_ylabel() or "λ" in ax.get_ylabel()
    _close(fig)


def test_loss_commutator_and_spectrum_panels(runs) -> None:
    fig = build_figure([runs["zo1"], runs["bare"]], "loss")
    ax = fig.axes[0]
    assert "loss" in ax.get_ylabel()
    lo, hi = ax.get_ylim()
    assert ax.get_yscale() == ("log" if hi / lo >= 1.3 else "linear")  # flat losses: linear, see _log_ticks
    assert _has_line(ax, runs["bare"].train["loss"].to_numpy())
    _close(fig)
    fig = build_figure([runs["adam"]], "commutator")
    ax = fig.axes[0]
    r = runs["adam"].probe["commutator_ratio"].to_numpy()
    assert np.isnan(r[0]) and (r[1:] > 0).all()  # P = 1 before the first update is no preconditioner: NaN
    assert _hline(ax, 0.05) and _has_line(ax, r[1:])
    assert ax.get_yscale() == "log" and "PH" in ax.get_ylabel()
    _close(fig)
    fig = build_figure([runs["zo1"]], "spectrum")
    ax = fig.axes[0]
    from matplotlib.collections import QuadMesh

    mesh = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert mesh and mesh[0].get_array().shape[1] == len(runs["zo1"].spectra("density")["step"])
    assert "eigenvalue" in ax.get_ylabel() and any("log" in a.get_ylabel() for a in fig.axes[1:])
    _close(fig)


def test_margin_panel_draws_s_against_one(runs) -> None:
    fig = build_figure([runs["zo1"], runs["zo2"]], "margin")
    ax = fig.axes[0]
    assert _hline(ax, 1.0) and "S" in ax.get_ylabel()
    for r in (runs["zo1"], runs["zo2"]):
        s, err = r.probe["ms_margin"].to_numpy(), r.probe["ms_margin_err"].to_numpy()
        assert _has_line(ax, s)
        # ηλ_max ≈ 0.1 here, so S = Tr(H₊)/T up to the small O((ηλ)²) remainder (docs/theory.md §2, slope 1/T at
        # 0); the Hessian is indefinite, and Tr(H₊)/T = Tr(H)/T + S_neg (ms_margin_neg = Σ|λ<0|/T)
        pos_over_t = r.probe["trace"].to_numpy() * r.lr / 2 + r.probe["ms_margin_neg"].to_numpy()
        spread = 5 * np.hypot(err, r.probe["ms_margin_neg_err"].to_numpy())
        assert np.all(np.abs(s - pos_over_t) <= spread + 0.2 * np.abs(pos_over_t))
    _close(fig)


def test_density_grid_is_a_probability_density() -> None:
    rng = np.random.default_rng(0)
    nodes = rng.normal(size=(3, 2, 7))
    weights = rng.random((3, 2, 7))
    grid = np.linspace(-8, 8, 4001)
    dens = density_grid(nodes, weights, grid, sigma=0.2)
    np.testing.assert_allclose(np.trapezoid(dens, grid, axis=1), 1.0, rtol=1e-6)
    # the mean of the density is the weighted mean of the nodes
    w = weights / weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.trapezoid(dens * grid, grid, axis=1), (w * nodes).sum(-1).mean(1), atol=1e-6)


#: kinds that need their own probe metrics (entk_fidelity, cocd_edge, forgetting) or a task sequence: tested in
#: test_entk.py / test_cocd.py / test_forgetting_metrics.py / test_tasks.py
SYSTEM_KINDS = ("entk", "cocd-edge", "forgetting", "tasks")


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in SYSTEM_KINDS])
def test_every_kind_writes_a_non_empty_image(runs, kind, tmp_path) -> None:
    sel = {"commutator": [runs["adam"]], "spectrum": [runs["zo1"]], "margin": [runs["zo1"], runs["zo2"]]
           }.get(kind, [runs["zo1"], runs["zo2"], runs["adam"]])
    out = make_figure([r.path for r in sel], kind, tmp_path / f"{kind}.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.shape[0] > 600 and img.shape[1] > 1000
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_vector_formats_and_default_output(runs, tmp_path, monkeypatch) -> None:
    pdf = make_figure([runs["zo1"]], "bands", tmp_path / "b.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    svg = make_figure([runs["zo1"]], "loss", tmp_path / "l.svg")
    assert b"<svg" in svg.read_bytes()[:2000]
    monkeypatch.chdir(tmp_path)  # the default is beside the run files, not in the current directory
    path = band_figure([runs["zo1"].path, runs["zo2"].path])
    assert path == runs["zo1"].path.parent / "figures" / "zo1+1-bands.png" and path.stat().st_size > 20_000
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("kind", ["bands", "lambda", "margin", "spectrum", "commutator", "all"])
def test_plotting_a_file_without_probe_data_is_a_clear_error(runs, kind, tmp_path) -> None:
    with pytest.raises(UserError, match="no probe data|no spectral density"):
        make_figure([runs["bare"]], kind, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_and_inspect_command_lines(runs, tmp_path, capsys, monkeypatch) -> None:
    def cli(args):
        with pytest.raises(SystemExit) as e:
            main(args)
        out = capsys.readouterr()
        return e.value.code, out.out, out.err

    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["plot", str(runs["zo1"].path), "--kind", "loss"])
    default = runs["zo1"].path.parent / "figures" / "zo1-loss.png"
    assert code == 0 and out.strip() == str(default) and default.stat().st_size > 0, err
    assert not (tmp_path / "figures").exists()

    code, out, err = cli(["plot", str(runs["zo1"].path), str(runs["zo2"].path), "--out", str(tmp_path / "b.png")])
    assert code == 0 and out.strip().endswith("b.png") and (tmp_path / "b.png").stat().st_size > 0
    code, out, err = cli(["plot", str(runs["zo1"].path), "--out", str(tmp_path / "b.jpeg")])
    assert code == 2 and err.startswith("error: ") and ".jpeg" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(["plot", str(runs["gd"].path), "--kind", "commutator", "--out", str(tmp_path / "c.png")])
    assert code == 2 and "commutator_ratio" in err
    code, out, err = cli(["plot", str(runs["bare"].path), "--out", str(tmp_path / "n.png")])
    assert code == 2 and "no probe data" in err
    code, out, err = cli(["inspect", str(runs["zo1"].path)])
    v = runs["zo1"].verdicts().iloc[-1]
    assert code == 0 and f"verdict     {v['verdict']} at step 6" in out and "T = 40" in out
    assert "lambda_max" in out and "ms_margin" in out
    code, out, err = cli(["inspect", str(runs["bare"].path)])
    assert code == 0 and "no probe data" in out
    code, out, err = cli(["inspect", str(tmp_path / "missing.h5")])
    assert code == 2 and "does not exist" in err


def _labels(fig, ax) -> list[str]:
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    return [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks()) if lo <= v <= hi and t.get_text()]


@pytest.mark.parametrize("lo, hi", [(0.31, 0.64), (0.05, 2.0), (0.6931, 0.6934), (1.0, 6.0), (120.0, 1000.0)])
def test_log_axes_have_enough_distinct_labels_and_integer_steps(lo, hi) -> None:
    """A newcomer saw log loss axes with three labels, repeated labels on flat losses and 0.5-step ticks."""
    import matplotlib.pyplot as plt

    from eos_probe.plot.style import _integer_steps, _log_ticks

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2, 3], np.geomspace(hi, lo, 4))
    ax.set_yscale("log")
    _log_ticks(ax, flat_linear=True)
    _integer_steps(ax)
    labels = _labels(fig, ax)
    assert len(labels) >= 4 and len(set(labels)) == len(labels), labels
    assert "e+" not in "".join(labels)
    steps = [v for v in ax.get_xticks() if 0 <= v <= 3]
    assert steps and all(float(v).is_integer() for v in steps)
    plt.close(fig)


def test_lambda_panel_of_a_zo_run_draws_its_per_mode_limit(runs) -> None:
    from eos_probe.run import band_for

    r = runs["zo1"]
    limit = band_for(r.config, r.attrs.get("n_params")).lambda_max_limit
    fig = build_figure([r], "lambda")
    ax = fig.axes[0]
    assert _hline(ax, 2 / r.lr) and _hline(ax, limit) and limit < 2 / r.lr
    text = _texts(fig)
    assert "Ritz residual" in text and "s.e." not in text and "ZO per-mode limit" in text
    _close(fig)
