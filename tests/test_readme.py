"""The README is a front page that cannot drift: at most 200 lines; the two set-up commands (install with the
CPU wheel index + run and plot the main job; run the tests); the figure the main job draws, embedded; a short
own-model example that runs and prints what the page says; every verb in the command table; links that resolve.
The manual lives in docs/ and is checked by tests/test_docs.py. (Slow) every ```bash block of the README and
of the CLI reference runs with short step counts."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"
FIGURE = "figures/quickstart.png"


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


# ------------------------------------------------------------------------------------------- the front page


def test_the_readme_is_a_front_page_not_a_manual() -> None:
    lines = README.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the detail to a docs/ page"
    assert lines[0] == "# eos-probe"
    # what the tool is and for whom: the three lines under the title
    intro = " ".join(lines[2:5])
    assert "Hessian" in intro and "zeroth-order" in intro and "for optimization researchers" in intro, intro
    # no table from the docs copied back in (they drifted when the README kept its own copies)
    for header in ("| metric |", "| `--model` |", "| model | keys |", "| path | shape |", "| `--optimizer` |"):
        assert header not in README, f"{header} belongs to a docs page (generated or checked there)"


def test_set_up_is_two_commands_with_the_cpu_wheel_index() -> None:
    bash = _blocks("bash")
    assert len(bash) >= 2
    install, tests = bash[0], bash[1]
    assert f"pip install torch==2.13.0 {CPU_INDEX}" in install  # a plain PyPI torch is a CUDA build on Linux
    assert install.index(CPU_INDEX) < install.index("pip install -e")  # CPU torch before the project
    assert "eos-probe train --config recipes/quickstart.toml --overwrite" in install
    plot = next(ln for ln in install.splitlines() if ln.startswith("eos-probe plot"))
    assert f"--out {FIGURE}" in plot
    # the plot reads the file the recipe writes
    from eos_probe.config import load_toml

    recipe = load_toml(ROOT / "recipes" / "quickstart.toml")
    assert shlex.split(plot)[2] == recipe["out"], (plot, recipe["out"])
    assert tests.strip() == "python -m pytest -q"


def test_plot_kinds_named_in_the_readme_exist() -> None:
    from eos_probe.commands.plot import command

    kinds = next(p for p in command.params if p.name == "kind").type.choices
    for kind in re.findall(r"--kind (\w[\w-]*)", README):
        assert kind in kinds, kind


def test_the_expected_figure_is_embedded_and_committed() -> None:
    assert re.search(rf"^!\[[^\]]+\]\({re.escape(FIGURE)}\)$", README, flags=re.M), "the figure is not embedded"
    assert (ROOT / FIGURE).is_file(), f"{FIGURE} (drawn by the README's plot command) is not committed"


def test_own_model_example_runs_and_prints_what_the_readme_shows(one_thread, capsys) -> None:
    (code,) = _blocks("python")
    assert len(code.strip().splitlines()) <= 6  # a short example
    assert "eos_probe.hessian(" in code and "eos_probe.lambda_max(" in code and "eos_probe.trace(" in code
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.strip()
    shown = README[README.index(code) + len(code):]
    (expected,) = _blocks("text", shown)[:1]
    assert printed == expected.strip()


def test_every_verb_is_in_the_command_table() -> None:
    import click

    from eos_probe.cli import cli

    ctx = click.Context(cli, info_name="eos-probe")
    table = README[README.index("## Commands"):]
    for verb in cli.list_commands(ctx):
        assert re.search(rf"^\| `eos-probe {re.escape(verb)}[ `]", table, flags=re.M), f"`eos-probe {verb}` missing"


def _slug(heading: str) -> str:
    """Python-Markdown's default toc id (markdown.extensions.toc.slugify) of a heading without an {#id}."""
    import unicodedata

    text = unicodedata.normalize("NFKD", re.sub(r"`|\*", "", heading)).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(markdown: str) -> set[str]:
    ids = set()
    for line in markdown.splitlines():
        m = re.match(r"#+ (.*?)\s*(?:\{#([\w.-]+)\})?\s*$", line)
        if m:
            ids.add(m.group(2) or _slug(m.group(1)))
    return ids


def test_links_into_the_repository_and_the_docs_resolve() -> None:
    links = re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", README)  # images: the figure test
    assert any(link.startswith("docs/") for link in links)
    bad = []
    for link in links:
        if re.match(r"\w+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        if not target.exists():
            bad.append(f"{link}: no such file")
        elif anchor and anchor not in _anchors(target.read_text()):
            bad.append(f"{link}: no heading #{anchor} in {path}")
    # every page of the documentation site (but the generated API pages) is linked from the front page
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("**/*.md") if "api" not in p.parts}
    linked = {link.partition("#")[0] for link in links}
    bad += [f"docs page {p} is not linked from the README" for p in sorted(pages - linked)]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------------- every bash block

def _cli() -> list[str]:
    return [sys.executable, "-m", "eos_probe.cli"]


