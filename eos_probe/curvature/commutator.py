"""Matrix-free commutator ratio (docs/theory.md §3) and directional curvature."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidValueError
from ._probes import default_generator, rademacher
from .estimate import Estimate
from .operators import CurvatureOperator

__all__ = ["commutator_ratio", "directional_curvature"]


def commutator_ratio(H: CurvatureOperator, p: Tensor, n_probes: int = 8,
                     generator: torch.Generator | None = None) -> Estimate:
    """r = ‖PH − HP‖_F / ‖PH‖_F for P = diag(p), by randomized Frobenius norms (two products per probe).

    With Rademacher z, ‖A‖_F² = E‖Az‖²: num_z = ‖P(Hz) − H(Pz)‖², den_z = ‖P(Hz)‖². r = √(mean num / mean den);
    its standard error is the delta-method error of that ratio of means. ``extra``: "num", "den" samples.

    Theory: [docs/theory.md#commutator-ratio][commutator-ratio].
    """
    if n_probes < 2:
        raise InvalidValueError(f"commutator_ratio needs at least 2 probes for a standard error, got {n_probes}")
    p = torch.as_tensor(p).reshape(-1).to(device=H.device, dtype=H.dtype)
    if p.shape[0] != H.dim:
        raise InvalidValueError(f"preconditioner has {p.shape[0]} entries but the Hessian has dimension {H.dim}")
    gen = default_generator(generator)
    n0 = H.n_hvp
    Z = rademacher(n_probes, H.dim, gen, H.dtype, H.device)
    HZ = H.matmat(torch.cat([Z, Z * p]))
    PHz, HPz = HZ[:n_probes] * p, HZ[n_probes:]
    num = ((PHz - HPz) ** 2).sum(1).double().cpu().numpy()
    den = (PHz**2).sum(1).double().cpu().numpy()
    mn, md = num.mean(), den.mean()
    if md <= 0:
        raise InvalidValueError("‖PH‖_F is zero (zero Hessian or zero preconditioner): the commutator ratio is undefined")
    r = math.sqrt(max(mn, 0.0) / md)
    # delta method for sqrt(mean num / mean den) with correlated samples
    c = np.cov(np.stack([num, den]), ddof=1) / n_probes
    if mn > 0:
        var_ratio = (mn / md) ** 2 * (c[0, 0] / mn**2 + c[1, 1] / md**2 - 2 * c[0, 1] / (mn * md))
        se = 0.5 * math.sqrt(max(var_ratio, 0.0)) / r
    else:
        se = 0.0
    return Estimate(value=r, error=float(se), n_hvp=H.n_hvp - n0, extra={"num": num, "den": den})


def directional_curvature(op: CurvatureOperator, g: Tensor) -> Estimate:
    """gᵀHg / ‖g‖² for a step direction g (one product); docs/theory.md §5 compares it with Tr(H)/d.

    Theory: [docs/theory.md#metric-dir_curvature][metric-dir_curvature].
    """
    g = torch.as_tensor(g).reshape(-1).to(device=op.device, dtype=op.dtype)
    nn = float(g @ g)
    if not nn > 0:
        raise InvalidValueError("directional curvature of a zero direction is undefined")
    n0 = op.n_hvp
    value = float(g @ op.matvec(g)) / nn
    return Estimate(value=value, error=0.0, n_hvp=op.n_hvp - n0)
