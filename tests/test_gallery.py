"""The figure gallery (recipes/paper/, eos_probe.gallery, --kind paper): recipes that validate and run, numbers
read correctly from run files, and a figure legible at single-column width."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from eos_probe.errors import UserError
from eos_probe.gallery import _longest_run, _wall_seconds, draw_recipe, load_recipes, make_gallery, run_numbers, write_index

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes" / "paper"
NAMES = sorted(p.stem for p in RECIPES.glob("*.toml"))


def test_every_family_and_optimizer_has_a_recipe():
    recipes = load_recipes(RECIPES)
    models = {r.spec.base.get("model") for r in recipes if r.spec.base.get("optimizer") == "zo-gd"}
    assert {"cnn", "resnet", "vit", "lstm", "mamba"} <= models
    optims = {r.spec.base.get("optimizer") for r in recipes} | {o for r in recipes for o in r.spec.axes.get("optimizer", [])}
    assert {"zo-gd", "zo-gdm", "zo-adam", "gd"} <= optims
    for r in recipes:
        text = r.path.read_text()
        assert "Paper scale" in text, f"{r.path}: no paper-scale variant in the comments"
        assert r.figure.get("title"), f"{r.path}: [figure] title missing"


def _short(recipe, steps: int = 20):
    r = copy.copy(recipe)
    r.spec = copy.deepcopy(recipe.spec)
    r.spec.base.update(steps=steps, probe_every=steps)
    r.spec.base.pop("probe_budget", None)  # a budget belongs to probe_every 'auto', which the short run replaces
    return r


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_recipe_runs_20_steps_and_draws(name, tmp_path):
    """Every gallery recipe, all of its points, 20 steps with a probe at 0 and 20, then its figure and index."""
    from eos_probe.sweep import run_sweep

    (rec,) = load_recipes(RECIPES, [name])
    rec = _short(rec)
    (tmp_path / "runs").mkdir()
    rep = run_sweep(rec.spec, tmp_path / "runs" / rec.name, workers=1)
    assert set(rep.counts) <= {"finished", "diverged"}, rep.entries
    res = draw_recipe(rec, tmp_path / "runs", tmp_path / "figures")
    for f in res.files:
        assert Path(f).stat().st_size > 5000
    assert len(res.runs) == len(rec.points(tmp_path / "runs"))


def test_longest_stretch_against_a_hand_count():
    steps = np.arange(0, 1100, 100)
    inside = np.array([0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1], bool)
    assert _longest_run(steps, inside) == (400, 700)
    assert _longest_run(steps, np.zeros(11, bool)) is None
    assert _longest_run(steps, np.ones(11, bool)) == (0, 1000)
    assert _longest_run(steps, np.array([0] * 9 + [1, 1], bool)) == (900, 1000)


class _FakeRun:
    """The parts of a Run that run_numbers reads, with a known S(η) series."""

    def __init__(self, s, status="finished", stop=None):
        import pandas as pd

        from eos_probe.theory import band_for

        self.path = Path("fake.h5")
        self.status = status
        self.steps_done = int(stop or 100 * (len(s) - 1))
        self.attrs = {"stop_step": self.steps_done}
        self._band = band_for({"optimizer": "zo-gd", "lr": 0.01}, 100)
        n = len(s)
        steps = np.arange(n) * 100
        self.probe = pd.DataFrame({"step": steps, "ms_margin": s, "lambda_max": np.full(n, 10.0),
                                   "trace": np.full(n, 100.0)})
        self.train = pd.DataFrame({"step": steps, "loss": np.linspace(1.0, 0.5, n)})
        self.track = None

    def band(self):
        return self._band

    def curvature(self):
        return self.probe

    def label(self):
        return "fake"


def test_wall_seconds_counts_a_pack_once_by_its_longest_copy_and_a_resumed_run_in_full():
    from types import SimpleNamespace

    import pandas as pd

    def run(path, wall, copies=None, train_seconds=1.0):
        attrs = {"train_seconds": train_seconds, **({"sweep": {"copies": copies}} if copies else {})}
        return SimpleNamespace(path=path, attrs=attrs, train=pd.DataFrame({"wall_time": wall}))

    pack = ["a.h5", "b.h5"]
    diverged_first = run("a.h5", [0.0, 5.0], pack)  # stopped its clock at its divergence
    finished = run("b.h5", [0.0, 5.0, 60.0], pack)
    resumed = run("c.h5", [0.0, 100.0, 130.0], train_seconds=30.0)  # attribute: the resumed session only
    assert _wall_seconds([diverged_first, finished, resumed]) == 60.0 + 130.0


def test_run_numbers_edge_stretch_and_divergence():
    s = [0.2, 0.8, 0.9, 1.0, 1.2, 1.1, 0.9, 0.8, 0.75, 0.95, 1.4, 1.6]
    n = run_numbers(_FakeRun(s))
    assert n["edge"]["from"] == 100 and n["edge"]["to"] == 1000 and n["edge"]["steps"] == 900
    assert n["at_edge"] is False  # 900 < 1000 steps
    n = run_numbers(_FakeRun(s[:-1] + [1.3, 1.2]))
    assert n["edge"]["steps"] == 1100 and n["at_edge"] is True
    assert n["edge"]["S"] == [0.75, 1.4]
    assert n["edge"]["tr_over_T"] == [0.5, 0.5]  # Tr = 100 against T = 2q/η = 200
    assert n["edge"]["upper_over_T"] == [0.6, 0.6]  # (Tr + 2·λ_max)/T = 120/200
    d = run_numbers(_FakeRun(s[:-1] + [1.3, 1.2], status="diverged", stop=1100))
    assert d["diverged_at"] == 1100 and d["at_edge"] is False  # the stretch runs into the divergence


def test_summary_lines_say_what_the_probe_grid_could_see():
    """A run probed every 100 steps that diverges at 670: the line names the probes it rests on and the
    unprobed stretch before the divergence, never 'S never ...'."""
    from eos_probe.gallery import _run_line

    run = _FakeRun([0.1, 0.12, 0.15, 0.16, 0.14, 0.13, 0.16], status="diverged", stop=670)
    line = _run_line(run_numbers(run))
    assert "at none of its 7 probes, every 100 steps (max 0.16)" in line
    assert "no certified probe between step 600 and the divergence at 670" in line
    assert "never" not in line
    ok = _run_line(run_numbers(_FakeRun([0.5] + [1.0] * 12)))
    assert "at every probe from step 100 to 1,200 (1,100 steps, at the edge; 13 probes, every 100 steps)" in ok
    # a first-order run has a classical band and no probe grid in its numbers: the gallery's index crashed on it
    gd = {"label": "gd, η=0.3", "status": "finished", "steps": 1500, "band": "classical",
          "lambda_over_T_late": [1.01, 1.51], "threshold": 6.67}
    assert "**gd, η=0.3**: finished, 1,500 steps; second half: λ_max/T 1.01–1.51" in _run_line(gd)


def test_figure_table_must_be_a_table(tmp_path):
    from eos_probe.sweep import parse_sweep

    with pytest.raises(UserError, match=r"\[figure\] must be a table"):
        parse_sweep({"model": "mlp", "sweep": {"lr": [0.1]}, "figure": "x"}, "r.toml")
    (tmp_path / "a.toml").write_text('model = "mlp"\n[sweep]\nlr = [0.1]\n[figure]\ntitel = "x"\n')
    with pytest.raises(UserError, match="unknown \\[figure\\] key"):
        load_recipes(tmp_path)
    with pytest.raises(UserError, match="no such recipe"):
        load_recipes(RECIPES, ["nope"])
    with pytest.raises(UserError, match="no such recipe directory"):
        load_recipes(tmp_path / "missing")


@pytest.fixture(scope="module")
def tiny_gallery(tmp_path_factory):
    """A two-point ZO-GD recipe on a tiny MLP, run and drawn by make_gallery (the script's code path)."""
    d = tmp_path_factory.mktemp("gallery")
    (d / "recipes").mkdir()
    (d / "recipes" / "tiny.toml").write_text(
        'model = "mlp"\nmodel_args = { hidden = [8] }\nn_per_class = 10\noptimizer = "zo-gd"\nsteps = 40\n'
        'probe_every = 10\n[sweep]\nlr = [0.01, 0.5]\n[figure]\ntitle = "tiny"\n')
    res = make_gallery(d / "recipes", d / "runs", d / "figures", workers=1, echo=lambda s: None)
    return d, res


def test_make_gallery_writes_figures_index_and_numbers_from_the_files(tiny_gallery):
    from eos_probe import load

    d, (res,) = tiny_gallery
    assert {Path(f).suffix for f in res.files} == {".png", ".pdf"}
    entries = json.loads((d / "figures" / "gallery.json").read_text())
    assert [e["recipe"] for e in entries] == ["tiny"]
    readme = (d / "figures" / "README.md").read_text()
    assert "python scripts/make_figures.py --only tiny" in readme and "![tiny](tiny.png)" in readme
    for n in entries[0]["runs"]:
        r = load(n["file"])
        assert n["status"] == r.status
        assert n["loss_last"] == pytest.approx(float(r.train["loss"].dropna().iloc[-1]))
    # a hand-written head survives a rewrite; the measured part is replaced, not appended
    head = "# Gallery\n\nhand-written text\n\n"
    text = readme.split("<!-- measured")[1]
    (d / "figures" / "README.md").write_text(head + "<!-- measured" + text)
    write_index(d / "recipes", d / "runs", d / "figures")
    again = (d / "figures" / "README.md").read_text()
    assert again.startswith(head) and again.count("### tiny") == 1


def test_paper_figure_is_single_column_with_fonts_of_at_least_8pt(tiny_gallery):
    import matplotlib.text

    from eos_probe.plot.figures import build_figure

    d, _ = tiny_gallery
    runs = sorted((d / "runs" / "tiny").glob("*.h5"))
    fig = build_figure(runs, "paper")
    try:
        assert fig.get_size_inches()[0] == pytest.approx(3.3)
        sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]
        assert sizes and min(sizes) >= 8
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any(lab.startswith("η=0.01") for lab in labels)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
