"""The package's shape goals (issue 10): no module over 500 lines, no function over 80 lines, no import cycle
among top-level imports, and each optimizer's defaults defined once (in eos_probe.presets)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "eos_probe"
SOURCES = sorted(PKG.rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_and_function_sizes(path: Path) -> None:
    text = path.read_text()
    assert text.count("\n") <= 500, f"{path.name}: {text.count(chr(10))} lines"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, long


def _top_level_imports(name: str, path: Path) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # module level only: function-level imports are deliberate
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names} & MODULES.keys()
            deps |= subs if len(subs) == len(node.names) else ({base} & MODULES.keys()) | subs
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names} & MODULES.keys()
    return deps - {name}


def test_no_import_cycle() -> None:
    graph = {m: _top_level_imports(m, p) for m, p in MODULES.items()}
    done: set[str] = set()

    def visit(m: str, stack: list[str]) -> None:
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, stack + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_the_checker_sees_a_cycle(tmp_path) -> None:
    """The cycle test must be able to fail: a two-module cycle written to disk is found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from .b import x\n")
    b.write_text("from .a import y\n")
    MODULES["eos_probe.a"], MODULES["eos_probe.b"] = a, b
    try:
        with pytest.raises(AssertionError, match="import cycle"):
            test_no_import_cycle()
    finally:
        del MODULES["eos_probe.a"], MODULES["eos_probe.b"]


def test_optimizer_names_are_not_re_derived_outside_presets() -> None:
    offenders = [str(p.relative_to(PKG)) for p in SOURCES if p.name != "presets.py"
                 and re.search(r'removeprefix\("zo-"\)|isinstance\([^)]*,\s*Adam\)', p.read_text())]
    assert not offenders, offenders
