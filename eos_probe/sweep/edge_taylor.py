"""Taylor surrogates of the network at θ_N, run beside the network with everything else fixed.

L_T(θ_N + Δ) = L(θ_N) + gᵀΔ + ½ΔᵀHΔ with the network's own g = ∇L(θ_N) and dense H = ∇²L(θ_N) (and the same
with H₊, the positive part). The surrogates and the network start from θ_N with the same optimizer, the same seed
and the same stacked shape, so row i of each draws the same direction stream (`optim.sources.TwoPointSource`
draws all rows from one generator seeded by (seed, step)), and the same blow-up criterion (loss > f × L(θ_N))
is applied to all three. Along the way:

* **leaving the surrogate**: per seed, the first step at which ‖θ_net − θ_T‖ > ½‖θ_net − θ_N‖;
* **local probes** on seed 0 of the network: λ_max, Tr H, Tr H₊ and the local η* (`edge_predict`, same path
  choice as the prediction) at θ_t, and where Δ = θ_t − θ_N lies in H(θ_N)'s eigenbasis (the share of ‖Δ‖² on
  positive, negative and flat eigen-directions, flat meaning |λ| ≤ 10⁻³ λ_max, and on the top 10).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .edge_network import FACTORS, load_start, step_losses

PROBE_STEPS = (0, 10, 20, 40, 80, 160, 320, 640)
FLAT_TOL = 1e-3


class TaylorObjective:
    """L(θ₀) + gᵀ(θ − θ₀) + ½(θ − θ₀)ᵀH(θ − θ₀) on stacked θ (…, d); speaks the optimizers' objective protocol."""

    loss_name = "taylor"

    def __init__(self, loss0: float, g: Tensor, H: Tensor, theta0: Tensor) -> None:
        self.loss0, self.g, self.H, self.theta0 = float(loss0), g, H, theta0
        self.dim = int(theta0.numel())
        self.device = theta0.device

    def loss(self, theta: Tensor) -> Tensor:
        delta = theta - self.theta0
        return self.loss0 + delta @ self.g + 0.5 * ((delta @ self.H) * delta).sum(-1)

    def evaluate(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return self.loss(theta), torch.full_like(theta[..., 0], float("nan"))

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.loss(theta), torch.full_like(theta[..., 0], float("nan")), self.g + (theta - self.theta0) @ self.H

    value_and_grad_batched = value_and_grad


def displacement_shares(delta: np.ndarray, lam: np.ndarray, vecs: np.ndarray, flat_tol: float = FLAT_TOL
                        ) -> dict[str, float]:
    """Where Δ lies in H(θ_N)'s eigenbasis: shares of ‖Δ‖² on positive / negative / flat directions and on the
    top 10, and the curvature energies ΔᵀH₊Δ, ΔᵀH₋Δ (H₋ = the negative part, as a positive number)."""
    c2 = (vecs.T @ delta) ** 2
    total = float(c2.sum()) or 1.0
    tol = flat_tol * float(lam.max())
    order = np.argsort(lam)[::-1]
    return {"norm": math.sqrt(float(c2.sum())), "positive": float(c2[lam > tol].sum()) / total,
            "negative": float(c2[lam < -tol].sum()) / total, "flat": float(c2[np.abs(lam) <= tol].sum()) / total,
            "top10": float(c2[order[:10]].sum()) / total, "energy_pos": float((np.clip(lam, 0, None) * c2).sum()),
            "energy_neg": float((np.clip(-lam, 0, None) * c2).sum())}


def _surrogates(setup, opt_args: dict[str, Any], theta0: Tensor, theta: Tensor, state: dict, H: np.ndarray,
                lam: np.ndarray, vecs: np.ndarray) -> dict[str, tuple]:
    """The two surrogate objectives with their own optimizer (same preset and seed) and state copies."""
    from ..optim import make_optimizer

    obj = setup.objective
    loss0, _, g = obj.value_and_grad(theta0)
    Hp = (vecs * np.clip(lam, 0, None)) @ vecs.T
    out = {}
    for name, M in (("taylor", H), ("taylor_pos", Hp)):
        T = TaylorObjective(float(loss0), g.detach(), torch.as_tensor(M, dtype=theta.dtype, device=theta.device),
                            theta0)
        o = make_optimizer(**opt_args)
        th = theta.clone()
        st = o.init(th)
        for part, tensors in state.items():
            for key, t in tensors.items():
                if key in st.get(part, {}):
                    st[part][key].copy_(t)
        out[name] = (T, o, th, st)
    return out


def _probe(obj, cfg: dict[str, Any], theta_t: Tensor, theta0: Tensor, lam: np.ndarray, vecs: np.ndarray,
           dense_max: int, seed: int) -> dict[str, Any]:
    from .edge_predict import measure_spectrum, predict

    spec = measure_spectrum(obj, theta_t, dense_max=dense_max, seed=seed)
    p = predict(spec, cfg)
    delta = (theta_t - theta0).detach().to("cpu", torch.float64).numpy()
    return {"lambda_max": spec.top[0], "trace": spec.trace, "trace_pos": spec.trace_pos,
            "n_negative": spec.n_negative, "eta_star": p.eta, "eta_star_lo": p.lo, "eta_star_hi": p.hi,
            "path": p.method, "displacement": displacement_shares(delta, lam, vecs), "seconds": spec.seconds}


def _blown(losses: Tensor, thresholds: np.ndarray) -> np.ndarray:
    x = losses.detach().to("cpu", torch.float64).numpy()
    return ~np.isfinite(x)[None, :] | (x[None, :] > thresholds)


def surrogate_task(run_path: str, ckpt_path: str, lr: float, seeds: int = 8, horizon: int = 640,
                   factors: tuple[float, ...] = FACTORS, seed: int = 12345, probe_steps=PROBE_STEPS,
                   dense_max: int | None = None, record_every: int = 4, leave_ratio: float = 0.5,
                   snap_every: int = 10, threads: int | None = None) -> dict[str, Any]:
    """The network and its two Taylor surrogates from θ_N at step size `lr`, in lockstep (see the module doc)."""
    from ..curvature.dense import dense_hessian_chunked
    from .edge_predict import DENSE_MAX

    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    dense_max = DENSE_MAX if dense_max is None else dense_max
    factors = tuple(sorted(float(f) for f in factors))
    setup, opt, theta0, theta, state, step0, opt_args = load_start(run_path, ckpt_path, lr, seeds, seed,
                                                                   with_args=True)
    obj, cfg = setup.objective, setup.config.to_dict()
    H = dense_hessian_chunked(obj, theta0)
    lam, vecs = np.linalg.eigh(H)
    models = {"network": (obj, opt, theta, state), **_surrogates(setup, opt_args, theta0, theta, state, H, lam, vecs)}
    loss0 = float(obj.evaluate(theta0)[0])
    thr = np.asarray(factors)[:, None] * loss0
    tau = {m: np.full((len(factors), seeds), -1, dtype=int) for m in models}
    leave = {m: np.full(seeds, -1, dtype=int) for m in models if m != "network"}
    traj: dict[str, list] = {m: [] for m in models}
    probes, snaps, t = [], [], 0
    for t in range(horizon + 1):
        if t in set(probe_steps) and tau["network"][-1, 0] < 0:
            probes.append({"step": t, **_probe(obj, cfg, theta[0], theta0, lam, vecs, dense_max, seed)})
        if t % snap_every == 0:
            snaps.append((t, theta[0].clone()))
        for m, (o_obj, o, th, st) in models.items():
            losses = step_losses(o.step(o_obj, th, st, step0 + t), o_obj, th) if t < horizon else o_obj.evaluate(th)[0]
            tau[m] = np.where((tau[m] < 0) & _blown(losses, thr), t, tau[m])
            if t % record_every == 0:
                traj[m].append([float(x) for x in losses.to("cpu", torch.float64)])
        dn = (theta - theta0).norm(dim=-1)
        for m in leave:
            ds = (theta - models[m][2]).norm(dim=-1)
            off = ((ds > leave_ratio * dn) & (dn > 0)).cpu().numpy()
            leave[m] = np.where((leave[m] < 0) & off, t + 1, leave[m])
        if all((v[-1] >= 0).all() for v in tau.values()):
            break
    pre = _pre_blowup_probe(obj, cfg, snaps, int(tau["network"][0, 0]), theta0, lam, vecs, dense_max, seed)
    return {"lr": float(lr), "seeds": seeds, "horizon": horizon, "factors": list(factors), "loss0": loss0,
            "steps_run": t, "record_every": record_every, "leave_ratio": leave_ratio,
            "tau": {m: {f"{f:g}": [int(x) if x >= 0 else None for x in v[i]] for i, f in enumerate(factors)}
                    for m, v in tau.items()},
            "leave": {m: [int(x) if x >= 0 else None for x in v] for m, v in leave.items()},
            "losses": traj, "probes": probes, "pre_blowup_probe": pre, "seconds": time.perf_counter() - t0}


def _pre_blowup_probe(obj, cfg, snaps, tau0: int, theta0, lam, vecs, dense_max, seed) -> dict[str, Any] | None:
    """Probe seed 0 at its last snapshot before it blew up (factor min(factors)); None if it never did."""
    if tau0 < 0:
        return None
    before = [(t, th) for t, th in snaps if t < tau0]
    if not before:
        return None
    t, th = before[-1]
    return {"step": t, "tau": tau0, **_probe(obj, cfg, th, theta0, lam, vecs, dense_max, seed)}
