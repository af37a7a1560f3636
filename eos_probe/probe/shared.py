"""Work shared between probe metrics: one Lanczos run and one deflated probe set per operator and probe.

* **Lanczos** (``lanczos/<op>``): one warm-started run per operator feeds ``lambda_max`` (its top Ritz pair),
  ``top_k`` (the top k) and ``ms_margin`` / the ``krylov`` trace (the top Ritz pairs, taken exactly). It runs
  with the union of what its users ask for: k = the largest k, tol = the smallest tol, max_iter = the largest.
* **Deflated rest** (``rest/<op>``): one set of projected Rademacher probes on A = P⊥ H P⊥ (P⊥ removes those
  Ritz vectors) with a short Lanczos tridiagonal per probe (``curvature.deflated``). Its first coefficient
  per probe is a Hutchinson sample of Tr A, so the ``krylov`` trace is free where ``ms_margin`` runs; the
  whole quadrature gives Tr f(A) for the rest of S(η) and the negative-curvature mass. Probes and steps are
  the union too (the largest of each).

HVP attribution (``/probe`` attribute ``nhvp_attribution``): a shared quantity's products are counted once,
in the ``*_nhvp`` column of the first metric (in registration order: lambda_max, top_k, trace, ms_margin, …)
that uses it; later users add 0. Summing the ``*_nhvp`` columns of a row gives ``/probe/nhvp``, the products
the whole probe spent. Because the shared runs use the union of the options, a metric's value can depend on
which other metrics run (more probes, a larger k); the resolved options are stored in the ``/probe``
attribute ``shared_options``.
"""
from __future__ import annotations

from typing import Any

import torch

NHVP_ATTRIBUTION = ("shared products counted once: a Lanczos run or deflated probe set shared by several "
                    "metrics is charged to the first of them in registration order (lambda_max, top_k, trace, "
                    "ms_margin, ...), later users log 0; the *_nhvp columns of a row sum to /probe/nhvp")

#: Lanczos options when no metric on the operator states them (ms_margin / krylov trace alone)
LANCZOS_DEFAULTS = {"k": 1, "tol": 1e-3, "max_iter": 100}


def lanczos_options(metrics: list, which: str) -> dict[str, Any]:
    """The union of the Lanczos needs of the metrics on operator `which` (k, tol, max_iter)."""
    ks, tols, iters = [], [], []
    for m in metrics:
        if getattr(m, "operator", None) != which:
            continue
        need = getattr(m, "lanczos_need", None)
        if need is None:
            continue
        n = need()
        if n is None:
            continue
        ks.append(n.get("k", 1))
        if "tol" in n:
            tols.append(n["tol"])
        if "max_iter" in n:
            iters.append(n["max_iter"])
    if not ks:
        return dict(LANCZOS_DEFAULTS)
    return {"k": max(ks), "tol": min(tols) if tols else LANCZOS_DEFAULTS["tol"],
            "max_iter": max(iters) if iters else LANCZOS_DEFAULTS["max_iter"]}


def rest_options(metrics: list, which: str) -> dict[str, int]:
    """The union of the deflated-probe needs (n_probes, n_steps) of the metrics on operator `which`."""
    probes, steps = [2], [1]
    for m in metrics:
        if getattr(m, "operator", None) != which:
            continue
        need = getattr(m, "rest_need", None)
        n = need() if need is not None else None
        if n:
            probes.append(n.get("n_probes", 2))
            steps.append(n.get("n_steps", 1))
    return {"n_probes": max(probes), "n_steps": max(steps)}


def shared_lanczos(ctx, which: str):
    """(Estimate, computed_now): the top-k Lanczos run on operator `which` at this probe step."""
    from ..curvature import top_k

    key = f"lanczos/{which}"

    def make():
        o = lanczos_options(ctx.probe.metrics, which)
        op = ctx.operator(which)
        k = min(o["k"], op.dim)
        v0 = ctx.probe.warm_start(key, op)
        est = top_k(op, k, tol=o["tol"], v0=v0, max_iter=max(o["max_iter"], k), generator=ctx.generator(key))
        vecs = est.extra.get("vectors")
        if vecs is not None:
            # one start vector with weight on every previous top direction (Lanczos adds a random part)
            ctx.probe.warm[key] = torch.as_tensor(vecs).sum(0).detach().reshape(-1).to("cpu", copy=True)
        return est

    return ctx.shared(key, make)


def shared_rest(ctx, which: str):
    """(RestQuadrature, computed_now) of the operator deflated by the shared Lanczos run's Ritz vectors.

    Nothing is deflated when the run did not converge: an unconverged Ritz vector is not near-invariant,
    and the split Tr f(H) = Σ f(θ_i) + Tr f(A) needs that.
    """
    from ..curvature.deflated import rest_quadrature

    key = f"rest/{which}"

    def make():
        est, _ = shared_lanczos(ctx, which)
        V = ritz_block(est)[1]
        o = rest_options(ctx.probe.metrics, which)
        return rest_quadrature(ctx.operator(which), V, o["n_probes"], o["n_steps"], generator=ctx.generator(key),
                               control=control_pairs(est))

    return ctx.shared(key, make)


def control_pairs(est):
    """(θ, Y) of the Lanczos run's Ritz pairs not taken exactly, the control variates of the deflated probes:
    the tail pairs after the top k, and the top k too when the run did not converge (then nothing is
    deflated, and they are the largest terms of every probe)."""
    import numpy as np

    tail_v, tail_y = est.extra.get("tail_values"), est.extra.get("tail_vectors")
    if tail_v is None:
        return None
    if est.converged:
        return np.asarray(tail_v, dtype=float), tail_y
    top = np.atleast_1d(np.asarray(est.value, dtype=float))
    return np.concatenate([top, tail_v]), torch.cat([torch.as_tensor(est.extra["vectors"]).to(tail_y), tail_y])


def ritz_block(est):
    """(values, vectors, errors) of the Ritz pairs taken exactly: all k when the run converged (residual and
    gap check), none otherwise (then the quadrature samples the whole operator: noisier, still unbiased)."""
    import numpy as np

    theta = np.atleast_1d(np.asarray(est.value, dtype=float))
    err = np.atleast_1d(np.asarray(est.error, dtype=float))
    n = theta.shape[0] if est.converged else 0
    return theta[:n], est.extra["vectors"][:n], err[:n]
