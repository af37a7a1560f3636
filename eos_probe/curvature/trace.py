"""Stochastic trace estimators with standard errors: Hutchinson, Hutch++, deflation, Gauss–Newton + residual.

All estimators are unbiased; ``error`` is one standard error of the estimate (sample standard deviation
of the per-probe values over √n), widened by the Student-t factor √(ν/(ν−2)) of its ν degrees of freedom
so that (estimate − truth)/error has unit variance even with few probes (see ``t_factor``). With ``rtol``
a pilot of ``MIN_PROBES`` probes fixes the total count once (Stein's two-stage rule, at most the
``n_matvec`` budget) and the rest is drawn without further peeking, so the stop does not bias the error
bar; ``converged`` says whether rtol was met.

* ``hutchinson``: Tr H ≈ mean zᵀHz over Rademacher z. Its variance is 2 Σ_{i≠j} H_ij² per probe.
* ``hutch++`` (Meyer, Musco, Musco & Woodruff 2021): a third of the budget sketches the range of H
  (Q = orth(H S)), Tr(QᵀHQ) is computed exactly, Hutchinson handles the complement (I − QQᵀ)H(I − QQᵀ).
* ``deflate=`` a top_k / lambda_max Estimate of the same operator: Tr H = Σ θ_i (the Ritz values are the
  Rayleigh quotients of the Ritz vectors, so no extra product) + Hutchinson on the complement of the
  Ritz vectors. Combines with both methods above.
* ``ggn+residual``: Tr G exactly from per-example output Jacobians (see ``ggn.py``) plus Hutchinson on
  R = H − G (one Hessian-vector product and one forward-mode product per probe). R vanishes at an exact
  fit and is zero-mean across examples near one, so its probes have far smaller spread than H's.

Stratification by layers (``blocks=``, default "layers" for ggn+residual): Tr H = Σ_b Tr H_bb over a
partition of the parameters, each term estimated with probes supported on its block only, so the
cross-layer entries — the bulk of a network Hessian's off-diagonal mass at initialisation, and all of the
residual R's largest entries — add no variance. After a pilot of ``PILOT`` probes per block, each new probe
goes to the block with the largest expected variance reduction (Neyman allocation);
error² = Σ_b s_b²/n_b. "layers" groups the parameter tensors by module and deals the modules round-robin
(in registration order) into at most ``MAX_STRATA`` blocks, so neighbouring layers — the most strongly
coupled — land in different blocks.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidValueError
from ._probes import default_generator, rademacher
from .estimate import Estimate
from .operators import CurvatureOperator, HessianOperator

__all__ = ["trace", "METHODS"]

METHODS = ("hutchinson", "hutch++", "ggn+residual")
#: fewest probes behind a standard error used to stop adaptively (fewer make the error itself unreliable)
MIN_PROBES = 10
#: probes per batched product
BLOCK = 8
#: probes per stratum before the allocation starts, and the most strata "layers" makes
PILOT = 3
MAX_STRATA = 8


def t_factor(dof: float) -> float:
    """√(ν/(ν−2)): the standard deviation of a Student-t with ν degrees of freedom.

    A standard error from n probes is itself noisy, so (estimate − truth)/se is t-distributed with n − 1
    degrees of freedom, not normal; with few probes its spread is far above 1 (ν = 3: √3). Reporting
    se·t_factor makes the error bar a true one-sigma width (rms z = 1) at any probe count. ν ≤ 2 has no
    finite variance: there the factor matches the ±2σ coverage instead (t quantile 0.977 / 2).
    """
    if not dof > 0:
        return math.inf
    if dof <= 2:
        from scipy.stats import t

        return float(t.ppf(0.97725, dof)) / 2.0
    return math.sqrt(dof / (dof - 2.0))


def _stats(samples: np.ndarray) -> tuple[float, float]:
    """Mean and its small-sample-corrected standard error (se · t_factor(n − 1))."""
    n = samples.shape[0]
    mean = float(samples.mean())
    if n < 2:
        return mean, float("inf")
    se = float(samples.std(ddof=1) / math.sqrt(n))
    return mean, se * t_factor(n - 1) if se > 0 else 0.0


def _two_stage_total(n_pilot: int, se: float, mean: float, rtol: float, n_max: int) -> int:
    """Stein's two-stage rule: the total probe count that the pilot's standard error says meets rtol.

    Decided once, from the pilot alone, then drawn without looking again: sequential "stop when se ≤ rtol"
    stops preferentially on draws whose se came out small, which biases the reported error bar low (rms z
    1.3–2.1 measured); a single decision from an independent pilot does not condition the rest on it.
    """
    target = rtol * abs(mean)
    if not target > 0 or not math.isfinite(se):
        return n_max
    return int(min(n_max, max(n_pilot, math.ceil(n_pilot * (se / target) ** 2))))


def _hutchinson_loop(sample_block, n_max: int, rtol: float | None, offset: float) -> tuple[np.ndarray, bool]:
    """Draw n_max probes, or with rtol a pilot of MIN_PROBES and then the two-stage total at once."""
    samples: list[float] = []

    def draw(n: int) -> None:
        while len(samples) < n:
            samples.extend(sample_block(min(BLOCK, n - len(samples))).tolist())

    if rtol is None:
        draw(n_max)
        return np.asarray(samples, dtype=float), True
    draw(min(MIN_PROBES, n_max))
    mean, se = _stats(np.asarray(samples))
    draw(_two_stage_total(len(samples), se, offset + mean, rtol, n_max))
    arr = np.asarray(samples, dtype=float)
    mean, se = _stats(arr)
    return arr, bool(se <= rtol * abs(offset + mean))


def _project_out(Z: Tensor, Q: Tensor | None) -> Tensor:
    if Q is None or Q.shape[0] == 0:
        return Z
    for _ in range(2):
        Z = Z - (Z @ Q.T) @ Q
    return Z


def _deflation_basis(op: CurvatureOperator, deflate: Estimate | None) -> tuple[Tensor | None, float]:
    if deflate is None:
        return None, 0.0
    V = deflate.extra.get("vectors", deflate.extra.get("vector"))
    if V is None:
        raise InvalidValueError("deflate= needs a top_k or lambda_max Estimate (it carries the eigenvectors)")
    V = torch.as_tensor(V).to(device=op.device, dtype=op.dtype)
    if V.dim() == 1:
        V = V[None]
    if V.shape[1] != op.dim:
        raise InvalidValueError(f"deflation vectors have length {V.shape[1]}, the operator dimension is {op.dim}")
    theta = np.atleast_1d(np.asarray(deflate.value, dtype=float))
    # Ritz vectors are orthonormal; re-orthonormalise anyway so the split Tr = Tr(VᵀHV) + Tr(P⊥HP⊥) is exact
    Q, R = torch.linalg.qr(V.T)
    if not torch.allclose(R.abs(), torch.eye(R.shape[0], dtype=R.dtype, device=R.device), atol=1e-4):
        raise InvalidValueError("deflation vectors are not orthonormal; pass the Estimate returned by top_k/lambda_max")
    return V, float(theta.sum())



def layer_strata(objective, n_strata: int | None = None) -> list[Tensor]:
    """Boolean masks (d,) partitioning the parameters: modules dealt round-robin into ≤ n_strata blocks."""
    modules: list[list[int]] = []
    prefixes: dict[str, int] = {}
    for name, off, shape in zip(objective.space.names, objective.space.offsets, objective.space.shapes):
        prefix = name.rsplit(".", 1)[0] if "." in name else ""
        if prefix not in prefixes:
            prefixes[prefix] = len(modules)
            modules.append([])
        modules[prefixes[prefix]].append((off, off + int(np.prod(shape, dtype=np.int64))))
    n = min(len(modules), n_strata or MAX_STRATA)
    masks = [torch.zeros(objective.dim, dtype=torch.bool) for _ in range(n)]
    for i, ranges in enumerate(modules):
        for a, b in ranges:
            masks[i % n][a:b] = True
    return [m for m in masks if bool(m.any())]


def _resolve_strata(op: CurvatureOperator, blocks, objective, budget: int) -> list[Tensor] | None:
    if blocks is None:
        return None
    if isinstance(blocks, str) and blocks == "layers":
        # as many strata as the budget affords pilots for; a single stratum is plain Hutchinson
        blocks = min(MAX_STRATA, budget // PILOT)
        if blocks < 2:
            return None
    if isinstance(blocks, str) or (isinstance(blocks, int) and not isinstance(blocks, bool)):
        if isinstance(blocks, str) and blocks != "layers":
            raise InvalidValueError(f"unknown blocks {blocks!r}; use 'layers', a number of strata, or a list of masks")
        objective = objective if objective is not None else getattr(op, "objective", None)
        if objective is None:
            raise InvalidValueError("blocks='layers' needs the model's parameter layout: pass a HessianOperator or objective=")
        if isinstance(blocks, int) and blocks < 1:
            raise InvalidValueError(f"the number of strata must be positive, got {blocks}")
        masks = layer_strata(objective, None if isinstance(blocks, str) else blocks)
    else:
        masks = []
        for blk in blocks:
            t = torch.as_tensor(blk)
            if t.dtype != torch.bool:
                m = torch.zeros(op.dim, dtype=torch.bool)
                m[t.long()] = True
                t = m
            masks.append(t.reshape(-1))
        cover = torch.stack(masks).sum(0)
        if cover.shape[0] != op.dim or not bool((cover == 1).all()):
            raise InvalidValueError("blocks must partition the parameters: every index in exactly one block")
    return [m.to(op.device) for m in masks]


def _stratified_se(per: list[np.ndarray]) -> float:
    """√(Σ s_b²/n_b) times the t factor of its Welch–Satterthwaite degrees of freedom (3 pilot probes per
    stratum give each s_b² only 2 degrees of freedom: uncorrected, the error bar is too small)."""
    terms = np.array([x.var(ddof=1) / x.shape[0] for x in per])
    dof = np.array([x.shape[0] - 1 for x in per], dtype=float)
    total = float(terms.sum())
    if not total > 0:
        return 0.0
    nu = total**2 / float((terms**2 / dof).sum())
    return math.sqrt(total) * t_factor(nu)


def _stratified_loop(sample_rows, masks: list[Tensor], n_max: int, rtol: float | None,
                     offset: float) -> tuple[list[np.ndarray], bool]:
    """Pilot then Neyman-greedy allocation of probes over strata; sample_rows(list of stratum ids) → values."""
    S = len(masks)
    if n_max < PILOT * S:
        raise InvalidValueError(f"stratified trace needs n_matvec >= {PILOT * S} ({PILOT} pilot probes for each of "
                        f"{S} blocks), got {n_max}")
    samples: list[list[float]] = [[] for _ in range(S)]

    def draw(ids: list[int]) -> None:
        for start in range(0, len(ids), BLOCK):
            chunk = ids[start:start + BLOCK]
            for b, v in zip(chunk, sample_rows(chunk)):
                samples[b].append(float(v))

    draw([b for b in range(S) for _ in range(PILOT)])

    def state() -> tuple[float, float, np.ndarray, np.ndarray]:
        n = np.array([len(x) for x in samples], dtype=float)
        var = np.array([np.var(x, ddof=1) for x in samples])
        mean = float(sum(np.mean(x) for x in samples))
        return mean, _stratified_se([np.asarray(x) for x in samples]), var, n

    def allocate(m: int, var: np.ndarray, n: np.ndarray) -> list[int]:
        ids = []
        for _ in range(m):  # greedy Neyman: the probe that cuts Σ s_b²/n_b the most
            b = int(np.argmax(var / (n * (n + 1))))
            ids.append(b)
            n[b] += 1
        return ids

    mean, se, var, n = state()
    total = int(n.sum())
    if rtol is None:
        goal = n_max
    else:
        goal = _two_stage_total(total, se, offset + mean, rtol, n_max)
    if goal > total and np.any(var > 0):
        # one allocation from the pilot's variances, drawn without looking again (see _two_stage_total)
        draw(allocate(goal - total, var, n.copy()))
    mean, se, var, n = state()
    met = rtol is None or se <= rtol * abs(offset + mean)
    return [np.asarray(x) for x in samples], met

def trace(op: CurvatureOperator, method: str = "hutchinson", n_matvec: int = 100, rtol: float | None = None,
          deflate: Estimate | None = None, generator: torch.Generator | None = None,
          objective=None, theta: Tensor | None = None, blocks="auto", ggn_path: str = "auto") -> Estimate:
    """Estimate Tr(op) with a standard error (see the module docstring for the methods).

    ``n_matvec`` is the budget of operator products (the cap when ``rtol`` is given). ``objective`` and
    ``theta`` are needed by "ggn+residual" unless ``op`` is a HessianOperator (then they are taken from it).
    ``blocks``: None (plain probes), "layers", a number of strata, or a list of index arrays / boolean
    masks partitioning the parameters; "auto" = "layers" for ggn+residual, None otherwise. Stratification
    combines with hutchinson and ggn+residual, not with hutch++ or deflate.
    ``extra``: "samples" (per-probe values; a list per stratum when stratified), "n_probes", "exact_part"
    (Σθ_i, Tr(QᵀHQ) or Tr G), and for ggn+residual "ggn_seconds", "ggn_path", "n_jvp".

    Theory: [docs/theory.md#metric-trace][metric-trace].
    """
    blocks = _check_trace_args(method, n_matvec, rtol, deflate, blocks)
    gen = default_generator(generator)
    n0 = op.n_hvp
    t0 = time.perf_counter()
    extra: dict = {"method": method}
    n_jvp = [0]
    if method == "ggn+residual":
        quad, objective, exact = _ggn_residual(op, objective, theta, deflate, ggn_path, extra, n_jvp)
        V = None
    else:
        V, exact = _deflation_basis(op, deflate)

        def quad(Z: Tensor) -> np.ndarray:
            return (Z * op.matmat(Z)).sum(1).double().cpu().numpy()

    masks = _resolve_strata(op, blocks, objective, n_matvec)
    budget = n_matvec
    if method == "hutch++":
        V, exact, budget = _hutchpp_sketch(op, V, exact, n_matvec, gen, extra)
    if masks is not None:
        mean, se, met = _stratified_samples(op, quad, masks, budget, rtol, exact, gen, extra)
    else:
        mean, se, met = _plain_samples(op, quad, V, budget, rtol, exact, gen, extra)
    if method == "ggn+residual":
        extra["n_jvp"] = n_jvp[0]
    extra["exact_part"] = exact
    extra["seconds"] = time.perf_counter() - t0
    return Estimate(value=exact + mean, error=se, n_hvp=op.n_hvp - n0, converged=bool(met), extra=extra)


def _check_trace_args(method: str, n_matvec: int, rtol: float | None, deflate, blocks):
    """Refuse bad arguments of `trace`; returns ``blocks`` with "auto" resolved."""
    if method not in METHODS:
        raise InvalidValueError(f"unknown trace method {method!r}; choose one of {', '.join(METHODS)}")
    if n_matvec < 2:
        raise InvalidValueError(f"n_matvec must be at least 2 (a standard error needs two probes), got {n_matvec}")
    if rtol is not None and not rtol > 0:
        raise InvalidValueError(f"rtol must be positive, got {rtol}")
    if isinstance(blocks, str) and blocks == "auto":
        blocks = "layers" if method == "ggn+residual" else None
    if blocks is not None and (method == "hutch++" or deflate is not None):
        raise InvalidValueError("blocks= (stratified probes) does not combine with hutch++ or deflate=; pass blocks=None")
    return blocks


def _ggn_residual(op: CurvatureOperator, objective, theta: Tensor | None, deflate, ggn_path: str, extra: dict,
                  n_jvp: list[int]):
    """(quad, objective, Tr G): the exact Gauss–Newton trace and the probe function zᵀHz − zᵀGz of the rest."""
    if deflate is not None:
        raise InvalidValueError("deflate= does not combine with ggn+residual (the Gauss–Newton part is already exact)")
    objective = objective if objective is not None else getattr(op, "objective", None)
    theta = theta if theta is not None else getattr(op, "theta", None)
    if objective is None or theta is None:
        raise InvalidValueError("ggn+residual needs the objective and θ: pass a HessianOperator or objective=, theta=")
    if not isinstance(op, HessianOperator):
        raise InvalidValueError("ggn+residual applies to the Hessian itself, not to a preconditioned or dense operator")
    from .ggn import ggn_quadratic, ggn_trace

    exact, info = ggn_trace(objective, theta, path=ggn_path)
    extra.update(exact_part=exact, ggn_path=info["path"], ggn_seconds=info["seconds"])

    def quad(Z: Tensor) -> np.ndarray:
        zhz = (Z * op.matmat(Z)).sum(1)
        n_jvp[0] += Z.shape[0]
        return (zhz - ggn_quadratic(objective, theta, Z)).double().cpu().numpy()

    return quad, objective, exact


def _hutchpp_sketch(op: CurvatureOperator, V: Tensor | None, exact: float, n_matvec: int, gen,
                    extra: dict) -> tuple[Tensor, float, int]:
    """Hutch++'s sketch: its range joins the deflation basis V, its trace the exact part; returns the probe budget left."""
    n_sketch = max(1, n_matvec // 3)
    if 2 * n_sketch + 2 > n_matvec:
        raise InvalidValueError(f"hutch++ needs n_matvec >= 5 (sketch, projection and 2 probes), got {n_matvec}")
    S = _project_out(rademacher(n_sketch, op.dim, gen, op.dtype, op.device), V)
    Y = _project_out(op.matmat(S), V)
    Qs, _ = torch.linalg.qr(Y.T)
    Qs = Qs.T.contiguous()
    exact += float((Qs * op.matmat(Qs)).sum())
    V = Qs if V is None else torch.cat([V, Qs])
    extra["sketch_size"] = n_sketch
    return V, exact, n_matvec - 2 * n_sketch


def _stratified_samples(op: CurvatureOperator, quad, masks: list[Tensor], budget: int, rtol: float | None,
                        exact: float, gen, extra: dict) -> tuple[float, float, bool]:
    """(mean, s.e., met) of the probe part from probes stratified over the parameter blocks ``masks``."""
    def rows(ids: list[int]) -> np.ndarray:
        Z = rademacher(len(ids), op.dim, gen, op.dtype, op.device)
        return quad(Z * torch.stack([masks[b] for b in ids]).to(Z.dtype))

    per, met = _stratified_loop(rows, masks, budget, rtol, exact)
    mean = float(sum(x.mean() for x in per))
    se = _stratified_se(per)
    extra.update(samples=per, n_probes=int(sum(x.shape[0] for x in per)),
                 strata_sizes=[int(m.sum()) for m in masks])
    return mean, se, met


def _plain_samples(op: CurvatureOperator, quad, V: Tensor | None, budget: int, rtol: float | None, exact: float,
                   gen, extra: dict) -> tuple[float, float, bool]:
    """(mean, s.e., met) of the probe part from Rademacher probes projected off the basis V."""
    if V is not None and V.shape[0] >= op.dim:
        samples, met = np.zeros(2), True  # the basis spans everything: the exact part is the trace
    else:
        samples, met = _hutchinson_loop(
            lambda m: quad(_project_out(rademacher(m, op.dim, gen, op.dtype, op.device), V)), budget, rtol, exact)
    mean, se = _stats(samples)
    extra.update(samples=samples, n_probes=int(samples.shape[0]))
    return mean, se, met
