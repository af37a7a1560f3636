"""Hybrid per-group optimizers (docs/theory.md §5b): a ZO group perturbs only its coordinates, an exact
group steps on its slice of the true gradient, ungrouped and frozen parameters never move, `until`
freezes a group after its fraction of the task; the new presets resume bitwise; bad input is one line."""
from __future__ import annotations

import os
import signal
import textwrap

import pytest
import torch

from eos_probe import optim, presets
from eos_probe.cli import main
from eos_probe.config import TrainConfig, group_tables
from eos_probe.data.quadratic import QuadraticObjective
from eos_probe.errors import InvalidValueError
from eos_probe.optim.hybrid import GroupSpec
from eos_probe.checkpoint import checkpoint_path
from eos_probe.train import train

D = 10
ZO = torch.tensor([0, 1, 2, 3])
HEAD = torch.tensor([6, 7, 8])  # 4, 5 and 9 are in no group


class _Recording(QuadraticObjective):
    """A quadratic that keeps every point its loss is evaluated at."""

    def __init__(self, d: int) -> None:
        gen = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))  # couples all coordinates
        super().__init__(torch.linspace(0.5, 2.0, d, dtype=torch.float64), q)
        self.points: list[torch.Tensor] = []

    def loss(self, theta):
        self.points.append(theta.detach().clone().reshape(-1, theta.shape[-1]))
        return super().loss(theta)


def _hybrid(until: float = 1.0, clip: float | None = None, zo_rule: str = "heavy_ball", steps: int = 10):
    groups = {"zo": GroupSpec("zo", ZO, source="two_point", rule=zo_rule, lr=0.05, momentum=0.9 if zo_rule != "gd"
                              else 0.0, queries=2, directions="rademacher", clip=clip),
              "head": GroupSpec("head", HEAD, source="exact", rule="gd", lr=0.1, until=until)}
    return optim.make_optimizer("hybrid", lr=0.1, groups=groups, progress=lambda s: s / steps, seed=4)


def test_zo_group_perturbs_only_its_coordinates_and_exact_group_gets_the_true_gradient() -> None:
    obj = _Recording(D)
    theta = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    opt = _hybrid()
    g, _ = opt.source(obj, theta, {}, 0)
    points = torch.cat(obj.points)
    assert points.shape == (4, D)  # q = 2 central pairs
    outside = torch.ones(D, dtype=torch.bool)
    outside[ZO] = False
    for p in points:
        assert torch.equal(p[outside], theta[outside]) and not torch.equal(p[ZO], theta[ZO])
    assert torch.equal(g[HEAD], obj.grad(theta)[HEAD])  # the exact slice
    rest = torch.ones(D, dtype=torch.bool)
    rest[ZO] = rest[HEAD] = False
    assert torch.all(g[rest] == 0)
    # the ZO slice is the two-point estimate on the group's coordinates (μ → 0 on a quadratic: Z g_ZO + cross terms)
    assert g[ZO].abs().sum() > 0 and opt.groups["zo"].zeroth_order and not opt.groups["head"].zeroth_order


def test_ungrouped_parameters_never_move_and_until_freezes_the_head() -> None:
    obj = QuadraticObjective(torch.linspace(0.5, 2.0, D, dtype=torch.float64))
    theta = torch.ones(D, dtype=torch.float64)
    opt = _hybrid(until=0.5)
    state = opt.init(theta)
    heads = []
    for step in range(10):
        before = theta.clone()
        opt.step(obj, theta, state, step)
        heads.append(theta[HEAD].clone())
        if step < 5:  # GD on the head's slice of the true gradient
            assert torch.equal(theta[HEAD], torch.add(before[HEAD], obj.grad(before)[HEAD], alpha=-0.1))
        assert not torch.equal(theta[ZO], before[ZO])
    assert torch.equal(theta[[4, 5, 9]], torch.ones(3, dtype=torch.float64))
    assert all(torch.equal(h, heads[4]) for h in heads[4:]) and not torch.equal(heads[3], heads[4])


def test_clip_bounds_the_group_estimate() -> None:
    obj = QuadraticObjective(torch.full((D,), 50.0, dtype=torch.float64))
    theta = torch.ones(D, dtype=torch.float64)
    g, _ = _hybrid(clip=0.01, zo_rule="gd").source(obj, theta, {}, 0)
    assert float(g[ZO].norm()) == pytest.approx(0.01, rel=1e-9)
    g_free, _ = _hybrid(zo_rule="gd").source(obj, theta, {}, 0)
    assert torch.allclose(g[ZO] * g_free[ZO].norm() / 0.01, g_free[ZO])  # the same direction, shortened


