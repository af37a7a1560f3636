"""`eos-probe bench`: the JSON it prints has every ratio, finite and positive, and names the device.
No timing asserts (the numbers depend on the machine); the ratio helper is checked on given times."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch

from eos_probe.bench import RATIO_KEYS, interleaved, ratio
from eos_probe.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_json_has_every_ratio_finite(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "--json", "--model", "cnn", "--model-arg", "widths=[4,8]", "--model-arg", "hidden=16",
              "--n-per-class", "3", "--repeats", "1", "--queries", "3", "--copies", "2", "--device", "cpu"])
    assert e.value.code == 0
    res = json.loads(capsys.readouterr().out)  # one JSON object and nothing else on stdout
    for key in RATIO_KEYS:
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] > 0, key
    assert res["device"].startswith("cpu")
    assert res["n_params"] == 4 * 9 + 8 * 4 * 9 + 8 * 7 * 7 * 16 + 16 * 4 + 4  # the tiny CNN's size
    assert res["batched_q_auto"] in ("loop", "batched") and res["queries"] == 3 and res["copies"] == 2
    assert res["hvp_backend"] in ("fwd-rev", "double-backward")


def test_bench_table_and_bad_options(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "--model", "mlp", "--model-arg", "hidden=[8]", "--n-per-class", "2", "--repeats", "1",
              "--queries", "2", "--copies", "2", "--device", "cpu"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "ZO step / two forwards" in out and "cpu" in out
    for args in (["--repeats", "0"], ["--model", "transformerXL"]):
        with pytest.raises(SystemExit) as e:
            main(["bench", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err


def test_interleaved_timing_and_median_ratio() -> None:
    t = interleaved({"slow": lambda: time.sleep(0.02), "fast": lambda: time.sleep(0.005)}, 3,
                    torch.device("cpu"), warmup=0)
    assert len(t["slow"]) == len(t["fast"]) == 3
    assert all(a >= 0.02 for a in t["slow"])
    assert ratio({"a": [2.0, 9.0, 4.0], "b": [1.0, 1.0, 1.0]}, "a", "b", scale=2.0) == 2.0  # median of 1, 4.5, 2


def test_bench_only_runs_the_named_items(capsys) -> None:
    from eos_probe.bench import run_bench
    from eos_probe.errors import InvalidValueError

    with pytest.raises(SystemExit) as e:
        main(["bench", "--model", "mlp", "--model-arg", "hidden=[8]", "--n-per-class", "2", "--repeats", "1",
              "--device", "cpu", "--only", "cocd", "--cocd-block", "4", "--no-probe"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "CoCD step / 8 forwards (B=4)" in out and "ZO step" not in out and "HVP" not in out
    res = run_bench("mlp", model_args={"hidden": [8]}, n_per_class=2, device="cpu", repeats=1, only=["hvp"],
                    probe=False)
    assert "hvp_over_grad" in res and "cocd_step_over_2b_forwards" not in res
    with pytest.raises(InvalidValueError, match="unknown bench item"):
        run_bench("mlp", only=["cocd", "nope"])
