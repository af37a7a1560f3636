"""The package's shape goals (docs/design.md): no module over 400 lines, no function over 60 lines, no import
cycle — function-level imports included —, names and defaults stated once (in the registries) and read by the
CLI, the config and the constructors, and no re-export giving one name a second address."""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "eos_probe"
SOURCES = sorted(PKG.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

#: modules other work is reshaping now, with the reason they may exceed the size limits until it lands
SIZE_EXEMPT = {
    "probe/metrics/forgetting.py": "the typed probe contract (another change) splits the metric modules",
    "curvature/deflated.py": "its error bars are being reworked by another change (negative_mass is 67 lines)",
}

#: import edges a cycle may use, each with why it is not a layering mistake (none today)
CYCLE_ALLOWED: dict[tuple[str, str], str] = {}

#: docs/design.md's layers, bottom-up: a module may import its own layer or the ones before it
LAYERS = (
    ("errors", "_util", "_version", "budget", "loss_names", "provenance", "interrupt", "zo_monitor", "reading",
     "bench_items"),
    ("presets", "tasks", "config"),
    ("data", "models", "losses", "groups", "hvp", "objective"),
    ("curvature", "theory"),
    ("optim", "reference"),
    ("probe",),
    ("store", "checkpoint", "run", "events"),
    ("trainer",),
    ("build", "train", "api", "calibration", "calibration_edge", "bench", "bench_loop", "bench_probe", "sweep"),
    ("commands", "cli", "plot", "gallery", "__init__"),
)
#: upward imports, each with why it is one
UPWARD_ALLOWED = {
    ("theory.simulate", "optim"): "the Monte-Carlo check of the theory runs the project's own optimizers",
    ("theory.simulate", "data"): "... on the quadratic objective",
    ("theory.cocd_simulate", "optim"): "the Monte-Carlo check of the CoCD theory runs the cocd source",
    ("theory.cocd_simulate", "data"): "... on the quadratic objective",
}


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_and_function_sizes(path: Path) -> None:
    rel = path.relative_to(PKG).as_posix()
    if rel in SIZE_EXEMPT:
        pytest.skip(SIZE_EXEMPT[rel])
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {text.count(chr(10))} lines"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (never executed: annotations only)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every package module `name` imports, at module level or inside a function (not for type checking)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    deps: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
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


def test_no_import_cycle_even_inside_functions() -> None:
    graph = {m: _imports(m, p) - {d for (a, d) in CYCLE_ALLOWED if a == m} for m, p in MODULES.items()}
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


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_nothing_imports_upward_not_even_inside_a_function() -> None:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    assert {_top(m) for m in MODULES} <= rank.keys(), sorted({_top(m) for m in MODULES} - rank.keys())
    upward = []
    for m, p in MODULES.items():
        for d in _imports(m, p):
            if rank[_top(d)] > rank[_top(m)] and (m.removeprefix("eos_probe."), _top(d)) not in UPWARD_ALLOWED:
                upward.append(f"{m} -> {d}")
    assert not upward, upward


def test_the_checker_sees_a_cycle_through_a_function_level_import(tmp_path) -> None:
    """The cycle test must be able to fail: a two-module cycle hidden in a function is found, and one under
    ``if TYPE_CHECKING:`` is not a cycle."""
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text("from .b import x\n")
    b.write_text("def f():\n    from .a import y\n")
    c.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import z\n")
    MODULES["eos_probe.a"], MODULES["eos_probe.b"], MODULES["eos_probe.c"] = a, b, c
    try:
        assert _imports("eos_probe.c", c) == set()
        with pytest.raises(AssertionError, match="import cycle"):
            test_no_import_cycle_even_inside_functions()
    finally:
        del MODULES["eos_probe.a"], MODULES["eos_probe.b"], MODULES["eos_probe.c"]


def test_no_module_says_its_names_stay_importable_elsewhere() -> None:
    """A 0.1 package gives each name one address: no compatibility re-exports."""
    offenders = [str(p.relative_to(PKG)) for p in SOURCES
                 if re.search(r"re-?export|stay importable|old home|former name", p.read_text(), re.I)]
    assert not offenders, offenders


def test_code_cites_the_design_page_that_exists() -> None:
    assert (PKG.parent / "docs" / "design.md").is_file()
    offenders = [str(p.relative_to(PKG)) for p in SOURCES if re.search(r"(?<!docs/)DESIGN\.md", p.read_text())]
    assert not offenders, offenders


def test_optimizer_names_are_not_re_derived_outside_presets() -> None:
    offenders = [str(p.relative_to(PKG)) for p in SOURCES if p.name != "presets.py"
                 and re.search(r'removeprefix\("zo-"\)|startswith\("zo"|isinstance\([^)]*,\s*Adam\)', p.read_text())]
    assert not offenders, offenders


# ------------------------------------------------------------------------------- defaults stated once


def _signature_default(cls, param: str):
    return inspect.signature(cls).parameters[param].default


def test_every_optimizer_default_is_stated_once() -> None:
    """Each option's default lives in `eos_probe.presets.OPTIONS`; the config field, the constructors' signatures
    and the CLI help all say the same value."""
    from click.testing import CliRunner

    from eos_probe.commands.train import command
    from eos_probe.config import TrainConfig
    from eos_probe.optim.cocd import CoCDSource
    from eos_probe.optim.rules import Adam, HeavyBall
    from eos_probe.optim.sources import RiseSource, TwoPointSource
    from eos_probe.presets import DEFAULT_MOMENTUM, OPTIONS, PRESETS

    config = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    for name, opt in OPTIONS.items():
        if name in config:  # None: "the optimizer's own" (a preset may fix or vary it)
            assert config[name] in (opt.default, None), (name, config[name], opt.default)
    signatures = {(TwoPointSource, "queries"): "queries", (TwoPointSource, "mu"): "mu",
                  (TwoPointSource, "directions"): "directions", (TwoPointSource, "difference"): "difference",
                  (TwoPointSource, "norm_match"): "norm_match", (RiseSource, "queries"): "queries",
                  (RiseSource, "blocks"): "rise_blocks", (HeavyBall, "style"): "momentum_style",
                  (Adam, "beta2"): "beta2", (Adam, "eps"): "eps", (CoCDSource, "block"): "cocd_block",
                  (CoCDSource, "gamma"): "cocd_gamma", (CoCDSource, "eps"): "cocd_eps",
                  (CoCDSource, "memory"): "cocd_memory", (CoCDSource, "weight_decay"): "weight_decay"}
    for (cls, param), option in signatures.items():
        assert _signature_default(cls, param) == OPTIONS[option].default, (cls.__name__, param)
    assert _signature_default(HeavyBall, "momentum") == _signature_default(Adam, "beta1") == DEFAULT_MOMENTUM
    assert {p.momentum for p in PRESETS.values() if p.takes_momentum} == {DEFAULT_MOMENTUM}
    help_text = " ".join(CliRunner().invoke(command, ["--help"], terminal_width=400).output.split())
    for name, opt in OPTIONS.items():
        if opt.default is not None and opt.domain not in ("flag", "tables"):
            flag = "--" + name.replace("_", "-")
            assert re.search(re.escape(flag) + r" [^\n]*?default " + re.escape(f"{opt.default:g}" if isinstance(
                opt.default, float) else str(opt.default)), help_text), (flag, opt.default)
    for name, p in PRESETS.items():
        assert f"{name} {p.lr:g}" in help_text, name  # --lr lists every preset's default step size


def test_cli_choices_come_from_the_registries() -> None:
    """The names the CLI offers are the registries' own (they drifted when typed beside them)."""
    from click.testing import CliRunner

    from eos_probe.commands.train import command
    from eos_probe.data import DATASETS
    from eos_probe.loss_names import LOSSES
    from eos_probe.models import MODELS
    from eos_probe.presets import PRESETS
    from eos_probe.probe import METRICS

    help_text = " ".join(CliRunner().invoke(command, ["--help"], terminal_width=400).output.split())
    for names, what in ((PRESETS, "--optimizer"), (MODELS, "--model"), (DATASETS, "--data")):
        assert " | ".join(names) in help_text, what
    assert "[" + "|".join(LOSSES) + "]" in help_text
    assert all(m in help_text for m in METRICS)
    loss = next(p for p in command.params if p.name == "loss")
    assert tuple(loss.type.choices) == LOSSES


def test_numerical_code_raises_value_errors() -> None:
    """errors.py: curvature, theory, optim and the presets raise `InvalidValueError` (a `ValueError`), never a
    plain `UserError`, so library callers can catch `ValueError`."""
    numerical = [p for p in SOURCES if p.relative_to(PKG).parts[0] in ("curvature", "theory", "optim", "presets.py")]
    offenders = [str(p.relative_to(PKG)) for p in numerical if re.search(r"raise UserError\(", p.read_text())]
    assert not offenders, offenders