def test_hybrid_needs_groups_and_progress_and_refuses_stacks() -> None:
    with pytest.raises(InvalidValueError, match="needs parameter groups"):
        optim.make_optimizer("hybrid", lr=0.1)
    with pytest.raises(InvalidValueError, match="needs progress"):
        optim.make_optimizer("hybrid", lr=0.1, groups={"h": GroupSpec("h", HEAD)})
    with pytest.raises(InvalidValueError, match="one copy"):
        _hybrid().source(QuadraticObjective(torch.ones(D)), torch.zeros(2, D), {}, 0)


def test_zo_fc_defaults_and_config_overrides() -> None:
    tables = group_tables(TrainConfig(optimizer="zo-fc"))
    assert tables["adapter"] == {"source": "two_point", "rule": "heavy_ball", "lr": 0.01, "clip": 1.0, "until": 1.0,
                                 "directions": "rademacher", "queries": 4, "mu": 1e-3, "momentum": 0.9}
    assert tables["head"]["source"] == "exact" and tables["head"]["until"] == 0.5 and tables["head"]["lr"] == 0.01
    over = group_tables(TrainConfig(optimizer="zo-fc", groups={"head": {"until": 0.25}}))
    assert over["head"]["until"] == 0.25 and over["head"]["source"] == "exact"
    assert not presets.preset("zo-fc").takes_momentum and presets.preset("zo-fc").grouped


PLUGIN = textwrap.dedent('''
    import math
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, d_in, n_out):
            super().__init__()
            self.body = nn.Linear(d_in, 6)
            self.adapter = nn.Linear(6, 6)
            self.head = nn.Linear(6, n_out)

        def forward(self, x):
            h = torch.tanh(self.body(x.flatten(1)))
            return self.head(h + 0.1 * torch.tanh(self.adapter(h)))

        def param_groups(self):
            names = [n for n, _ in self.named_parameters()]
            return {g: [n for n in names if n.startswith(g + ".")] for g in ("adapter", "head", "body")}

    def build(input_shape, num_outputs):
        return Net(math.prod(input_shape), num_outputs)
''')

HYBRID_GROUPS = {"body": {"source": "two_point", "queries": 2, "clip": 1.0, "rule": "adam", "lr": 0.01},
                 "head": {"source": "exact", "rule": "heavy_ball", "lr": 0.05, "until": 0.5}}


def _checkpoint(path) -> dict:
    return torch.load(checkpoint_path(path), weights_only=False)


@pytest.mark.parametrize("name", ["zo-gd-nm", "rise", "zo-fc", "hybrid"])
def test_new_presets_resume_bitwise(name, tmp_path, monkeypatch) -> None:
    """A run interrupted (SIGINT) after its step-3 checkpoint and resumed equals the uninterrupted run bitwise:
    θ, every optimizer state tensor (the groups' momenta / Adam moments) and the logged losses. zo-fc's and
    hybrid's heads freeze at step 4 of 8 (until 0.5), inside the resumed part."""
    import h5py

    from eos_probe.interrupt import RunInterrupted
    from eos_probe.trainer import checkpointing

    plugin = tmp_path / "net.py"
    plugin.write_text(PLUGIN)
    base = dict(model=f"{plugin}:build", optimizer=name, n_per_class=4, probe=[], checkpoint_every=3,
                log_every=1, seed=2, device="cpu", steps=8)
    base.update({"hybrid": {"groups": HYBRID_GROUPS}, "rise": {"rise_blocks": 40, "queries": 2},
                 "zo-gd-nm": {"lr": 0.01}}.get(name, {}))
    full = train(TrainConfig(**base, out=str(tmp_path / "full.h5")), progress=False)
    real = checkpointing.save_checkpoint

    def save_then_interrupt(path, step, *a):
        real(path, step, *a)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(checkpointing, "save_checkpoint", save_then_interrupt)
    cut = tmp_path / "cut.h5"
    with pytest.raises(RunInterrupted):
        train(TrainConfig(**base, out=str(cut)), progress=False)
    monkeypatch.setattr(checkpointing, "save_checkpoint", real)
    assert int(_checkpoint(cut)["step"]) < 8
    train(None, resume=cut, progress=False)
    a, b = _checkpoint(full.path), _checkpoint(cut)
    assert int(b["step"]) == 8 and torch.equal(a["theta"], b["theta"])
    assert a["state"].keys() == b["state"].keys()
    for part, tensors in a["state"].items():
        assert tensors.keys() == b["state"][part].keys()
        for k, t in tensors.items():
            assert torch.equal(b["state"][part][k], t), (part, k)
    with h5py.File(full.path, "r") as fa, h5py.File(cut, "r") as fb:
        assert (fa["train/loss"][()] == fb["train/loss"][()]).all()
    if name == "hybrid":  # the groups' rule states are checkpointed under <group>.<name>
        assert {"body.m", "body.v", "body.P", "head.m"} <= set(a["state"]["rule"])


