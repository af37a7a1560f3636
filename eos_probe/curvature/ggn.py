"""The generalised Gauss–Newton part of the Hessian, exactly, from per-example output Jacobians.

For a loss that is a mean over N loss terms ℓ(f_t) of network outputs f_t ∈ R^C,

    H = G + R,   G = (1/N) Σ_t J_tᵀ A_t J_t,   A_t = ∇²_f ℓ(f_t),   R = (1/N) Σ_t Σ_c ∂_c ℓ · ∇²_θ f_{t,c}.

A_t = B_t B_tᵀ with B = I for the MSE convention 0.5·Σ_c (f_c − onehot_c)² and B = diag(√p) − p √pᵀ for
cross-entropy (p = softmax(f)) — `eos_probe.losses.Loss.gauss_newton` — so with the "whitened outputs" u_{t,k} = Σ_c B_{ck} f_c (B held fixed)

    Tr G = (1/N) Σ_t Σ_k ‖∇_θ u_{t,k}‖²,      zᵀ G z = (1/N) Σ_t Σ_k (∇_θ u_{t,k} · z)².

The per-term gradients are summed in squares without forming G. Two paths compute them:

* **layer formulas** (fast): when every parameter belongs to an ``nn.Linear`` or an ``nn.Conv1d/2d``
  (groups 1, zero padding) called once per forward, one backward pass per output slot gives the per-example
  gradients at each layer's output, and the per-example weight gradient norms follow from the layer input
  (‖Σ_s g_s a_sᵀ‖², materialised or by Gram matrices over positions, whichever is cheaper);
* **per-example Jacobians** (any model): ``vmap(jacrev)`` over the examples of a micro-batch.

Loss terms must not interact across examples (no batch statistics), which holds for every model family.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vmap

from ..errors import InvalidValueError

__all__ = ["ggn_trace", "ggn_quadratic"]

#: elements of per-example Jacobians held at once on the generic path (≈128 MB in float32)
JACOBIAN_BUDGET = 1 << 25


# ---------------------------------------------------------------------------------------------- outputs
def _whiten(objective, out: Tensor, y: Tensor) -> Tensor:
    """u = Bᵀ f per loss term, with masked terms zeroed; shape (m, K) with K = (positions ×) classes."""
    u = objective.loss_spec.gauss_newton(out, out, y)
    return u.reshape(u.shape[0], -1)


def _outputs(objective, theta: Tensor, x: Tensor) -> Tensor:
    return functional_call(objective.model, objective.space.unflatten(theta), (x,))


# ---------------------------------------------------------------------------------------------- fast path
_COVERED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _layer_plan(model: nn.Module) -> list[nn.Module] | None:
    """The modules whose layer formulas cover every parameter, or None if some parameter is elsewhere."""
    covered, owned = [], set()
    for mod in model.modules():
        direct = list(mod.named_parameters(recurse=False))
        if not direct:
            continue
        if not isinstance(mod, _COVERED):
            return None
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                return None
        if {n for n, _ in direct} - {"weight", "bias"}:
            return None
        covered.append(mod)
        owned.update(id(p) for _, p in direct)
    if len(owned) != len(list(model.parameters())):
        return None
    return covered


def _sq_norm_weight_linear(a: Tensor, g: Tensor) -> Tensor:
    """Σ_i ‖Σ_s g_{i,s} a_{i,s}ᵀ‖²_F for a (m, S, in), g (m, S, out)."""
    m, S, n_in = a.shape
    n_out = g.shape[-1]
    if S == 1:
        return ((a[:, 0] ** 2).sum(1) * (g[:, 0] ** 2).sum(1)).sum()
    if n_in * n_out <= S * (n_in + n_out):
        return (torch.bmm(g.transpose(1, 2), a) ** 2).sum()
    return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum()


def _layer_inputs(mod: nn.Module, a: Tensor) -> Tensor:
    """The layer input in the form its weight gradient contracts with: (m, S, in) or unfolded (m, Cin·k, P)."""
    m = a.shape[0]
    if isinstance(mod, nn.Linear):
        return a.reshape(m, -1, a.shape[-1])
    if isinstance(mod, nn.Conv1d):
        return F.unfold(a.unsqueeze(2), (1, mod.kernel_size[0]), dilation=(1, mod.dilation[0]),
                        padding=(0, mod.padding[0]), stride=(1, mod.stride[0]))
    return F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)


def _layer_sq_norms(mod: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    """Σ over examples of ‖per-example gradient‖² of this module's weight (and bias); a from _layer_inputs."""
    m = a.shape[0]
    if isinstance(mod, nn.Linear):
        g2 = g.reshape(m, -1, g.shape[-1])
        total = _sq_norm_weight_linear(a, g2)
        if mod.bias is not None:
            total = total + (g2.sum(1) ** 2).sum()
        return total
    g2 = g.reshape(m, g.shape[1], -1)  # (m, Cout, P)
    ck, cout, P = a.shape[1], g2.shape[1], g2.shape[2]
    if ck * cout <= P * (ck + cout):
        total = (torch.bmm(g2, a.transpose(1, 2)) ** 2).sum()
    else:
        total = (torch.bmm(a.transpose(1, 2), a) * torch.bmm(g2.transpose(1, 2), g2)).sum()
    if mod.bias is not None:
        total = total + (g2.sum(2) ** 2).sum()
    return total


