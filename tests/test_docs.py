"""The documentation site against the code: references that cannot drift, citations that resolve.

Runs without the `docs` extra (click, ast and the package only); only the strict mkdocs build at the end
is skipped when mkdocs is not installed (CI installs the extra and runs it, see .ci/run).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
THEORY = DOCS / "theory.md"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _all_commands(cmd: click.Command, path: tuple[str, ...], parent=None):
    """Independent walk of the click tree (not the generator's): every command with its path."""
    ctx = click.Context(cmd, info_name=path[-1], parent=parent)
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, f"`{' '.join(path)} {name}` is listed but cannot be loaded"
            yield from _all_commands(sub, path + (name,), ctx)


def _sections(markdown: str) -> dict[str, str]:
    """Heading id -> text up to the next heading of any level."""
    out, current = {}, None
    for line in markdown.splitlines():
        m = re.match(r"#+ .*\{#([\w.-]+)\}\s*$", line)
        if m:
            current = m.group(1)
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def _anchors(markdown: str) -> set[str]:
    return set(re.findall(r"^#+ .*\{#([\w.-]+)\}\s*$", markdown, flags=re.M))


# ----------------------------------------------------------------------------------- CLI reference


def test_cli_reference_lists_every_command_and_option():
    from eos_probe.cli import cli

    hooks = _hooks()
    sections = _sections(hooks.cli_markdown())
    assert "<!-- generated: cli -->" in (DOCS / "reference" / "cli.md").read_text()
    missing = []
    for path, cmd in _all_commands(cli, ("eos-probe",)):
        anchor = hooks.command_anchor(list(path))
        if anchor not in sections:
            missing.append(f"command `{' '.join(path)}`")
            continue
        for param in cmd.params:
            if isinstance(param, click.Option):
                for flag in param.opts + param.secondary_opts:
                    if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", sections[anchor]):
                        missing.append(f"option {flag} of `{' '.join(path)}`")
            elif isinstance(param, click.Argument) and param.name.upper() not in sections[anchor]:
                missing.append(f"argument {param.name.upper()} of `{' '.join(path)}`")
    assert not missing, ("the generated CLI reference (scripts/docs_hooks.py) misses: " + "; ".join(missing)
                         + ". Is the command hidden, or does its help not render?")


def _code_blocks(markdown: str) -> list[str]:
    return re.findall(r"```(?:bash|console|sh)\n(.*?)```", markdown, flags=re.S)


@pytest.mark.parametrize("page", sorted(p.relative_to(ROOT).as_posix()
                                        for p in [*DOCS.rglob("*.md"), ROOT / "README.md"]))
def test_documented_command_lines_use_existing_options(page):
    """Every `eos-probe VERB --flag` in a shell block of the docs or README is a real option of that verb."""
    from eos_probe.cli import cli

    commands = {path[1:]: cmd for path, cmd in _all_commands(cli, ("eos-probe",))}
    text = (ROOT / page).read_text()
    bad = []
    for block in _code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip().removeprefix("$ ")
            for seg in re.split(r"&&|;|\|", line):
                tokens = seg.split()
                if not tokens or tokens[0] != "eos-probe":
                    continue
                path: tuple[str, ...] = ()
                for tok in tokens[1:]:
                    if path + (tok,) in commands:
                        path += (tok,)
                    else:
                        break
                cmd = commands[path]
                known = {f for p in cmd.params if isinstance(p, click.Option) for f in p.opts + p.secondary_opts}
                for tok in tokens[1:]:
                    flag = tok.split("=")[0]
                    if flag.startswith("-") and flag not in known and flag != "--help":
                        bad.append(f"`eos-probe {' '.join(path)}` has no option {flag} (in: {seg.strip()})")
    assert not bad, f"{page}: " + "; ".join(bad)


# ----------------------------------------------------------------------------------- probe metrics


def test_every_registered_metric_is_documented():
    from eos_probe.probe import METRICS

    hooks = _hooks()
    generated = hooks.metrics_markdown()
    ref = _sections(generated)
    theory_anchors = _anchors(THEORY.read_text())
    assert "<!-- generated: metrics -->" in (DOCS / "reference" / "metrics.md").read_text()
    problems = []
    for name, cls in METRICS.items():
        entry = ref.get(hooks.reference_anchor(name))
        if entry is None:
            problems.append(f"{name}: no entry in the generated metric reference")
        else:
            problems += [f"{name}: option {key!r} not listed" for key in cls.defaults if f"`{key}`" not in entry]
        if hooks.metric_anchor(name) not in theory_anchors:
            problems.append(
                f"probe metric {name!r} is registered (eos_probe.probe.METRICS) but docs/theory.md §4 has no "
                f"section '### {name} {{#{hooks.metric_anchor(name)}}}' saying what it estimates, its estimator "
                f"and what its error bar means")
    assert not problems, "\n".join(problems)


def test_every_optimizer_and_model_is_in_the_generated_tables():
    """The optimizer and model tables of the CLI reference are generated from the registries (they drifted
    when the README kept hand-written copies: its default-lr list missed presets)."""
    from eos_probe.models import MODELS
    from eos_probe.presets import PRESETS

    hooks = _hooks()
    cli_page = (DOCS / "reference" / "cli.md").read_text()
    assert "<!-- generated: presets -->" in cli_page and "<!-- generated: models -->" in cli_page
    presets = {ln.split("|")[1].strip(): ln for ln in hooks.presets_markdown().splitlines()[2:]}
    assert list(presets) == [f"`{name}`" for name in PRESETS]
    for name, p in PRESETS.items():
        cells = [c.strip() for c in presets[f"`{name}`"].split("|")[1:-1]]
        assert float(cells[3]) == p.lr, (name, cells[3], p.lr)
    models = {ln.split("|")[1].strip(): ln for ln in hooks.models_markdown().splitlines()[2:]}
    assert list(models) == [f"`{name}`" for name in MODELS]
    for name, spec in MODELS.items():
        for key, value in spec.defaults.items():
            assert f"`{key}={value!r}`" in models[f"`{name}`"], (name, key)
    # and no hand-written copy of either list elsewhere in the docs or the README
    for page in [*DOCS.rglob("*.md"), ROOT / "README.md"]:
        text = page.read_text()
        assert not re.search(r"Default step sizes|gd 0\.05, gdm 0\.005", text), f"{page}: a hand-written lr list"


def test_every_probe_metric_is_in_the_train_help():
    from click.testing import CliRunner

    from eos_probe.commands.train import command
    from eos_probe.probe import METRICS

    help_text = CliRunner().invoke(command, ["--help"], terminal_width=200).output
    assert [name for name in METRICS if name not in help_text] == []


def test_every_plot_kind_has_a_row_in_the_figure_kinds_table():
    from eos_probe.commands.plot import command

    kinds = next(p for p in command.params if p.name == "kind").type.choices
    page = (DOCS / "howto" / "reproduce-figure.md").read_text()
    table = page[page.index("## Figure kinds"):]
    missing = [k for k in kinds if not re.search(rf"^\| `{re.escape(k)}` \|", table, flags=re.M)]
    assert not missing, f"docs/howto/reproduce-figure.md 'Figure kinds' lacks {missing}"


def test_example_config_lists_every_key():
    from eos_probe.config import TrainConfig, _FIELDS, load_toml

    text = (ROOT / "recipes" / "example.toml").read_text()
    for key in _FIELDS:
        assert re.search(rf"^#? ?{key} = .*#", text, flags=re.M), f"recipes/example.toml lacks a commented {key}"
    TrainConfig(**load_toml(ROOT / "recipes" / "example.toml"))


# ----------------------------------------------------------------------------------- transcripts


def _transcripts(markdown: str) -> list[tuple[str, str]]:
    """(command, expected output) of every ```console block that starts with `$ eos-probe ...`."""
    out = []
    for block in re.findall(r"^```console\n(.*?)^```", markdown, flags=re.S | re.M):
        first, _, rest = block.partition("\n")
        if first.startswith("$ eos-probe "):
            out.append((first[2:], rest.rstrip("\n")))
    return out


def test_bands_transcripts_are_what_the_command_prints(tmp_path):
    """The worked examples of `eos-probe bands` on the theory page are the command's real output."""
    import shlex

    text = THEORY.read_text()
    found = _transcripts(text)
    assert len(found) >= 3
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            if line.startswith("python ") and "eigs.npy" in line:
                argv = [sys.executable] + shlex.split(line)[1:]
                assert subprocess.run(argv, cwd=tmp_path, env=env).returncode == 0
    for cmd, expected in found:
        argv = [sys.executable, "-m", "eos_probe.cli"] + shlex.split(cmd)[1:]
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        got = (r.stdout + r.stderr).rstrip("\n")
        assert got == expected, f"docs/theory.md transcript of `{cmd}` differs:\n{got}"


def test_adam_warning_has_one_source():
    """The ZO-Adam caveat is quoted from the code (COMMUTING_WARNING), not retyped with other numbers."""
    from eos_probe.theory.setting import COMMUTING_WARNING

    assert f"warning: {COMMUTING_WARNING}" in THEORY.read_text()
    for page in [*DOCS.rglob("*.md"), ROOT / "README.md"]:
        assert "over-estimates lr*" not in page.read_text().replace(COMMUTING_WARNING, ""), page


# ----------------------------------------------------------------------------------- theory citations

_OBJ = re.compile(r"\[(eos_probe(?:\.\w+)+)\]\[\]|\[[^\]]*\]\[(eos_probe(?:\.\w+)+)\]")
_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _resolve(dotted: str):
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("page", sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")))
def test_cited_objects_and_tests_exist(page):
    text = (DOCS / page).read_text()
    bad = []
    for m in _OBJ.finditer(text):
        dotted = m.group(1) or m.group(2)
        try:
            _resolve(dotted)
        except (ImportError, AttributeError):
            bad.append(f"{dotted} does not resolve to an importable object")
    for file, name in _TEST.findall(text):
        path = ROOT / file
        if not path.exists():
            bad.append(f"{file} does not exist")
        elif name not in _test_names(path):
            bad.append(f"{file}::{name} does not exist")
    assert not bad, f"docs/{page}: " + "; ".join(bad)


def _formula_blocks(markdown: str):
    """Yield (line number, is it inside a Derivation/Planned admonition, citation text that follows it)."""
    lines = markdown.splitlines()
    box = None  # title of the admonition we are inside
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r'(\?\?\?|!!!) \w+ "([^"]*)"', line)
        if m:
            box = m.group(2)
        elif line and not line.startswith(" "):
            box = None
        if line.strip() == "$$":
            start = i
            i += 1
            while lines[i].strip() != "$$":
                i += 1
            after = []
            j = i + 1
            while j < len(lines) and lines[j].strip() != "$$" and not lines[j].startswith("#"):
                after.append(lines[j])
                j += 1
            yield start + 1, box if line.startswith(" ") else None, "\n".join(after)
        i += 1


def test_every_implemented_formula_cites_its_function_and_test():
    """Display formulas outside Derivation / Planned boxes are followed by a **Code:** and a **Test:** line."""
    problems = []
    n = 0
    for lineno, box, after in _formula_blocks(THEORY.read_text()):
        if box is not None:
            assert box in ("Derivation", "Planned"), f"docs/theory.md:{lineno}: formula inside box {box!r}"
            continue
        n += 1
        start = after.find("**Code:**")
        cite = after[start:].split("\n\n")[0] if start >= 0 else ""
        if not (_OBJ.search(cite) and _TEST.search(cite)):
            problems.append(f"docs/theory.md:{lineno}: formula without a '**Code:** [eos_probe...][] · **Test:** "
                            f"`tests/...::test_...`' paragraph after it (before the next formula or heading)")
    assert n >= 10, n  # the page has its formulas in $$ blocks (a parser that finds none cannot fail)
    assert not problems, "\n".join(problems)


def test_cited_functions_link_back_to_the_theory_page():
    text = THEORY.read_text()
    anchors = _anchors(text)
    cited = {m.group(1) or m.group(2) for line in text.splitlines() if line.startswith("**Code:**")
             for m in _OBJ.finditer(line.split("**Test:**")[0])}
    assert len(cited) >= 20, sorted(cited)
    problems = []
    for dotted in sorted(cited):
        doc = _resolve(dotted).__doc__ or ""
        links = re.findall(r"docs/theory\.md#([\w-]+)", doc)
        if not links:
            problems.append(f"{dotted}: docstring has no 'Theory: [docs/theory.md#ANCHOR][ANCHOR].' line")
        problems += [f"{dotted}: docs/theory.md#{a} is not a heading id of the theory page"
                     for a in links if a not in anchors]
    assert not problems, "\n".join(problems)


def test_references_to_the_theory_stay_inside_the_project():
    """Captions, warnings and descriptions cite docs/theory.md sections that exist, never ../shared/THEORY.md."""
    text = THEORY.read_text()
    sections = {m for m in re.findall(r"^## (\d)\. ", text, flags=re.M)}
    anchors = _anchors(text)
    files = [*sorted((ROOT / "eos_probe").rglob("*.py")), ROOT / "README.md"]
    problems = []
    for f in files:
        src = f.read_text()
        rel = f.relative_to(ROOT)
        if re.search(r"THEORY(\.md)?\b", src):
            problems.append(f"{rel} cites THEORY (a file outside the project); cite docs/theory.md §N")
        for sec in re.findall(r"docs/theory\.md (?:§|section )(\d)", src):
            if sec not in sections:
                problems.append(f"{rel} cites docs/theory.md §{sec}, which does not exist")
        problems += [f"{rel} links docs/theory.md#{a}, not a heading id of the theory page"
                     for a in re.findall(r"docs/theory\.md#([\w-]+)", src) if a not in anchors]
    assert not problems, "\n".join(problems)


def test_run_file_page_documents_the_current_schema():
    from eos_probe.reading import SCHEMA_VERSION

    first = (DOCS / "reference" / "run-file.md").read_text().splitlines()[0]
    assert first == f"# Run-file layout (schema {SCHEMA_VERSION})", (
        f"eos_probe.reading.SCHEMA_VERSION is {SCHEMA_VERSION} but docs/reference/run-file.md documents {first!r}: "
        "document the new layout (and keep the old one) before bumping the version")


def test_own_model_howto_runs(one_thread, capsys):
    """The Python block of 'Use it on your own model' is executed as written."""
    text = (DOCS / "howto" / "own-model.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/howto/own-model.md", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert "lambda_max = " in out and "verdict: " in out


# ----------------------------------------------------------------------------------- the build


_DOCS_EXTRA = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "mkdocstrings", "latex2mathml")),
    reason="docs extra not installed (pip install -e '.[docs]')")


