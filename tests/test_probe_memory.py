"""The probe's memory budget: curvature work chunked to a budget gives the same numbers as unchunked work
(the independent truth is the unchunked computation and, for the GGN trace, the dense Gauss–Newton matrix),
chunk plans respect the budget, and the budget/cost are reported (`--probe-memory`, `eos-probe bench`)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from eos_probe.bench_probe import measure_probe
from eos_probe.budget import DEFAULT_PROBE_MEMORY, parse_bytes
from eos_probe.cli import main
from eos_probe.config import TrainConfig
from eos_probe.curvature.ggn import _trace_jacobians, ggn_quadratic
from eos_probe.errors import UserError
from eos_probe.objective import MEMORY_FACTORS
from eos_probe.build import build
from eos_probe.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_CNN = {"widths": [2, 4], "hidden": 8}


def _setup(model="cnn", dtype="float64", **kw):
    if model == "mamba":
        cfg = TrainConfig(model="mamba", model_args={"d_model": 8, "layers": 1, "d_state": 4, "expand": 1},
                          data_args={"n_train": 12, "length": 4}, dtype=dtype, device="cpu", **kw)
    else:
        cfg = TrainConfig(model="cnn", model_args=TINY_CNN, n_per_class=5, dtype=dtype, device="cpu", **kw)
    return build(cfg)


def _budget_for(obj, work: str, examples: int, width: int = 1) -> int:
    """A budget that lets `work` take exactly `examples` examples at once."""
    return int(MEMORY_FACTORS[work] * obj.example_bytes * width * (examples + 0.5))


def test_chunk_plans_respect_the_budget() -> None:
    obj = _setup().objective
    assert obj.probe_memory == DEFAULT_PROBE_MEMORY == 2 * 2**30
    assert obj.work_chunks("fwd-rev") is obj.chunks  # small model: the loss's own chunks
    obj.probe_memory = _budget_for(obj, "fwd-rev", 3)
    chunks = obj.work_chunks("fwd-rev")
    assert max(x.shape[0] for x, _ in chunks) <= 3 == obj.max_examples("fwd-rev")
    assert torch.equal(torch.cat([x for x, _ in chunks]), obj.x)  # a partition, in order
    assert obj.rows_per_block("fwd-rev", chunks) == 1


@pytest.mark.parametrize("model", ["cnn", "mamba"])
def test_hvps_under_a_small_budget_equal_the_unchunked_ones(model) -> None:
    s = _setup(model)
    obj, theta = s.objective, s.theta
    V = torch.randn(3, obj.dim, generator=torch.Generator().manual_seed(0), dtype=theta.dtype)
    ref = {b: obj.hvp_at(theta, b).matmat(V) for b in ("fwd-rev", "double-backward")}
    torch.testing.assert_close(ref["fwd-rev"], ref["double-backward"], rtol=1e-9, atol=1e-12)
    obj.probe_memory = _budget_for(obj, "double-backward", 2)  # the whole batch's graphs no longer fit
    for b in ("fwd-rev", "double-backward"):
        op = obj.hvp_at(theta, b)
        if b == "double-backward":
            assert op.streaming and max(x.shape[0] for x, _ in op.chunks) <= 2
        torch.testing.assert_close(op.matmat(V), ref[b], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(op.matvec(V[0]), ref[b][0], rtol=1e-9, atol=1e-12)


def test_ggn_work_under_a_small_budget_equals_the_unchunked_work() -> None:
    s = _setup("mamba")
    obj, theta = s.objective, s.theta
    Z = torch.randn(5, obj.dim, generator=torch.Generator().manual_seed(1), dtype=theta.dtype)
    full_trace, full_quad = float(_trace_jacobians(obj, theta)), ggn_quadratic(obj, theta, Z)
    K = obj.y.shape[1] * obj.num_classes
    obj.probe_memory = _budget_for(obj, "jacobian", 1, K)
    assert obj.max_examples("jacobian", K) == 1
    assert float(_trace_jacobians(obj, theta)) == pytest.approx(full_trace, rel=1e-10)
    obj.probe_memory = _budget_for(obj, "jvp", 2, 2)
    assert len(obj.work_chunks("jvp")) > len(obj.chunks)
    torch.testing.assert_close(ggn_quadratic(obj, theta, Z), full_quad, rtol=1e-9, atol=1e-12)


def test_parse_bytes_and_bad_probe_memory_is_one_line_exit_2(tmp_path, capsys) -> None:
    assert parse_bytes("2GB") == 2 * 2**30 and parse_bytes("512 MB") == 512 * 2**20 and parse_bytes("1.5g") == 3 * 2**29
    for bad in ("lots", "2 parsecs", "1KB", "-3GB"):
        with pytest.raises(UserError):
            parse_bytes(bad)
    with pytest.raises(SystemExit) as e:
        main(["train", "--probe-memory", "lots", "--out", str(tmp_path / "x.h5"), "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "probe memory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


def test_measure_probe_reports_cost_and_memory_and_the_run_prints_its_budget(tmp_path, capsys) -> None:
    s = _setup(dtype="float32", optimizer="zo-gd", probe=["lambda_max:max_iter=5", "trace:n_matvec=6"])
    res = measure_probe(s)
    assert res["probe_metrics"] == ["lambda_max", "trace"]
    assert res["probe_forward_equivalents"] > 1 and math.isfinite(res["probe_forward_equivalents"])
    assert res["probe_hvps"] >= 6 and res["probe_peak_bytes"] >= 0 and res["probe_memory"] == 2 * 2**30
    train(TrainConfig(model="cnn", model_args=TINY_CNN, n_per_class=5, steps=2, probe=["trace:n_matvec=4"],
                      probe_every=10, probe_memory="256MB", out=str(tmp_path / "r.h5")), progress=True)
    out = capsys.readouterr()
    line = [ln for ln in (out.out + out.err).splitlines() if ln.startswith("probe cost:")]
    assert len(line) == 1 and "forward passes" in line[0] and "expected probe share" in line[0], out


def test_bench_json_reports_the_default_probe(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "--json", "--model", "cnn", "--model-arg", "widths=[2,4]", "--model-arg", "hidden=8",
              "--n-per-class", "2", "--repeats", "1", "--queries", "2", "--copies", "2", "--device", "cpu"])
    assert e.value.code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["probe_forward_equivalents"] > 0 and res["probe_peak_bytes"] >= 0
    assert res["probe_metrics"] == ["lambda_max", "trace", "ms_margin"]
