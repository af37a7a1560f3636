"""Model families: exact Hessian-vector products, functional purity, determinism, causality, sizes, errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, grad, hessian, jvp, vmap

from eos_probe.errors import UserError
from eos_probe.models import MODELS, build_model, model_names, num_params

# tiny float64 instances (a few hundred parameters) of every model: (name, input_shape, classes, options)
TINY = {
    "mlp": ((1, 4, 4), 3, {"hidden": (5, 4)}),
    "cnn": ((1, 8, 8), 3, {"widths": (2, 3), "hidden": 4}),
    "resnet": ((3, 8, 8), 3, {"width": 2, "stages": (2, 1), "groups": 2}),
    "resnet_nonorm": ((3, 8, 8), 3, {"width": 2, "stages": (1, 1), "norm": "none"}),
    "vit": ((1, 4, 4), 3, {"patch": 2, "dim": 4, "depth": 2, "heads": 2, "mlp_dim": 6}),
    "lstm": ((5,), 3, {"embed": 3, "hidden": 3, "layers": 2}),
    "mamba": ((5,), 3, {"d_model": 4, "layers": 2, "d_state": 2, "expand": 2, "d_conv": 3, "dt_rank": 1}),
}
SEQUENCE = {"lstm", "mamba"}
# CUDA kernels differ from CPU ones (and fused ones may lack higher derivatives): check both where present
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _base(case: str) -> str:
    return case.split("_")[0]


def _tiny(case: str, seed: int = 0) -> torch.nn.Module:
    shape, classes, opts = TINY[case]
    return build_model(_base(case), input_shape=shape, num_classes=classes, seed=seed, dtype=torch.float64, **opts)


def _batch(case: str, n: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, one-hot targets, mask of positions that count in the loss)."""
    g = torch.Generator().manual_seed(123)
    shape, classes, _ = TINY[case]
    if _base(case) in SEQUENCE:
        x = torch.randint(0, classes, (n, *shape), generator=g)
        y = torch.nn.functional.one_hot(torch.randint(0, classes, (n, *shape), generator=g), classes).double()
        mask = torch.zeros(n, shape[0], 1, dtype=torch.float64)
        mask[:, shape[0] // 2:] = 1.0                      # loss on the second half only, as in the sort task
        return x, y, mask
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, classes, (n,), generator=g), classes).double()
    return x, y, torch.ones(n, 1, dtype=torch.float64)


def _flat_loss(model: torch.nn.Module, x, y, mask):
    """f(θ) = ½ Σ mask·(out − onehot)² / n over a flat parameter vector θ, and a generic θ0."""
    names, shapes = zip(*[(k, p.shape) for k, p in model.named_parameters()])
    sizes = [math.prod(s) for s in shapes]

    def unflatten(theta):
        return {k: t.view(s) for k, t, s in zip(names, theta.split(sizes), shapes)}

    def f(theta):
        out = functional_call(model, unflatten(theta), (x,))
        r = out - y
        return 0.5 * (mask * r * r).sum() / x.shape[0]

    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    # move off the initialisation: zero-initialised heads make whole Hessian blocks vanish there
    g = torch.Generator().manual_seed(7)
    theta0 = theta0 + 0.3 * torch.randn(theta0.shape, generator=g, dtype=theta0.dtype).to(theta0.device)
    return f, theta0, unflatten


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(TINY))
def test_hvp_matches_dense_hessian(case, device):
    model = _tiny(case).to(device)
    assert num_params(model) < 600
    f, theta, _ = _flat_loss(model, *(t.to(device) for t in _batch(case)))
    H = hessian(f)(theta)
    assert torch.allclose(H, H.T, atol=1e-10 * H.abs().max())
    V = torch.randn(3, theta.numel(), generator=torch.Generator().manual_seed(1), dtype=theta.dtype).to(device)
    HV = V @ H                                            # rows: H v (H symmetric)
    assert HV.norm() > 1e-3

    for v, hv in zip(V, HV):
        fwd_rev = jvp(grad(f), (theta,), (v,))[1]        # forward-over-reverse
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(t), t, create_graph=True)
        (dbl,) = torch.autograd.grad(g, t, v)            # double backward
        assert _rel(fwd_rev, hv) < 1e-10
        assert _rel(dbl, hv) < 1e-10
        # an independent check of the dense Hessian itself: central differences of the gradient
        eps = 1e-5
        fd = (grad(f)(theta + eps * v) - grad(f)(theta - eps * v)) / (2 * eps)
        assert _rel(fd, hv) < 1e-6
    # batched probe vectors (what a vmapped hvp_many does)
    batched = vmap(lambda v: jvp(grad(f), (theta,), (v,))[1])(V)
    assert _rel(batched, HV) < 1e-10