@_DOCS_EXTRA
def test_formulas_become_mathml_and_a_bad_one_fails_the_build():
    hooks = _hooks()
    page = ('<p>a <span class="arithmatex">\\(\\mathbb E[uu^\\top]=I\\)</span> b</p>'
            '<div class="arithmatex">\\[ S=\\sum_i\\frac{x_i}{D_i}&lt;1 \\]</div>')
    out = hooks.render_math(page, "test.md")
    shown = re.sub(r'alttext="[^"]*"', "", out)  # the TeX source stays only as the formula's alt text
    assert "\\(" not in shown and "\\[" not in shown and "\\mathbb" not in shown
    assert out.count("<math ") == 2 and 'display="block"' in out
    assert "\U0001D53C" in out  # double-struck E as a character: MathML Core ignores mathvariant
    assert "<mo>&lt;</mo>" in out or "&#x0003C;" in out  # the escaped < of the HTML is the formula's <
    with pytest.raises(ValueError, match="test.md"):
        hooks.render_math('<span class="arithmatex">\\(\\frac{1}{\\)</span>', "test.md")


class _ExternalRefs(HTMLParser):
    """Every URL a browser loads by itself: src/href/srcset/data/poster of any tag but the plain hyperlink
    <a href> (a reader follows it; the page does not load it), and url(...) in inline styles."""

    ATTRS = ("src", "href", "srcset", "data", "poster")

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if not value or (tag == "a" and name == "href"):
                continue
            if (name in self.ATTRS and re.search(r"(^|[\s,])(https?:)?//", value)) or (
                    name == "style" and re.search(r"url\(\s*['\"]?(https?:)?//", value)):
                self.found.append(f"<{tag} {name}={value!r}>")


