"""The README cannot drift: its Python example runs as a doctest, its `$ eos-probe bands` transcripts are
compared with the real command, and (slow) every ```bash block runs with short step counts."""
from __future__ import annotations

import doctest
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


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    nxt = README.find("\n## ", start + 1)
    return README[start: nxt if nxt > 0 else None]


def _blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def test_own_model_example_runs_as_a_doctest(one_thread) -> None:
    (block,) = [b for b in _blocks("python", _section("Use it on your own model")) if ">>>" in b]
    lines = [ln for ln in block.splitlines() if not ln.startswith(">>>")]
    assert len(block.splitlines()) - len(lines) <= 8  # a short example
    test = doctest.DocTestParser().get_doctest(block, {}, "README: Use it on your own model", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 5 and result.failed == 0


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


def _transcripts() -> list[tuple[str, str]]:
    """(command, expected output) of every indented `$ eos-probe ...` transcript."""
    out = []
    for m in re.finditer(r"^    \$ (eos-probe [^\n]*)\n((?:    [^\n]*\n)*)", README, flags=re.M):
        out.append((m.group(1), "\n".join(ln[4:] for ln in m.group(2).rstrip("\n").split("\n"))))
    return out


def test_bands_transcripts_are_what_the_command_prints(tmp_path) -> None:
    found = _transcripts()
    assert len(found) >= 3
    setup = [ln for b in _blocks("bash") for ln in b.splitlines() if "eigs.npy" in ln and ln.startswith("python")]
    for ln in setup:
        assert _run(ln, tmp_path).returncode == 0
    for cmd, expected in found:
        r = _run(cmd, tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        got = (r.stdout + r.stderr).rstrip("\n")
        assert got == expected, f"README transcript of `{cmd}` differs:\n{got}"


def test_adam_warning_has_one_source() -> None:
    from eos_probe.theory.stability import COMMUTING_WARNING

    assert f"warning: {COMMUTING_WARNING}" in README
    assert "over-estimate" not in README.replace(COMMUTING_WARNING, "")  # no second, different table


def test_every_probe_metric_and_model_option_is_documented() -> None:
    from click.testing import CliRunner

    from eos_probe.commands.train import command
    from eos_probe.models import MODELS
    from eos_probe.probe import METRICS

    help_text = CliRunner().invoke(command, ["--help"], terminal_width=200).output
    for name in METRICS:
        assert f"`{name}`" in README, name
        assert name in help_text, name
    table = README[README.index("Model options (`--model-arg"):]
    for model, spec in MODELS.items():
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| `{model}` |"))
        for key in spec.defaults:
            assert f"`{key}=" in row, (model, key)


def test_example_config_lists_every_key() -> None:
    from eos_probe.config import TrainConfig, _FIELDS, load_toml

    text = (ROOT / "recipes" / "example.toml").read_text()
    for key in _FIELDS:
        assert re.search(rf"^#? ?{key} = .*#", text, flags=re.M), f"recipes/example.toml lacks a commented {key}"
    TrainConfig(**load_toml(ROOT / "recipes" / "example.toml"))


# ------------------------------------------------------------------------------------------- every bash block
#: install steps, the test runner itself, and the docs build (checked by `.ci/run`'s strict build and by
#: tests/test_docs.py, with the `docs` extra that this suite does not install)
SKIP = ("pip install", "python3 -m venv", "pytest", ". .venv/bin/activate", "mkdocs build",
        "make_figures.py")  # the gallery runs for an hour; tests/test_gallery.py runs every recipe for 20 steps
#: keep every command short: few steps, few examples, cheap probes (the commands' own flags still win
#: where they matter: model, optimizer, lr, kind, paths)
SMALL = {"--steps": "4", "--probe-every": "2", "--checkpoint-every": "2"}
CHEAP_PROBE = "lambda_max:max_iter=4,trace:n_matvec=4:method=hutchinson"


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
    for line in block.splitlines():
        line = line.split("   #")[0].strip()
        for part in (p.strip() for p in line.split("&&")):
            if part and not part.startswith("#") and not any(s in part for s in SKIP):
                cmds.append(part)
    return cmds


def _bash_commands() -> list[str]:
    return [c for b in _blocks("bash") for c in _commands(b)]


def test_bash_commands_are_found() -> None:
    cmds = _bash_commands()
    assert any(c.startswith("eos-probe train --config recipes/quickstart.toml") for c in cmds)
    assert any("--kind bands" in c for c in cmds) and any("eigs.npy" in c for c in cmds)
    assert "--steps 4" in _shorten("eos-probe train --model cnn --steps 2000 --out runs/a.h5")


def _user_files(root: Path) -> None:
    """The repository's recipes and the user's files the plug-in example names (a model file, an .npz)."""
    import numpy as np

    shutil.copytree(ROOT / "recipes", root / "recipes")
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
@pytest.mark.parametrize("index", [i for i, b in enumerate(_blocks("bash")) if _commands(b)])
def test_every_readme_bash_block_runs(tmp_path, index) -> None:
    """Each command of a ```bash block, in order, in a scratch directory, with short step counts."""
    _user_files(tmp_path)
    failures = []
    for cmd in _commands(_blocks("bash")[index]):
        short = _shorten(cmd)
        r = _run(short, tmp_path, timeout=1200)
        if r.returncode != 0:
            failures.append(f"{cmd}\n  ran as: {short}\n  exit {r.returncode}: {r.stderr.strip()[-500:]}")
    assert not failures, "\n".join(failures)
