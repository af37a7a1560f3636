"""Generated reference pages and offline formulas of the documentation site (an mkdocs hook, see mkdocs.yml).

Tables that list what the code registers are generated at build time so that they cannot drift from it:

- ``docs/reference/cli.md``: every command of the click tree (``eos_probe.cli.cli``, walked with click's
  own ``list_commands``/``get_command``, so lazily imported verbs and nested groups such as ``data list``
  are included) with its ``--help`` text exactly as a terminal shows it;
- ``docs/reference/metrics.md``: every probe metric in the registry (``eos_probe.probe.METRICS``, filled by
  ``@register_metric``) with its description, options and defaults, the datasets it writes, and a link to
  its section in the theory page;
- the optimizer table of ``docs/reference/cli.md`` (``eos_probe.presets.PRESETS``: source, rule, default step
  size and momentum of every ``--optimizer``) and its model table (``eos_probe.models.MODELS``: every
  ``--model`` with its ``--model-arg`` keys and defaults).

Each page holds a marker line (``<!-- generated: cli -->``, ``<!-- generated: metrics -->``,
``<!-- generated: presets -->``, ``<!-- generated: models -->``) that the hook replaces. The functions are
plain Python (click and the package only, no mkdocs), so ``tests/test_docs.py`` checks their output without
the ``docs`` extra installed, and ``python scripts/docs_hooks.py cli|metrics|presets|models`` prints a page
for a quick look.

Formulas are rendered at build time: pymdownx.arithmatex (generic mode) marks them, and
:func:`render_math` replaces each with MathML (latex2mathml, in the ``docs`` extra), which browsers draw
natively. The built site loads no script, style sheet or font from another host, so it reads the same
offline (``tests/test_docs.py`` checks the built HTML for external references).
"""
from __future__ import annotations

import html
import re
import sys
from typing import Any, Iterator

MARKERS = {
    "<!-- generated: cli -->": "cli",
    "<!-- generated: metrics -->": "metrics",
    "<!-- generated: presets -->": "presets",
    "<!-- generated: models -->": "models",
}

#: help text width of the CLI page (click wraps to the terminal otherwise, which would make builds differ)
HELP_WIDTH = 100


def command_anchor(path: list[str]) -> str:
    """Heading id of a command on the CLI page, e.g. ``eos-probe-data-list``."""
    return "-".join(path)


def metric_anchor(name: str) -> str:
    """Heading id of a metric's section in docs/theory.md §4."""
    return f"metric-{name}"


def reference_anchor(name: str) -> str:
    """Heading id of a metric's entry on the metrics page (distinct from the theory page's: ids are global
    cross-reference targets)."""
    return f"probe-{name}"


def walk_commands(group: Any = None, path: list[str] | None = None,
                  parent: Any = None) -> Iterator[tuple[list[str], Any, Any]]:
    """Yield ``(path, command, context)`` for the root group and every command below it, depth first.

    Uses the same ``list_commands``/``get_command`` calls as click's own help, so a verb added to
    ``eos_probe.cli.COMMANDS`` or a subcommand added to a group is found without editing this file.
    """
    import click

    if group is None:
        from eos_probe.cli import cli as group
    path = path or ["eos-probe"]
    ctx = click.Context(group, info_name=path[-1], parent=parent, max_content_width=HELP_WIDTH,
                        terminal_width=HELP_WIDTH)
    yield path, group, ctx
    if isinstance(group, click.Group):
        for name in group.list_commands(ctx):
            sub = group.get_command(ctx, name)
            if sub is not None:
                yield from walk_commands(sub, path + [name], ctx)


def cli_markdown() -> str:
    """The CLI reference: one section per command with its ``--help`` output."""
    lines: list[str] = []
    for path, command, ctx in walk_commands():
        depth = min(len(path) + 1, 4)
        lines.append(f"{'#' * depth} `{' '.join(path)}` {{#{command_anchor(path)}}}")
        lines.append("")
        lines.append("```text")
        lines.append(command.get_help(ctx).rstrip())
        lines.append("```")
        lines.append("")
    return "\n".join(lines)


def _metric_columns(cls: Any) -> list[str] | None:
    """Names of the /probe datasets a metric writes, or None when it cannot be built without a run."""
    try:
        metric = cls({"preconditioned": bool(cls.adam_only), "config": {}, "dim": None, "band": None})
        if cls.spectrum:
            return [f"/spectra/{cls.name}/{{step, nodes, weights}}"]
        return [f"/probe/{c.name}" for c in metric.columns()]
    except Exception:  # a metric whose columns depend on the run: say so instead of guessing
        return None


def _code(value: Any) -> str:
    return f"`{value!r}`" if not isinstance(value, str) else f'`"{value}"`'


