"""ViT adapters and cosine head (ZO-FC, docs/theory.md §5b): identity at init, unchanged base weights,
exact HVPs (both back ends) against a dense reverse-over-reverse Hessian, parameter groups, `--list-groups`."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch.func import functional_call

from eos_probe.cli import main
from eos_probe.commands.train import command
from eos_probe.errors import UserError
from eos_probe.groups import describe_groups, resolve_groups
from eos_probe.models import build_model, num_params, param_groups
from eos_probe.objective import Objective

TINY = {"patch": 2, "dim": 4, "depth": 2, "heads": 2, "mlp_dim": 6}
SMALL = {"patch": 7, "dim": 16, "depth": 2, "heads": 2, "mlp_dim": 32}   # the zo-fc recipe's ViT


def _vit(dtype=torch.float64, shape=(1, 4, 4), opts=TINY, **kw) -> torch.nn.Module:
    return build_model("vit", input_shape=shape, num_classes=3, seed=0, dtype=dtype, **opts, **kw)


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled features the head receives."""
    seen = []
    handle = model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model(x)
    handle.remove()
    return seen[0]


def _adapter_params(dim: int, rank: int, depth: int) -> int:
    return depth * (dim * rank + rank + rank * dim + dim) if rank else 0   # down, up (weights, biases)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_adapters_start_as_identity_and_leave_base_weights_unchanged(dtype, head, one_thread) -> None:
    shape = (1, 28, 28)
    plain = _vit(dtype, shape, SMALL, head=head)
    adapted = _vit(dtype, shape, SMALL, head=head, adapter=5)
    base, full = plain.state_dict(), adapted.state_dict()
    assert set(full) - set(base) == {n for n in full if n.startswith("adapters.")}
    assert all(torch.equal(base[k], full[k]) for k in base)
    # the base parameters keep their flat-θ positions: the adapters are the tail of θ
    assert list(full)[:len(base)] == list(base)
    assert num_params(adapted) - num_params(plain) == _adapter_params(16, 5, 2)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    assert torch.equal(plain(x), adapted(x))          # bitwise: the zero up-projection adds an exact 0
    assert torch.equal(_features(plain, x), _features(adapted, x))   # (the linear head's logits start at 0)
    # and the adapters are wired in: a non-zero up-projection changes the features
    with torch.no_grad():
        adapted.adapters[1].up.weight.normal_(generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(_features(plain, x), _features(adapted, x))


def test_cosine_head_keeps_the_body_of_the_linear_head_vit() -> None:
    lin, cos = _vit(head="linear", adapter=2), _vit(head="cosine", adapter=2)
    a, b = lin.state_dict(), cos.state_dict()
    assert set(a) - set(b) == {"head.bias"} and set(b) <= set(a)          # the cosine head has no bias
    assert all(torch.equal(a[k], b[k]) for k in b if not k.startswith("head."))   # adapters included
    assert b["head.weight"].any() and not a["head.weight"].any()


def test_adapter_is_a_scaled_zero_initialised_bottleneck() -> None:
    model = _vit(adapter=3)
    ad = model.adapters[0]
    assert ad.down.weight.shape == (3, 4) and ad.up.weight.shape == (4, 3)
    assert not ad.up.weight.any() and not ad.up.bias.any() and ad.down.weight.any()
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in ad.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    expected = 0.1 * (F.gelu(x @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias)
    assert torch.allclose(ad(x), expected, rtol=1e-14, atol=1e-15)


def test_cosine_head_is_scaled_cosine_similarity() -> None:
    model = _vit(head="cosine", cosine_scale=7.0)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    logits = model(x)
    w = model.head.weight
    expected = 7.0 * F.cosine_similarity(_features(model, x)[:, None, :], w[None, :, :], dim=-1)
    assert torch.allclose(logits, expected, rtol=1e-9, atol=1e-10)   # the head's ε = 1e-12 in ‖·‖² only
    assert [n for n, _ in model.named_parameters() if n.startswith("head.")] == ["head.weight"]  # fixed scale


@pytest.mark.parametrize("value, rank", [(True, 5), ("true", 5), (3, 3), (0, 0), (False, 0), ("none", 0)])
def test_adapter_option_spelling(value, rank) -> None:
    model = _vit(adapter=value)
    assert num_params(model) - num_params(_vit()) == _adapter_params(4, rank, 2)
    assert len(param_groups(model)["adapter"]) == (4 * 2 if rank else 0)


@pytest.mark.parametrize("opts, message", [({"adapter": -1}, "adapter=-1"), ({"adapter": 1.5}, "adapter=1.5"),
                                           ({"head": "arc"}, "choose one of: linear, cosine"),
                                           ({"cosine_scale": 0.0}, "cosine_scale=0.0")])
def test_bad_options_are_user_errors(opts, message) -> None:
    with pytest.raises(UserError, match=message):
        _vit(**opts)


def _dense_hessian(model: torch.nn.Module, x, y) -> torch.Tensor:
    """Cross-entropy Hessian over the flat θ by reverse-over-reverse autograd (independent of Objective)."""
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    sizes = [math.prod(s) for s in shapes]

    def f(theta):
        params = {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    return torch.autograd.functional.hessian(f, theta, vectorize=True)


@pytest.mark.parametrize("backend", ["fwd-rev", "double-backward"])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_hvp_with_adapters_matches_dense_hessian(backend, head, one_thread) -> None:
    model = _vit(adapter=2, head=head)
    with torch.no_grad():   # off the init point: zero up-projections would hide the adapters' curvature
        g = torch.Generator().manual_seed(5)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(7, 1, 4, 4, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (7,), generator=g)
    obj = Objective(model, x, y, loss="ce", num_classes=3, microbatch=4)
    theta = obj.initial_theta()
    H = _dense_hessian(model, x, y)
    idx = resolve_groups(model, ["adapter"])["adapter"]
    assert H[idx][:, idx].abs().max() > 1e-3      # the adapter block has curvature to get right
    V = torch.randn(3, theta.numel(), dtype=theta.dtype, generator=g)
    op = obj.hvp_at(theta, backend)
    assert torch.allclose(op.matvec(V[0]), H @ V[0], rtol=1e-9, atol=1e-11)
    assert torch.allclose(op.matmat(V), V @ H, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kw", [{}, {"adapter": 2}, {"adapter": 2, "head": "cosine"}])
def test_groups_cover_every_parameter_once(kw) -> None:
    model = _vit(**kw)
    groups = param_groups(model)
    assert list(groups) == ["adapter", "head", "body"]
    names = [n for n, _ in model.named_parameters()]
    listed = [n for ns in groups.values() for n in ns]
    assert sorted(listed) == sorted(names) and len(listed) == len(set(listed))
    assert groups["head"] == [n for n in names if n.startswith("head.")]
    assert bool(groups["adapter"]) == bool(kw.get("adapter"))
    present = [g for g, ns in groups.items() if ns]
    idx = resolve_groups(model, present)
    assert torch.equal(torch.sort(torch.cat(list(idx.values()))).values, torch.arange(num_params(model)))
    if kw.get("adapter"):   # adapters are the tail of θ
        assert torch.equal(idx["adapter"], torch.arange(num_params(_vit(head=kw.get("head", "linear"))),
                                                        num_params(model)))
    counts = {g: c for g, c, _ in describe_groups(model)}
    assert sum(counts.values()) == num_params(model)


def test_adapter_group_without_adapters_is_a_user_error() -> None:
    with pytest.raises(UserError, match="group 'adapter' matches no parameter"):
        resolve_groups(_vit(), ["adapter"])


def _list(args: list[str]):
    return CliRunner().invoke(command, [*args, "--n-per-class", "2", "--list-groups"])


def test_list_groups_prints_groups_and_exits_without_training(tmp_path, monkeypatch, one_thread) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--model", "vit", "--model-arg", "adapter=5"] + [a for k, v in SMALL.items()
                                                             for a in ("--model-arg", f"{k}={v}")]
    res = _list(args)
    assert res.exit_code == 0, res.output
    model = build_model("vit", input_shape=(1, 28, 28), num_classes=4, adapter=5, **SMALL)
    lines = res.output.splitlines()
    for group, count, names in describe_groups(model):
        assert f"{group}: {count} parameters in {len(names)} tensors" in lines
    assert f"adapter: {_adapter_params(16, 5, 2)} parameters in 8 tensors" in lines
    listed = [ln.split()[0] for ln in lines if ln.startswith("  ")]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    assert not list(tmp_path.iterdir())           # no run file, no runs/ directory


def test_list_groups_works_for_other_and_plugin_models(tmp_path) -> None:
    res = _list(["--model", "mlp", "--model-arg", "hidden=[8]"])
    assert res.exit_code == 0 and "head: 36 parameters in 2 tensors" in res.output.splitlines()
    plugin = tmp_path / "net.py"
    plugin.write_text("import torch\n\n"
                      "def build(input_shape, num_outputs, hidden=3):\n"
                      "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, hidden),\n"
                      "                               torch.nn.Tanh(), torch.nn.Linear(hidden, num_outputs))\n")
    res = _list(["--model", f"{plugin}:build"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"body: {784 * 3 + 3} parameters in 2 tensors"
    assert "head: 16 parameters in 2 tensors" in res.output.splitlines()


@pytest.mark.parametrize("args, message", [
    (["--model", "vit", "--model-arg", "adapter=-2", "--n-per-class", "2"], "adapter=-2"),
    (["--resume", "x.h5"], "--list-groups lists the groups of a model to be trained"),
    (["--model", "nope"], "unknown model 'nope'")])
def test_list_groups_mistakes_are_one_line_exit_2(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", *args, "--list-groups"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