@pytest.mark.parametrize("case", list(TINY))
def test_functional_call_is_pure(case):
    model = _tiny(case)
    x, _, _ = _batch(case)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    assert torch.equal(functional_call(model, params, (x,)), model(x))
    # perturbed parameters through functional_call == a module holding them, and the module is untouched
    new = {k: v + 0.1 * torch.randn_like(v) for k, v in params.items()}
    other = _tiny(case)
    other.load_state_dict(new)
    out = functional_call(model, new, (x,))
    assert torch.equal(out, other(x))
    assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())
    assert not torch.equal(out, model(x))
    # no hidden state: the state dict is the parameters
    assert set(model.state_dict()) == set(params)
    # per-example evaluation under vmap (per-sample Jacobians) agrees with the batched forward
    per = vmap(lambda xi: functional_call(model, params, (xi.unsqueeze(0),)).squeeze(0))(x)
    assert torch.allclose(per, model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_seed_determinism_and_global_rng(name):
    case = name
    before = torch.random.get_rng_state()
    a, b, c = _tiny(case, seed=3), _tiny(case, seed=3), _tiny(case, seed=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # float64 weights are the float32 ones upcast; the dtype is applied to every parameter
    shape, classes, opts = TINY[case]
    f32 = build_model(name, input_shape=shape, num_classes=classes, seed=3, **opts)
    assert all(p.dtype == torch.float32 for p in f32.parameters())
    assert all(p.dtype == torch.float64 for p in a.parameters())
    assert all(torch.equal(sa[k], v.double()) for k, v in f32.state_dict().items())


@pytest.mark.parametrize("name", model_names("image"))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_default_image_models_shapes(name, shape):
    model = build_model(name, input_shape=shape, num_classes=4)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 4) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", model_names("sequence"))
def test_default_sequence_models_shapes_and_causality(name):
    vocab, length = 4, 16
    model = build_model(name, input_shape=(length,), num_classes=vocab, dtype=torch.float64)
    x = torch.randint(0, vocab, (3, length), generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (3, length, vocab)
    for t in (0, 5, length - 2):
        x2 = x.clone()
        x2[:, t + 1:] = (x2[:, t + 1:] + 1) % vocab      # change every token after t
        out2 = model(x2)
        assert torch.equal(out2[:, :t + 1], out[:, :t + 1])
        assert not torch.allclose(out2[:, t + 1], out[:, t + 1])


@pytest.mark.parametrize("case", ["lstm", "mamba"])
def test_tiny_sequence_causality(case):
    model = _tiny(case)
    x, _, _ = _batch(case)
    out = model(x)
    x2 = x.clone()
    x2[:, 2] = (x2[:, 2] + 1) % TINY[case][1]
    out2 = model(x2)
    assert torch.equal(out2[:, :2], out[:, :2])
    assert not torch.allclose(out2[:, 2:], out[:, 2:])


def test_param_counts_of_defaults():
    cifar = dict(input_shape=(3, 32, 32), num_classes=4)
    n_cnn = num_params(build_model("cnn", **cifar))
    # conv 3→32, conv 32→64, linear 64·8·8→128 (no biases), linear 128→4 with bias
    assert n_cnn == 3 * 32 * 9 + 32 * 64 * 9 + 64 * 8 * 8 * 128 + 128 * 4 + 4
    assert abs(n_cnn - 544_000) / 544_000 < 0.01
    n_resnet = num_params(build_model("resnet", **cifar))
    assert abs(n_resnet - 293_000) / 293_000 < 0.05
    conv = lambda a, b: 9 * a * b  # noqa: E731
    expected = (conv(3, 16) + 3 * 2 * conv(16, 16) + conv(16, 32) + conv(32, 32) + conv(16, 32) + 4 * conv(32, 32)
                + conv(32, 64) + conv(64, 64) + conv(32, 64) + 4 * conv(64, 64)
                + 2 * (6 * 16 + 7 * 32 + 7 * 64) + 64 * 4 + 4)   # convs, GroupNorm affines, head
    assert n_resnet == expected
    assert num_params(build_model("resnet", norm="none", **cifar)) == expected - 2 * (6 * 16 + 7 * 32 + 7 * 64)
    assert num_params(build_model("mlp", **cifar)) == 3072 * 128 + 128 + 128 * 128 + 128 + 128 * 4 + 4
    d, m = 64, 256
    vit_block = 2 * d + 3 * d * d + d * d + 2 * d + d * m + m + m * d + d
    assert num_params(build_model("vit", **cifar)) == 2 * 48 + 48 * d + d + 2 * d + 3 * vit_block + 2 * d + d * 4 + 4
    seq = dict(input_shape=(16,), num_classes=4)
    assert num_params(build_model("lstm", **seq)) == 4 * 48 + 2 * (2 * 48 * 192 + 192) + 48 * 4 + 4
    inner, r, n_state = 128, 4, 16
    mamba_block = 64 + 64 * 2 * inner + inner * 4 + inner + inner * (r + 2 * n_state) + r * inner + inner \
        + inner * n_state + inner + inner * 64
    assert num_params(build_model("mamba", **seq)) == 4 * 64 + 2 * mamba_block + 64 + 64 * 4


def test_zero_initialised_heads_and_scaled_mamba_head():
    cifar = dict(input_shape=(3, 32, 32), num_classes=4)
    for name in ("resnet", "vit"):
        out = build_model(name, **cifar)(torch.randn(2, 3, 32, 32))
        assert torch.equal(out, torch.zeros_like(out))
    a = build_model("mamba", input_shape=(8,), num_classes=4)
    b = build_model("mamba", input_shape=(8,), num_classes=4, head_scale=1.0)
    assert torch.allclose(a.head.weight, 0.1 * b.head.weight)


def test_model_names():
    assert {"mlp", "cnn", "resnet", "vit"} <= set(model_names("image"))
    assert {"lstm", "mamba"} <= set(model_names("sequence"))
    assert all(MODELS[n].kind == k for k in ("image", "sequence") for n in model_names(k))
    assert model_names() == list(MODELS)
    with pytest.raises(UserError, match="image, sequence"):
        model_names("video")


@pytest.mark.parametrize("name, shape, opts, match", [
    ("transformer", (3, 32, 32), {}, "choose one of: " + ", ".join(MODELS)),
    ("cnn", (3, 32, 32), {"width": 3}, "valid options: widths, hidden, activation"),
    ("cnn", (3, 32, 32), {"widths": (32, -64)}, "widths"),
    ("cnn", (3, 32, 32), {"hidden": 0}, "hidden"),
    ("cnn", (3, 8, 8), {"widths": (2, 2, 2, 2)}, "fewer widths"),
    ("cnn", (3, 32, 32), {"activation": "relu"}, "gelu"),
    ("mlp", (3, 32, 32), {"hidden": "wide"}, "hidden"),
    ("mlp", (16,), {}, r"\(C, H, W\)"),
    ("resnet", (3, 32, 32), {"width": -16}, "width"),
    ("resnet", (3, 32, 32), {"norm": "batch"}, "group, none"),
    ("resnet", (3, 32, 32), {"width": 24}, "groups"),
    ("resnet", (3, 32, 32), {"stages": ()}, "stages"),
    ("vit", (3, 32, 32), {"heads": 6}, "heads=6 does not divide dim=64"),
    ("vit", (3, 30, 30), {}, "patch=4 does not tile"),
    ("vit", (3, 32, 32), {"dim": 66, "heads": 2}, "multiple of 4"),
    ("lstm", (3, 32, 32), {}, r"\(L,\)"),
    ("lstm", (16,), {"hidden": 2.5}, "hidden"),
    ("mamba", (16,), {"d_state": 0}, "d_state"),
    ("mamba", (16,), {"head_scale": -1.0}, "head_scale"),
])
def test_bad_options_raise_user_error(name, shape, opts, match):
    with pytest.raises(UserError, match=match):
        build_model(name, input_shape=shape, num_classes=4, **opts)


def test_bad_build_arguments():
    with pytest.raises(UserError, match="num_classes"):
        build_model("cnn", input_shape=(3, 32, 32), num_classes=0)
    with pytest.raises(UserError, match="dtype"):
        build_model("cnn", input_shape=(3, 32, 32), num_classes=4, dtype=torch.int64)
    with pytest.raises(UserError, match="input_shape"):
        build_model("cnn", input_shape=32, num_classes=4)