def _run(cmd: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    argv = shlex.split(cmd)
    if argv[0] == "eos-probe":
        argv = _cli() + argv[1:]
    elif argv[0] in ("python", "python3"):
        argv = [sys.executable] + argv[1:]
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


#: install steps, the test runner itself, and the docs build (checked by `.ci/run`'s strict build and by
#: tests/test_docs.py, with the `docs` extra that this suite does not install)
SKIP = ("pip install", "python3 -m venv", "pytest", ". .venv/bin/activate", "mkdocs build",
        "make_figures.py")  # the gallery runs for an hour; tests/test_gallery.py runs every recipe for 20 steps
#: keep every command short: few steps, few examples, cheap probes (the commands' own flags still win
#: where they matter: model, optimizer, lr, kind, paths)
SMALL = {"--steps": "4", "--probe-every": "2", "--checkpoint-every": "2"}
CHEAP_PROBE = "lambda_max:max_iter=4,trace:n_matvec=4:method=hutchinson"
#: the pages whose shell blocks this test runs: the front page, and the CLI reference that took over the
#: README's training examples (the other docs pages' commands are checked for real options by test_docs.py)
PAGES = ("README.md", "docs/reference/cli.md")


def _shorten(cmd: str) -> str:
    argv = shlex.split(cmd)
    if argv[:2] != ["eos-probe", "train"]:
        return cmd
    for flag, value in SMALL.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    if "--probe" not in argv:
        argv += ["--probe", CHEAP_PROBE]
    model = argv[argv.index("--model") + 1] if "--model" in argv else "cnn"
    if model in ("lstm", "mamba"):
        argv += ["--data-arg", "n_train=8", "--data-arg", "n_test=8"]
        if model == "mamba":
            argv += ["--model-arg", "d_model=8", "--model-arg", "d_state=4"]
    else:
        data = argv[argv.index("--data") + 1] if "--data" in argv else "fashion4"
        if not data.endswith(".npz"):
            argv += ["--n-per-class", "3"]
        if model == "vit":
            argv += ["--model-arg", "dim=16", "--model-arg", "mlp_dim=32", "--model-arg", "depth=1"]
        elif model == "cnn" and "--config" not in argv:
            argv += ["--model-arg", "widths=[4,8]", "--model-arg", "hidden=8"]
    if "--resume" not in argv and "--overwrite" not in argv:
        argv += ["--overwrite"]
    return shlex.join(argv)


def _commands(block: str) -> list[str]:
    cmds = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("   #")[0].strip()
        for part in (p.strip() for p in line.split("&&")):
            if part and not part.startswith("#") and not any(s in part for s in SKIP):
                cmds.append(part)
    return cmds


def _page_blocks() -> list[tuple[str, str]]:
    return [(page, b) for page in PAGES for b in _blocks("bash", (ROOT / page).read_text()) if _commands(b)]


def test_bash_commands_are_found() -> None:
    cmds = [c for _, b in _page_blocks() for c in _commands(b)]
    assert any(c.startswith("eos-probe train --config recipes/quickstart.toml") for c in cmds)
    assert any(c.startswith("eos-probe plot runs/quickstart.h5") for c in cmds)
    assert any(c.startswith("eos-probe train --model vit") for c in cmds)  # the CLI reference's examples
    assert "--steps 4" in _shorten("eos-probe train --model cnn --steps 2000 --out runs/a.h5")


def _user_files(root: Path) -> None:
    """The repository's recipes and the user's files the plug-in example names (a model file, an .npz)."""
    import numpy as np

    shutil.copytree(ROOT / "recipes", root / "recipes")
    (root / "figures").mkdir()  # a checkout has it: the README's plot command writes figures/quickstart.png
    (root / "path" / "to").mkdir(parents=True)
    (root / "path/__init__.py").write_text("")
    (root / "path/to/__init__.py").write_text("")
    (root / "path/to/mymodel.py").write_text(
        "from torch import nn\n"
        "def build(input_shape, num_outputs, hidden=8):\n"
        "    import math\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.Tanh(),\n"
        "                         nn.Linear(hidden, num_outputs))\n")
    g = np.random.default_rng(0)
    np.savez(root / "path/to/mydata.npz", x=g.standard_normal((20, 5)).astype(np.float32),
             y=g.standard_normal((20, 2)).astype(np.float32))
    (root / "mypackage").mkdir()
    (root / "mypackage/__init__.py").write_text("")
    (root / "mypackage/models.py").write_text("from path.to.mymodel import build as make_net\n")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("index", range(len(_page_blocks())),
                         ids=[f"{page}-{i}" for i, (page, _) in enumerate(_page_blocks())])
def test_every_bash_block_runs(tmp_path, index) -> None:
    """Each command of a ```bash block, in order, in a scratch directory, with short step counts."""
    _user_files(tmp_path)
    page, block = _page_blocks()[index]
    failures = []
    for cmd in _commands(block):
        short = _shorten(cmd)
        r = _run(short, tmp_path, timeout=1200)
        if r.returncode != 0:
            failures.append(f"{page}: {cmd}\n  ran as: {short}\n  exit {r.returncode}: {r.stderr.strip()[-500:]}")
    assert not failures, "\n".join(failures)