GROUP_TOML = {
    "nothing": ('[groups.nothere]\nsource = "exact"\n', "group 'nothere' matches no parameter"),
    "no-source": ('[groups.head]\nlr = 0.1\n', "group 'head' has no source"),
    "unknown-key": ('[groups.head]\nsource = "exact"\nbeta = 0.5\n', "group 'head': unknown key 'beta'"),
    "bad-source": ('[groups.head]\nsource = "cocd"\n', "unknown source 'cocd'"),
    "zo-key-on-exact": ('[groups.head]\nsource = "exact"\nqueries = 4\n', "apply to two_point groups only"),
    "until": ('[groups.head]\nsource = "exact"\nuntil = 1.5\n', "until (fraction of each task"),
    "overlap": ('[groups.head]\nsource = "exact"\n[groups."*"]\nsource = "exact"\n', "groups must not overlap"),
    "not-a-table": ('groups = {head = 3}\n', "must be a [groups.head] table"),
}


def _cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(GROUP_TOML))
def test_bad_groups_are_one_line_exit_2(case, tmp_path, capsys) -> None:
    text, needle = GROUP_TOML[case]
    cfg = tmp_path / "c.toml"
    cfg.write_text('optimizer = "hybrid"\nmodel = "mlp"\nn_per_class = 4\nsteps = 2\n' + text)
    code, err = _cli(["train", "--config", str(cfg), "--probe", "none", "--quiet", "--out", str(tmp_path / "r.h5")],
                     capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.parametrize("args,needle", [
    (["--optimizer", "hybrid"], "optimizer hybrid needs parameter groups"),
    (["--optimizer", "gd", "--norm-match"], "norm_match applies to the two-point ZO optimizers only"),
    (["--optimizer", "rise", "--rise-blocks", "layer"], "rise blocks must be 'tensor' or a positive integer"),
    (["--optimizer", "rise", "--rise-blocks", "0"], "rise blocks must be 'tensor' or a positive integer"),
    (["--optimizer", "zo-gd", "--rise-blocks", "8"], "rise_blocks applies to the RISE optimizers only (rise)"),
    (["--optimizer", "zo-fc"], "group 'adapter' matches no parameter"),
    (["--optimizer", "zo-fc", "--momentum", "0.5"], "optimizer zo-fc takes no momentum (got 0.5)"),
])
def test_bad_flags_are_one_line_exit_2(args, needle, tmp_path, capsys) -> None:
    code, err = _cli(["train", "--model", "mlp", "--n-per-class", "4", "--steps", "2", "--probe", "none", "--quiet",
                      "--out", str(tmp_path / "r.h5"), *args], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_a_sweep_of_a_hybrid_is_refused_in_one_line(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('optimizer = "hybrid"\nmodel = "mlp"\nn_per_class = 4\nsteps = 2\n'
                   '[groups.head]\nsource = "exact"\n')
    code, err = _cli(["train", "--config", str(cfg), "--lr", "0.1,0.2", "--probe", "none", "--quiet",
                      "--out", str(tmp_path / "r.h5")], capsys)
    assert code == 2 and "trains one copy at a time" in err and len(err.strip().splitlines()) == 1, err


def test_the_pretrained_body_recipes_name_their_groups_and_the_head_only_baseline_moves_only_the_head(tmp_path) -> None:
    """recipes/zo-fc-pretrain.toml trains body and head (adapters frozen at zero); recipes/zo-fc-head.toml
    trains the head alone by two-point ZO. The pre-training data (full Fashion-MNIST) is not needed here."""
    from pathlib import Path

    import numpy as np

    from eos_probe.build import build
    from eos_probe.checkpoint import load_checkpoint
    from eos_probe.config import load_toml

    root = Path(__file__).resolve().parents[1] / "recipes"
    pre = load_toml(root / "zo-fc-pretrain.toml")
    assert set(pre["groups"]) == {"body", "head"} and pre["data"] == "fashion-mnist"
    assert not set(pre["classes"]) & {0, 1, 2, 3}  # data the continual sequence never sees
    TrainConfig(**pre)
    head = load_toml(root / "zo-fc-head.toml")
    assert set(head["groups"]) == {"head"} and head["groups"]["head"]["source"] == "two_point"
    out = tmp_path / "head.h5"
    cfg = TrainConfig(**{**head, "task_steps": [3, 3], "probe": [], "out": str(out)})
    train(cfg, progress=False)
    theta = load_checkpoint(checkpoint_path(out))["theta"].numpy()
    setup = build(TrainConfig(**{**head, "probe": []}))
    names = setup.objective.space.names
    sizes = [int(np.prod(s)) for s in setup.objective.space.shapes]
    start = setup.objective.initial_theta().numpy()
    moved = {n for n, a, b in zip(names, np.cumsum([0] + sizes[:-1]), np.cumsum(sizes))
             if not np.array_equal(theta[a:b], start[a:b])}
    assert moved and all(n.startswith("head") for n in moved), moved
