"""Exact linear stability of coherent coordinate descent (CoCD) on a quadratic — docs/theory.md §5d. numpy only.

CoCD keeps a buffer G of per-coordinate derivative estimates. Step t refreshes block k = t mod K of the
fixed partition of the flattened coordinates into K = ⌈d/B⌉ contiguous blocks of B (the last one holds
d − (K−1)B), by central differences at the current θ; every other entry decays by γ; then
θ ← θ − α(G + w θ) (w = weight decay). With a memory budget m (B ≤ m < d) only the m most recently
refreshed coordinates (cyclically, ending with the current block) are kept; the others are set to 0.

On ``L = ½ θᵀHθ`` the central difference is exact, so with x_t = (θ_t, G_{t−1})

    G_t = W_t [S_t H θ_t + γ (I − S_t) G_{t−1}],     θ_{t+1} = (1 − αw) θ_t − α G_t

(S_t selects block t, W_t the kept coordinates): a linear system with period K. It is stable iff the
spectral radius of the monodromy Φ = M_{K−1}⋯M_0 is < 1. The exact threshold α*(H, B, γ) is the first
step size at which ρ(Φ) reaches 1 (it depends on H's eigenvectors, not only its spectrum).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidValueError
from ..presets import OPTIONS

#: above this d the monodromy is applied matrix-free and ρ(Φ) comes from ARPACK instead of a dense eig
DENSE_EIG_MAX = 400


@dataclass(frozen=True)
class CoCDSchedule:
    """The block partition and memory window of CoCD on d coordinates."""

    dim: int
    block: int
    gamma: float
    memory: int | None = None
    weight_decay: float = 0.0

    @property
    def period(self) -> int:
        """K = ⌈d/B⌉ steps per cycle."""
        return -(-self.dim // self.block)

    def bounds(self, k: int) -> tuple[int, int]:
        """[start, stop) of block k."""
        start = (k % self.period) * self.block
        return start, min(start + self.block, self.dim)

    def stale(self, k: int) -> np.ndarray | None:
        """Indices outside the memory window after refreshing block k (None without a budget)."""
        if self.memory is None:
            return None
        stop = self.bounds(k)[1]
        return (stop + np.arange(self.dim - self.memory)) % self.dim

    def ages(self, k: int) -> np.ndarray:
        """Steps since each coordinate was refreshed, after refreshing block k (0 on block k)."""
        block_of = np.minimum(np.arange(self.dim) // self.block, self.period - 1)
        return (k % self.period - block_of) % self.period


def schedule(dim: int, block: int, gamma: float, memory: int | None = None,
             weight_decay: float = 0.0) -> CoCDSchedule:
    """Validate CoCD hyper-parameters against d (one :class:`InvalidValueError` line per mistake)."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise InvalidValueError(f"dimension must be a positive integer, got {dim!r}")
    OPTIONS["cocd_block"].check(int(block) if isinstance(block, np.integer) else block)
    if block > dim:
        raise InvalidValueError(f"CoCD block size B = {block} exceeds the number of parameters d = {dim}")
    OPTIONS["cocd_gamma"].check(float(gamma) if isinstance(gamma, np.floating) else gamma)
    if memory is not None:
        OPTIONS["cocd_memory"].check(int(memory) if isinstance(memory, np.integer) else memory)
        if not (block <= memory < dim):
            raise InvalidValueError(f"CoCD memory budget m = {memory} must satisfy B = {block} <= m < d = {dim} "
                            "(omit it to keep every estimate)")
    OPTIONS["weight_decay"].check(weight_decay)
    return CoCDSchedule(int(dim), int(block), float(gamma), None if memory is None else int(memory),
                        float(weight_decay))