def external_references(site: Path) -> list[str]:
    """External URLs the built site would load by itself (HTML tags and CSS url()/@import)."""
    problems = []
    for page in sorted(site.rglob("*.html")):
        parser = _ExternalRefs()
        parser.feed(page.read_text())
        problems += [f"{page.relative_to(site)}: {ref}" for ref in parser.found]
    for css in sorted(site.rglob("*.css")):
        for ref in re.findall(r"(?:url\(\s*['\"]?|@import\s+['\"])((?:https?:)?//[^'\")\s]+)", css.read_text()):
            problems.append(f"{css.relative_to(site)}: {ref}")
    return problems


def test_external_reference_check_catches_what_a_cdn_page_loads(tmp_path):
    """The checker itself: a page with a CDN script, style sheet and font is flagged, hyperlinks are not."""
    (tmp_path / "a.html").write_text(
        '<html><head><script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
        '<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Roboto"><script src="js/local.js"></script>'
        '</head><body><a href="https://www.mkdocs.org/">MkDocs</a><img src="figure.png"></body></html>')
    (tmp_path / "b.css").write_text("@font-face{src:url(https://example.org/f.woff2)} .x{background:url(img.png)}")
    found = external_references(tmp_path)
    assert len(found) == 3 and not any("mkdocs.org" in f or "local.js" in f for f in found), found


@_DOCS_EXTRA
def test_docs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs") or f"{sys.executable} -m mkdocs"
    proc = subprocess.run([*mkdocs.split(), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not warnings, "\n".join(warnings) or proc.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "reference" / "cli.html").exists()
    # offline: nothing is loaded from another host (the formulas were a CDN MathJax before)
    external = external_references(site)
    assert not external, "the built site loads from another host:\n" + "\n".join(external)
    # every formula arrives as MathML, none as raw TeX
    theory = (site / "theory.html").read_text()
    assert theory.count("<math ") >= 200, theory.count("<math ")
    left = re.findall(r'class="arithmatex">\s*\\[(\[]', theory)
    assert not left, f"{len(left)} formulas left as TeX in theory.html"
