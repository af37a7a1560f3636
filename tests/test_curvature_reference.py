"""Cross-check against PyHessian on the same model, data and loss (skipped when pyhessian is absent)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eos_probe.curvature import HessianOperator, lambda_max, trace
from eos_probe.reference import PyHessianReference, pyhessian_available

pytestmark = pytest.mark.skipif(not pyhessian_available(), reason="pyhessian not installed "
                                "(pip install --no-deps pyhessian==0.1)")


@pytest.mark.parametrize("name,loss", [("mlp", "mse"), ("cnn", "ce"), ("lstm", "ce")])
def test_pyhessian_agrees_with_eos_probe_and_dense_truth(name, loss):
    from .test_curvature_models import _case

    obj, theta, H = _case(name, loss)
    ev = torch.linalg.eigvalsh(H).numpy()
    top = ev[np.argmax(np.abs(ev))]  # power iteration finds the largest |λ|
    exact_trace = float(torch.trace(H))
    ref = PyHessianReference(obj, theta)
    try:
        ph = ref.lambda_max(tol=1e-9, max_iter=2000)
        ours = lambda_max(HessianOperator(obj, theta), tol=1e-9, max_iter=obj.dim)
        assert ph.n_hvp > 0 and ours.converged
        assert abs(ph.value - top) <= 1e-4 * abs(top) + ph.error
        assert abs(ours.value - ev[-1]) <= 1e-6 * abs(ev[-1])
        if top > 0:
            assert abs(ph.value - ours.value) <= 1e-4 * abs(top) + ph.error + ours.error

        ph_tr = ref.trace(tol=1e-12, max_iter=80, seed=1)  # run to the cap: 80 probes
        assert ph_tr.n_hvp == 80 and len(ph_tr.extra["samples"]) == 80
        our_tr = trace(HessianOperator(obj, theta), "hutchinson", n_matvec=80,
                       generator=torch.Generator().manual_seed(1))
        for est in (ph_tr, our_tr):
            assert abs(est.value - exact_trace) < 4 * est.error
        assert abs(ph_tr.value - our_tr.value) < 4 * math.hypot(ph_tr.error, our_tr.error)
    finally:
        ref.close()


def test_adapter_leaves_the_callers_model_untouched():
    from .test_curvature_models import _case

    obj, theta, _ = _case("mlp")
    before = {k: v.clone() for k, v in obj.model.state_dict().items()}
    ref = PyHessianReference(obj, theta + 0.1)
    ref.lambda_max(tol=1e-3, max_iter=20)
    ref.close()
    for k, v in obj.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in obj.model.parameters())