def _check_hessian(H) -> np.ndarray:
    H = np.asarray(H, dtype=float)
    if H.ndim != 2 or H.shape[0] != H.shape[1] or H.shape[0] == 0:
        raise InvalidValueError(f"the Hessian must be a square matrix, got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        raise InvalidValueError("the Hessian contains NaN or inf")
    return 0.5 * (H + H.T)


def _apply_cycle(H: np.ndarray, lr: float, s: CoCDSchedule, X: np.ndarray) -> np.ndarray:
    """Φ X for X of shape (2d, n): one cycle of the periodic map applied to n state vectors."""
    d = s.dim
    th, G = X[:d].copy(), X[d:].copy()
    shrink = 1.0 - lr * s.weight_decay
    for k in range(s.period):
        a, b = s.bounds(k)
        if s.gamma != 1.0:
            G *= s.gamma
        G[a:b] = H[a:b] @ th
        stale = s.stale(k)
        if stale is not None:
            G[stale] = 0.0
        if shrink != 1.0:
            th *= shrink
        th -= lr * G
    return np.concatenate([th, G])


def monodromy(H, lr: float, block: int, gamma: float, *, memory: int | None = None,
              weight_decay: float = 0.0) -> np.ndarray:
    """The dense (2d × 2d) one-cycle map Φ of CoCD on ``½θᵀHθ``, acting on (θ, G) at a cycle start.

    Theory: [docs/theory.md#cocd][cocd].
    """
    H = _check_hessian(H)
    s = schedule(H.shape[0], block, gamma, memory, weight_decay)
    return _apply_cycle(H, float(lr), s, np.eye(2 * s.dim))


def spectral_radius(H, lr: float, block: int, gamma: float, *, memory: int | None = None,
                    weight_decay: float = 0.0, method: str = "auto") -> float:
    """ρ(Φ): dense eigenvalues for d ≤ DENSE_EIG_MAX (or method='dense'), else ARPACK on the matrix-free Φ.

    Theory: [docs/theory.md#cocd][cocd].
    """
    H = _check_hessian(H)
    s = schedule(H.shape[0], block, gamma, memory, weight_decay)
    return _radius(H, float(lr), s, method)


def _radius(H: np.ndarray, lr: float, s: CoCDSchedule, method: str = "auto", v0: np.ndarray | None = None) -> float:
    if method not in ("auto", "dense", "arpack"):
        raise InvalidValueError(f"method must be auto, dense or arpack, got {method!r}")
    if method == "dense" or (method == "auto" and s.dim <= DENSE_EIG_MAX):
        phi = _apply_cycle(H, lr, s, np.eye(2 * s.dim))
        return float(np.max(np.abs(np.linalg.eigvals(phi))))
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

    n = 2 * s.dim
    op = LinearOperator((n, n), matvec=lambda v: _apply_cycle(H, lr, s, v.reshape(n, 1)).ravel(), dtype=float)
    try:
        vals = eigs(op, k=4, which="LM", tol=1e-7, maxiter=300, ncv=min(n - 1, 80), v0=v0,
                    return_eigenvectors=False)
    except ArpackNoConvergence as e:  # keep what converged; NaN (undecided) otherwise
        vals = e.eigenvalues
        if vals is None or len(vals) == 0:
            return math.nan
    return float(np.max(np.abs(vals)))


def critical_lr(H, block: int, gamma: float, *, memory: int | None = None, weight_decay: float = 0.0,
                rtol: float = 1e-4, grid: int = 24, method: str = "auto", guess: float | None = None) -> float:
    """The exact CoCD threshold α*(H, B, γ): the first step size where ρ(Φ) reaches 1.

    A scan of ``grid`` step sizes up to an upper bracket finds the first unstable one, then bisection
    narrows it to ``rtol``. (A stable window narrower than the grid spacing before the first crossing
    would be missed; CoCD's ρ(α) has shown none in tests.) ``inf`` if H has no positive curvature; 0 if
    H has a negative eigenvalue (every step size is unstable). With ``guess`` (e.g. the previous probe's
    α*), a bracket [0.9, 1.1]·guess that is stable at its left end and unstable at its right is bisected
    directly (a crossing below 0.9·guess would then be missed); otherwise the full scan runs.

    Theory: [docs/theory.md#cocd][cocd].
    """
    H = _check_hessian(H)
    s = schedule(H.shape[0], block, gamma, memory, weight_decay)
    lam = np.linalg.eigvalsh(H) if s.dim <= 4 * DENSE_EIG_MAX else None
    if lam is not None and lam[0] < -1e-12 * max(abs(lam[-1]), 1e-300):
        return 0.0
    lmax = float(lam[-1]) if lam is not None else float(np.max(np.abs(np.diag(H))))
    if lmax <= 0:
        return math.inf
    def stable(a: float) -> bool:
        r = _radius(H, a, s, method)
        if math.isnan(r):
            raise ArithmeticError(f"the monodromy's spectral radius did not converge at lr = {a:g}")
        return r < 1.0

    if guess is not None and math.isfinite(guess) and guess > 0:
        lo, hi = 0.9 * guess, 1.1 * guess
        if stable(lo) and not stable(hi):
            return _bisect(stable, lo, hi, rtol)
    # brackets: B = d is gradient descent (α* = 2/λ_max); coordinate steps are bounded by the diagonal
    dmax = float(np.max(np.diag(H)))
    hi = 4.0 / max(min(lmax, dmax), 1e-300)
    while stable(hi):
        hi *= 2.0
        if hi * lmax > 1e6:
            return math.inf
    lo = 0.0
    while True:  # the first unstable point of a linear grid, refined while the crossing is in its first cell
        grid_pts = np.linspace(hi / grid, hi, grid)
        first = next(i for i, a in enumerate(grid_pts) if not stable(float(a)))
        if first > 0:
            lo, hi = float(grid_pts[first - 1]), float(grid_pts[first])
            break
        hi = float(grid_pts[0])
        if hi * lmax < 1e-8:
            return 0.0
    return _bisect(stable, lo, hi, rtol)


def _bisect(stable, lo: float, hi: float, rtol: float) -> float:
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if stable(mid):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def staleness_bound(lambda_max: float, dim: int, block: int) -> float:
    """The paper's sufficient condition α < 2/(L(1 + dτ)), τ = d/B − 1, with L = λ_max (docs/theory.md §5d).

    Theory: [docs/theory.md#cocd][cocd].
    """
    tau = dim / block - 1.0
    return 2.0 / (lambda_max * (1.0 + dim * tau))


def random_rotation(d: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal d×d matrix (QR of a Gaussian matrix with the sign fix)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))