def metrics_markdown() -> str:
    """The probe-metric reference, generated from the registry in registration (= computation) order."""
    from eos_probe.probe import METRICS, default_metrics

    lines = [
        "| metric | Adam runs only | default for |",
        "| --- | --- | --- |",
    ]
    presets = ("gd", "gdm", "adam", "zo-gd", "zo-gdm", "zo-adam")
    defaults = {p: set(default_metrics(p)) for p in presets}
    for name, cls in METRICS.items():
        users = ", ".join(p for p in presets if name in defaults[p]) or "—"
        lines.append(f"| [`{name}`](#{reference_anchor(name)}) | {'yes' if cls.adam_only else 'no'} | {users} |")
    lines.append("")
    for name, cls in METRICS.items():
        lines.append(f"## `{name}` {{#{reference_anchor(name)}}}")
        lines.append("")
        lines.append(cls.description.strip() or "(no description)")
        lines.append("")
        lines.append(f"Theory: [what it estimates and what its error bar means](../theory.md#{metric_anchor(name)}).")
        lines.append("")
        if cls.defaults:
            opts = ", ".join(f"`{k}` = {_code(v)}" for k, v in cls.defaults.items())
            lines.append(f"Options (`--probe {name}:key=value`): {opts}.")
        else:
            lines.append("Options: none.")
        lines.append("")
        cols = _metric_columns(cls)
        if cols:
            lines.append("Writes: " + ", ".join(f"`{c}`" for c in cols) + ".")
            lines.append("")
    return "\n".join(lines)


def presets_markdown() -> str:
    """The optimizer table, generated from ``eos_probe.presets`` (registration order): each preset's source and
    rule by their registered titles, its default step size and momentum."""
    from eos_probe.presets import PRESETS, SOURCES

    lines = [
        "| `--optimizer` | gradient | update rule | default `--lr` | default `--momentum` | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in PRESETS.items():
        source = f"{SOURCES[p.source].title} (`{p.source}`)" + (", norm-matched" if p.norm_match else "")
        rule = f"`{p.rule}`" + (f" ({p.momentum_style})" if p.momentum_style else "")
        momentum = f"{p.momentum:g}" if p.momentum else "—"
        lines.append(f"| `{name}` | {source} | {rule} | {p.lr:g} | {momentum} | {p.description} |")
    return "\n".join(lines) + "\n"


def models_markdown() -> str:
    """The model table, generated from ``eos_probe.models.MODELS``: keys and defaults of ``--model-arg``."""
    from eos_probe.models import MODELS

    lines = [
        "| `--model` | data | what | `--model-arg` keys (defaults) |",
        "| --- | --- | --- | --- |",
    ]
    for name, spec in MODELS.items():
        keys = ", ".join(f"`{k}={v!r}`" for k, v in spec.defaults.items()) or "—"
        lines.append(f"| `{name}` | {spec.kind} | {spec.description} | {keys} |")
    return "\n".join(lines) + "\n"


GENERATORS = {"cli": cli_markdown, "metrics": metrics_markdown, "presets": presets_markdown,
              "models": models_markdown}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs hook: replace each marker line by its generated Markdown."""
    for marker, key in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, GENERATORS[key]())
    return markdown


# ------------------------------------------------------------------------------------------- formulas

#: what pymdownx.arithmatex (``generic: true``) writes: ``\(...\)`` in a span, ``\[...\]`` in a div
MATH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)
_TEXT_ESCAPE = re.compile(r"(\\text\{[^{}]*\})")

#: Unicode double-struck capitals: MathML Core (Chromium) ignores mathvariant="double-struck"
_DOUBLE_STRUCK = {c: chr(0x1D538 + i) for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}
_DOUBLE_STRUCK.update({"C": "\u2102", "H": "\u210D", "N": "\u2115", "P": "\u2119", "Q": "\u211A", "R": "\u211D",
                       "Z": "\u2124"})


def tex_to_mathml(tex: str, display: bool = False) -> str:
    """One formula as a MathML ``<math>`` element (the TeX source kept in ``alttext``)."""
    from latex2mathml.converter import convert

    source = _TEXT_ESCAPE.sub(lambda m: m.group(1).replace("\\_", "_"), tex)  # \text{a\_b}: a literal _
    out = convert(source, display="block" if display else "inline")
    out = re.sub(r'<mi mathvariant="double-struck">([A-Z])</mi>', lambda m: f"<mi>{_DOUBLE_STRUCK[m.group(1)]}</mi>",
                 out)
    return out.replace("<math ", f'<math alttext="{html.escape(tex.strip(), quote=True)}" ', 1)


def render_math(page_html: str, where: str = "") -> str:
    """Replace every arithmatex formula of a built page by MathML; a formula that does not convert is an
    error naming the page, so the strict build fails instead of shipping raw TeX."""

    def one(m: re.Match) -> str:
        tag, body = m.group(1), html.unescape(m.group(2)).strip()
        display = tag == "div"
        opening, closing = (r"\[", r"\]") if display else (r"\(", r"\)")
        if not (body.startswith(opening) and body.endswith(closing)):
            raise ValueError(f"{where}: unexpected arithmatex output {body[:80]!r}")
        tex = body[2:-2]
        try:
            mathml = tex_to_mathml(tex, display)
        except Exception as exc:  # latex2mathml raises plain exceptions on TeX it cannot parse
            raise ValueError(f"{where}: formula does not convert to MathML ({exc!r}): {tex.strip()[:200]}") from exc
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    return MATH.sub(one, page_html)


def on_page_content(html_text: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs hook: formulas as MathML, rendered here rather than by a script in the reader's browser."""
    return render_math(html_text, where=getattr(getattr(page, "file", None), "src_path", ""))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in GENERATORS:
        sys.exit(f"usage: python {sys.argv[0]} {'|'.join(GENERATORS)}")
    print(GENERATORS[sys.argv[1]]())
