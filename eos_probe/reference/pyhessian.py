"""PyHessian (Yao et al. 2020, ``pip install pyhessian``) on the same model, data and loss as an Objective.

A thin adapter: the model is copied with θ loaded (the caller's module is never touched), the loss is the
objective's `Loss` as a criterion (`Loss.criterion`), and PyHessian's power iteration and Hutchinson trace run as
PyHessian ships them. Their Hessian-vector products are counted by wrapping PyHessian's own HVP function.
PyHessian draws its random vectors from torch's global generator in the default dtype; the adapter seeds a
forked generator and sets the default dtype to the model's, so runs are reproducible and float64 works.

Not adapted: ``hessian.density()`` calls ``torch.eig``, removed from torch 2.x (check SLQ densities against
dense eigendecompositions instead). PyHessian's stopping rules stop when the running value changes by less
than ``tol`` between iterations, which does not control the error (an anti-pattern: an error bar
must bound or estimate the error, docs/theory.md §4); the adapter reports the standard error of its trace samples alongside.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from ..curvature.estimate import Estimate
from ..errors import UserError

__all__ = ["PyHessianReference", "pyhessian_available"]


def pyhessian_available() -> bool:
    """Whether the ``pyhessian`` package can be imported."""
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        return False
    return True


class PyHessianReference:
    """λ_max, top-k and trace of the objective's Hessian at θ, computed by PyHessian (full batch)."""

    def __init__(self, objective, theta: Tensor) -> None:
        if not pyhessian_available():
            raise UserError("the reference back end needs PyHessian: pip install --no-deps pyhessian==0.1")
        from pyhessian import hessian as _pyh  # noqa: F401  (import checked above)

        self.objective = objective
        self.model = copy.deepcopy(objective.model)
        with torch.no_grad():
            params = objective.space.unflatten(theta.detach())
            for name, p in self.model.named_parameters():
                p.copy_(params[name])
        self.criterion = objective.loss_spec.criterion()  # the same convention, as a batch-mean criterion
        self.device = theta.device
        self.dtype = theta.dtype
        self._hessian = None
        self.n_hvp = 0

    @contextlib.contextmanager
    def _session(self, seed: int) -> Iterator[object]:
        # the package's __init__ rebinds `pyhessian.hessian` to the class; fetch the module itself
        mod = importlib.import_module("pyhessian.hessian")
        original = mod.hessian_vector_product

        def counted(gradsH, params, v):
            self.n_hvp += 1
            return original(gradsH, params, v)

        old_dtype = torch.get_default_dtype()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            torch.manual_seed(seed)
            torch.set_default_dtype(self.dtype)
            mod.hessian_vector_product = counted
            try:
                warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
                if self._hessian is None:
                    # builds the gradient graph once (one forward/backward pass, not counted as an HVP)
                    self._hessian = mod.hessian(self.model, self.criterion,
                                                data=(self.objective.x, self.objective.y),
                                                cuda=self.device.type == "cuda")
                yield self._hessian
            finally:
                mod.hessian_vector_product = original
                torch.set_default_dtype(old_dtype)

    def close(self) -> None:
        """Drop PyHessian's gradient graph (it lives in the copied model's .grad fields)."""
        self._hessian = None
        for p in self.model.parameters():
            p.grad = None

    def top_k(self, k: int = 1, tol: float = 1e-3, max_iter: int = 100, seed: int = 0) -> Estimate:
        """PyHessian's deflated power iteration; ``error`` is the Ritz residual ‖Hv − λv‖ of each result."""
        n0 = self.n_hvp
        with self._session(seed) as h:
            values, vectors = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
            flat = [torch.cat([t.reshape(-1) for t in vec]).detach() for vec in vectors]
        n_hvp = self.n_hvp - n0
        # residuals cost k extra products, not charged to PyHessian's count
        res = []
        hvp = self.objective.hvp_at(torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]))
        for lam, v in zip(values, flat):
            v = v / v.norm()
            res.append(float((hvp.matvec(v) - lam * v).norm()))
        return Estimate(value=np.array(values, dtype=float), error=np.array(res), n_hvp=n_hvp,
                        converged=n_hvp < k * max_iter, extra={"vectors": torch.stack(flat)})

    def lambda_max(self, tol: float = 1e-3, max_iter: int = 100, seed: int = 0) -> Estimate:
        """PyHessian's power iteration for the top eigenvalue (largest in magnitude, as PyHessian does)."""
        est = self.top_k(1, tol=tol, max_iter=max_iter, seed=seed)
        return Estimate(value=float(est.value[0]), error=float(est.error[0]), n_hvp=est.n_hvp,
                        converged=est.converged, extra={"vector": est.extra["vectors"][0]})

    def trace(self, tol: float = 1e-3, max_iter: int = 100, seed: int = 0) -> Estimate:
        """PyHessian's Hutchinson trace (Rademacher probes, its own stopping rule) with the samples' s.e."""
        n0 = self.n_hvp
        with self._session(seed) as h:
            samples = np.asarray(h.trace(maxIter=max_iter, tol=tol), dtype=float)
        n = samples.shape[0]
        se = float(samples.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
        return Estimate(value=float(samples.mean()), error=se, n_hvp=self.n_hvp - n0,
                        converged=n < max_iter, extra={"samples": samples})