def _trace_layers(objective, theta: Tensor, modules: list[nn.Module]) -> Tensor | None:
    records: dict[int, list] = {id(m): [] for m in modules}

    def hook(mod, inputs, output):
        records[id(mod)].append((inputs[0].detach(), output))

    handles = [m.register_forward_hook(hook) for m in modules]
    total = theta.new_zeros(())
    try:
        for x, y in objective.chunks:
            for r in records.values():
                r.clear()
            leaf = theta.detach().requires_grad_(True)
            with torch.enable_grad():
                u = _whiten(objective, _outputs(objective, leaf, x), y)
                if any(len(r) != 1 for r in records.values()):
                    return None  # a layer used twice (weight sharing) or not at all: no layer formula
                outs = [records[id(m)][0][1] for m in modules]
                ins = [_layer_inputs(m, records[id(m)][0][0]) for m in modules]
                for k in range(u.shape[1]):
                    gs = torch.autograd.grad(u[:, k].sum(), outs, retain_graph=k + 1 < u.shape[1],
                                             allow_unused=True)
                    for mod, a, g in zip(modules, ins, gs):
                        if g is not None:
                            total = total + _layer_sq_norms(mod, a, g.detach())
    finally:
        for h in handles:
            h.remove()
        for r in records.values():
            r.clear()
    return total


# ---------------------------------------------------------------------------------------------- generic path
def _trace_jacobians(objective, theta: Tensor) -> Tensor:
    def u_one(t: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return _whiten(objective, _outputs(objective, t, x.unsqueeze(0)), y.unsqueeze(0))[0]

    total = theta.new_zeros(())
    jac = vmap(jacrev(u_one), in_dims=(None, 0, 0))
    for x, y in objective.chunks:
        with torch.no_grad():
            K = _whiten(objective, _outputs(objective, theta, x[:1]), y[:1]).shape[1]
        # the Jacobian itself (K·d per example) and vmap(jacrev)'s K backward passes per example
        # (Objective.MEMORY_FACTORS["jacobian"]) both within budget
        m = max(1, min(JACOBIAN_BUDGET // max(1, K * objective.dim), objective.max_examples("jacobian", K)))
        for xs, ys in zip(x.split(m), y.split(m)):
            J = jac(theta.detach(), xs, ys)
            total = total + (J.detach() ** 2).sum()
    return total


# ---------------------------------------------------------------------------------------------- public
def ggn_trace(objective, theta: Tensor, path: str = "auto") -> tuple[float, dict]:
    """Exact Tr G at θ and a dict of details (path used, seconds).

    ``path``: "layers" (Linear/Conv formulas; raises if the model has other parameters), "jacobian"
    (per-example Jacobians, any model) or "auto" (layers where possible).

    Theory: [docs/theory.md#metric-trace][metric-trace].
    """
    if path not in ("auto", "layers", "jacobian"):
        raise InvalidValueError(f"unknown Gauss–Newton path {path!r}; choose auto, layers or jacobian")
    t0 = time.perf_counter()
    value = None
    used = "jacobian"
    if path in ("auto", "layers"):
        plan = _layer_plan(objective.model)
        if plan is not None:
            value = _trace_layers(objective, theta, plan)
            used = "layers"
        if value is None and path == "layers":
            raise InvalidValueError("layer formulas need every parameter in an nn.Linear / nn.Conv1d / nn.Conv2d "
                            "(groups 1) used once per forward; use path='jacobian'")
    if value is None:
        used = "jacobian"
        value = _trace_jacobians(objective, theta)
    return float(value) / objective.n_terms, {"path": used, "seconds": time.perf_counter() - t0}


def ggn_quadratic(objective, theta: Tensor, Z: Tensor) -> Tensor:
    """zᵀ G z for each row z of Z (m, d), by forward-mode products of the whitened outputs.

    Vmapped over row blocks of Z and over chunks of the data sized to the objective's memory budget."""
    theta = theta.detach()
    chunks = objective.work_chunks("jvp")
    rows = objective.rows_per_block("jvp", chunks)
    loss = objective.loss_spec

    def one(z: Tensor) -> Tensor:
        total = None
        for x, y in chunks:
            out, jout = jvp(lambda t: _outputs(objective, t, x), (theta,), (z,))
            ju = loss.gauss_newton(out, jout, y)
            s = (ju**2).sum()
            total = s if total is None else total + s
        return total / objective.n_terms

    try:
        return torch.cat([vmap(one)(B) for B in Z.split(rows)]).detach()
    except (NotImplementedError, RuntimeError):
        return torch.stack([one(z) for z in Z]).detach()
