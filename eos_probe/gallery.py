"""The figure gallery: run the recipes of `recipes/paper/`, draw their figures, and write what they measured.

Each recipe is a sweep file (`eos-probe sweep --config`) with an optional `[figure]` table (`title`, `kind`,
default "paper"). `make_gallery` runs every point not yet finished (the sweep driver skips finished and
diverged run files, resumes killed ones), draws `figures/<recipe>.png` and `.pdf`, and rewrites
`figures/README.md` and `figures/gallery.json` from the run files: the command, machine and wall time, and
per run the numbers a reader checks against the figure (the longest stretch of S(η) inside the edge band,
Tr/T and (Tr + cλ_max)/T over it, where it diverged, the loss). Numbers are read from the files, never typed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UserError
from .events import DROP, SPIKE, catapults, probe_grid
from .plot.paper import EDGE_BAND

#: a gallery run is "at the edge" when S(η) stays inside EDGE_BAND this many consecutive steps without diverging
EDGE_STEPS = 1000


@dataclass
class Recipe:
    """One gallery figure: its sweep file, the sweep it expands to, and the `[figure]` options."""

    path: Path
    spec: Any  # eos_probe.sweep.SweepSpec
    figure: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    def points(self, runs_dir: Path) -> list:
        return self.spec.points(runs_dir / self.name)


def load_recipes(recipe_dir: str | Path, only: list[str] | None = None) -> list[Recipe]:
    """Every `*.toml` in `recipe_dir` (sorted), each checked as a sweep file; `only` keeps those names."""
    from .config import read_toml
    from .sweep import parse_sweep

    recipe_dir = Path(recipe_dir)
    if not recipe_dir.is_dir():
        raise UserError(f"{recipe_dir}: no such recipe directory")
    files = sorted(recipe_dir.glob("*.toml"))
    if not files:
        raise UserError(f"{recipe_dir}: no *.toml recipes")
    recipes = []
    for f in files:
        raw = read_toml(f, "recipe")
        figure = dict(raw.get("figure") or {})
        unknown = set(figure) - {"title", "kind"}
        if unknown:
            raise UserError(f"{f}: unknown [figure] key(s) {', '.join(sorted(unknown))}; valid: title, kind")
        recipes.append(Recipe(f, parse_sweep(raw, str(f)), figure))
    if only:
        names = {r.name for r in recipes}
        missing = [o for o in only if o not in names]
        if missing:
            raise UserError(f"--only {', '.join(missing)}: no such recipe in {recipe_dir} "
                            f"(have: {', '.join(sorted(names))})")
        recipes = [r for r in recipes if r.name in only]
    return recipes


def _longest_run(steps: np.ndarray, inside: np.ndarray) -> tuple[int, int] | None:
    """(first, last) probe step of the longest stretch of consecutive probes with `inside` true."""
    best, start = None, None
    for i, ok in enumerate(inside):
        if ok and start is None:
            start = i
        if start is not None and (not ok or i == len(inside) - 1):
            end = i if ok else i - 1
            if best is None or steps[end] - steps[start] > steps[best[1]] - steps[best[0]]:
                best = (start, end)
            start = None
    return None if best is None else (int(steps[best[0]]), int(steps[best[1]]))


def _span(values: np.ndarray) -> list[float] | None:
    v = values[np.isfinite(values)]
    return [float(v.min()), float(v.max())] if v.size else None


def run_numbers(run) -> dict[str, Any]:
    """What a run measured, for figures/README.md: status, edge stretch, Tr/T and S over it, loss."""
    b = run.band()
    cur = run.curvature()
    out: dict[str, Any] = {"file": str(run.path), "label": run.label(), "status": run.status,
                           "steps": int(run.steps_done), "threshold": float(b.threshold), "band": b.kind,
                           "quantity": b.quantity}
    if run.status == "diverged":
        out["diverged_at"] = int(run.attrs.get("stop_step", run.steps_done))
    loss = run.train["loss"].to_numpy() if len(run.train) else np.zeros(0)
    ok = np.isfinite(loss)
    if ok.any():
        out["loss_first"], out["loss_last"] = float(loss[ok][0]), float(loss[ok][-1])
    steps = cur["step"].to_numpy()
    late = steps >= steps.max() / 2 if steps.size else np.zeros(0, bool)
    if b.kind == "classical":
        out["lambda_over_T_late"] = _span(cur["lambda_max"].to_numpy()[late] / b.threshold)
        return out
    tr = cur["trace"].to_numpy() / b.threshold
    upper = (cur["trace"].to_numpy() + b.c * cur["lambda_max"].to_numpy()) / b.threshold
    out["tr_over_T_max"] = float(np.nanmax(tr)) if np.isfinite(tr).any() else None
    if "ms_margin" in run.probe and run.probe["ms_margin"].notna().any():
        s = run.probe["ms_margin"].to_numpy()
        ps = run.probe["step"].to_numpy()
        inside = np.isfinite(s) & (s >= EDGE_BAND[0]) & (s <= EDGE_BAND[1])
        stretch = _longest_run(ps, inside)
        out["S_max"] = float(np.nanmax(s))
        if stretch is not None:
            lo, hi = stretch
            sel = (steps >= lo) & (steps <= hi)
            out["edge"] = {"from": lo, "to": hi, "steps": hi - lo, "S": _span(s[(ps >= lo) & (ps <= hi)]),
                           "tr_over_T": _span(tr[sel]), "upper_over_T": _span(upper[sel])}
        out["at_edge"] = bool(stretch is not None and stretch[1] - stretch[0] >= EDGE_STEPS
                              and not (run.status == "diverged" and stretch[1] >= out.get("diverged_at", 0)))
    else:
        out["tr_over_T_late"] = _span(tr[late])
        out["upper_over_T_late"] = _span(upper[late])
    out["grid"] = probe_grid(run)
    if run.status == "diverged" and run.track is not None and len(run.track):
        last = out["grid"].get("last_probe_before_divergence") or 0
        t = run.track[(run.track["step"] > last) & (run.track["s_hi"] > 1)]
        out["bracket_flag"] = int(t["step"].iloc[0]) if len(t) else None
    out["spikes"] = [{k: c[k] for k in ("start", "peak", "end", "catapult")} for c in catapults(run)]
    if "commutator_ratio" in run.probe:
        r = run.probe["commutator_ratio"].to_numpy()
        fin = r[np.isfinite(r) & (r > 0)]
        if fin.size:
            out["commutator_first_last"] = [float(fin[0]), float(fin[-1])]
    return out


def _wall_seconds(runs: list) -> float:
    """A recipe's training wall time from its run files: the last `/train/wall_time` (it runs on across resumes;
    the `train_seconds` attribute is the last session's only); packed copies share one clock, so a pack counts
    once, as its longest copy (a copy that diverged early stopped its clock early)."""
    packs: dict[tuple, float] = {}
    for r in runs:
        sw = r.attrs.get("sweep") or {}
        key = tuple(sw.get("copies") or [str(r.path)])
        wall = r.train["wall_time"].to_numpy() if "wall_time" in r.train else []
        packs[key] = max(packs.get(key, 0.0), float(wall[-1]) if len(wall) else 0.0)
    return sum(packs.values())


@dataclass
class FigureResult:
    recipe: str
    title: str
    files: list[str]
    runs: list[dict[str, Any]]
    wall_seconds: float
    machine: str
    command: str


def _machine(runs: list) -> str:
    a = runs[0].attrs
    v = a.get("versions") or {}
    return f"{a.get('device', '?')}, {a.get('threads', '?')} thread(s), torch {v.get('torch', '?')}"


def draw_recipe(recipe: Recipe, runs_dir: Path, out_dir: Path) -> FigureResult:
    """Draw one recipe's figure (PNG and PDF) from its run files and read its numbers."""
    from .plot.figures import make_figure
    from .run import load

    files = [Path(p.file) for p in recipe.points(runs_dir)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise UserError(f"{recipe.name}: run file(s) missing: {', '.join(missing)}; run the recipe first")
    runs = [load(f) for f in files]
    kind = recipe.figure.get("kind", "paper")
    title = recipe.figure.get("title")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [str(make_figure(runs, kind, out_dir / f"{recipe.name}{ext}", title=title)) for ext in (".png", ".pdf")]
    return FigureResult(recipe.name, title or recipe.name, written, [run_numbers(r) for r in runs],
                        _wall_seconds(runs), _machine(runs),
                        f"python scripts/make_figures.py --only {recipe.name}")


def make_gallery(recipe_dir: str | Path = "recipes/paper", runs_dir: str | Path = "runs/paper",
                 out_dir: str | Path = "figures", *, only: list[str] | None = None, workers: int | None = None,
                 train: bool = True, echo: Callable[[str], None] = print,
                 device: str | None = None) -> list[FigureResult]:
    """Run (unless `train` is false) and draw every recipe; rewrite figures/README.md and gallery.json.
    `device` overrides every recipe's device (e.g. "cuda")."""
    from .sweep import run_sweep

    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    recipes = load_recipes(recipe_dir, only)
    if device is not None:
        for rec in recipes:
            rec.spec.base["device"] = device
    results = []
    for rec in recipes:
        if train:
            t0 = time.perf_counter()
            runs_dir.mkdir(parents=True, exist_ok=True)
            report = run_sweep(rec.spec, runs_dir / rec.name, workers=workers, echo=echo)
            echo(f"{rec.name}: {report.counts} in {time.perf_counter() - t0:.0f} s")
        res = draw_recipe(rec, runs_dir, out_dir)
        echo(f"{rec.name}: wrote {', '.join(res.files)}")
        results.append(res)
    write_index(recipe_dir, runs_dir, out_dir)
    return results


def write_index(recipe_dir: str | Path, runs_dir: str | Path, out_dir: str | Path) -> Path:
    """figures/gallery.json and the measured part of figures/README.md, for every recipe whose runs exist."""
    from .run import load

    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    entries = []
    for rec in load_recipes(recipe_dir):
        files = [Path(p.file) for p in rec.points(runs_dir)]
        if not all(f.exists() for f in files) or not (out_dir / f"{rec.name}.png").exists():
            continue
        runs = [load(f) for f in files]
        entries.append({"recipe": rec.name, "title": rec.figure.get("title", rec.name),
                        "config": str(rec.path), "command": f"python scripts/make_figures.py --only {rec.name}",
                        "machine": _machine(runs), "wall_seconds": round(_wall_seconds(runs), 1),
                        "runs": [run_numbers(r) for r in runs]})
    (out_dir / "gallery.json").write_text(json.dumps(entries, indent=1) + "\n")
    readme = out_dir / "README.md"
    head = readme.read_text().split(MARK)[0] if readme.exists() else DEFAULT_HEAD
    readme.write_text(head + MARK + "\n\n" + _summary_md(entries) + "\n" + "\n".join(_entry_md(e) for e in entries))
    return readme


def _summary_md(entries: list[dict[str, Any]]) -> str:
    """One row per figure: its run with the longest stretch of S(η) in the edge band, and whether it is ≥ 1,000."""
    rows = [f"| figure | run with the longest edge stretch | S(η) over it | steps in [{EDGE_BAND[0]:g}, "
            f"{EDGE_BAND[1]:g}] | Tr/T over it | ≥ {EDGE_STEPS:,} steps, no divergence |",
            "| --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        with_edge = [n for n in e["runs"] if "edge" in n]
        if not with_edge:
            continue
        n = max(with_edge, key=lambda n: (bool(n.get("at_edge")), n["edge"]["steps"]))
        ed = n["edge"]
        rows.append(f"| [{e['recipe']}](#{_anchor(e['title'])}) | {n['label']} | {_fmt_span(ed['S'])} | "
                    f"{ed['from']:,}–{ed['to']:,} ({ed['steps']:,}) | {_fmt_span(ed['tr_over_T'])} | "
                    f"{'yes' if n.get('at_edge') else 'no'} |")
    return "\n".join(rows) + "\n" if len(rows) > 2 else ""


def _anchor(title: str) -> str:
    import re

    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).strip().replace(" ", "-")


MARK = "<!-- measured: everything below is written by scripts/make_figures.py from the run files -->"
DEFAULT_HEAD = "# Figure gallery\n\n"


def _fmt_span(span: list[float] | None) -> str:
    return "–" if not span else f"{span[0]:.2f}–{span[1]:.2f}"


def _run_line(n: dict[str, Any]) -> str:
    parts = [f"**{n['label']}**: {n['status']}"]
    if "diverged_at" in n:
        parts[0] += f" at step {n['diverged_at']:,}"
    else:
        parts[0] += f", {n['steps']:,} steps"
    g = n.get("grid", {})
    k = g.get("probes", 0)
    grid = ("no probe" if k == 0 else "1 probe" if k == 1 else f"{k} probes, every {g['median_gap']:g} steps"
            if g.get("max_gap") == g.get("median_gap") else f"{k} probes, gaps up to {g.get('max_gap', 0):,} steps") + \
        (f", {g['tracks']} tracking steps" if g.get("tracks") else "")
    if "edge" in n:
        e = n["edge"]
        parts.append(f"S(η) {_fmt_span(e['S'])} at every probe from step {e['from']:,} to {e['to']:,} "
                     f"({e['steps']:,} steps{', at the edge' if n.get('at_edge') else ''}; {grid}); over it Tr/T "
                     f"{_fmt_span(e['tr_over_T'])}, (Tr + cλ)/T {_fmt_span(e['upper_over_T'])}")
    elif "S_max" in n:
        parts.append(f"S(η) in [{EDGE_BAND[0]:g}, {EDGE_BAND[1]:g}] at none of its {grid} (max {n['S_max']:.2f}); "
                     f"max Tr/T {n['tr_over_T_max']:.2f}")
    last = g.get("last_probe_before_divergence")
    if "diverged_at" in n and last is not None and last < n["diverged_at"] - 1:
        flag = n.get("bracket_flag")
        parts.append(f"no certified probe between step {last:,} and the divergence at {n['diverged_at']:,}"
                     + (f" (tracking bracket S_hi > 1 from step {flag:,})" if flag is not None else ""))
    spikes = n.get("spikes", [])
    if spikes:
        cat = [sp for sp in spikes if sp["catapult"]]
        unseen = [sp for sp in spikes if sp["catapult"] is None and sp["end"] >= 0]
        at = ", ".join(format(sp["peak"], ",") for sp in cat)
        words = [f"{len(cat)} catapult{'s' * (len(cat) != 1)} (loss ≥ {100 * SPIKE:.0f} % above its minimum, then "
                 f"λ_max or Tr ≥ {100 * DROP:.0f} % lower: step {at})" if cat else "no catapult"]
        if unseen:
            words.append(f"{len(unseen)} loss spike(s) without curvature measured on both sides (step "
                         + ", ".join(format(sp["peak"], ",") for sp in unseen) + ")")
        parts.append("; ".join(words))
    if "tr_over_T_late" in n:
        parts.append(f"second half: {n['quantity']}/T {_fmt_span(n['tr_over_T_late'])}, "
                     f"({n['quantity']} + cλ_max)/T {_fmt_span(n['upper_over_T_late'])} (T = {n['threshold']:.3g})")
    if "lambda_over_T_late" in n:
        parts.append(f"second half: λ_max/T {_fmt_span(n['lambda_over_T_late'])} (T = {n['threshold']:.3g})")
    if "commutator_first_last" in n:
        c = n["commutator_first_last"]
        parts.append(f"commutator ratio {c[0]:.2f} → {c[1]:.3f}")
    if "loss_first" in n:
        parts.append(f"loss {n['loss_first']:.3f} → {n['loss_last']:.3g}")
    return "- " + "; ".join(parts)


def _entry_md(e: dict[str, Any]) -> str:
    lines = [f"### {e['title']}", "", f"![{e['title']}]({e['recipe']}.png) ([PDF]({e['recipe']}.pdf))", "",
             f"`{e['command']}` (recipe `{e['config']}`) — {e['machine']}, {e['wall_seconds'] / 60:.1f} min "
             "of training and probing.", ""]
    lines += [_run_line(n) for n in e["runs"]]
    return "\n".join(lines) + "\n"


__all__ = ["EDGE_STEPS", "FigureResult", "Recipe", "draw_recipe", "load_recipes", "make_gallery", "run_numbers",
           "write_index"]
