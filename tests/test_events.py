"""Events named in figures and summaries (eos_probe.events): loss spikes, catapults and the probe grid."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from eos_probe.events import catapults, loss_spikes, probe_grid


class _Run:
    def __init__(self, loss, probe_steps, lam, tr, status="finished", stop=None, track=None):
        n = len(loss)
        self.train = pd.DataFrame({"step": np.arange(n) * 10, "loss": np.asarray(loss, float)})
        self.probe = pd.DataFrame({"step": np.asarray(probe_steps), "lambda_max": np.asarray(lam, float),
                                   "trace": np.asarray(tr, float)})
        self.status, self.attrs, self.track = status, {"stop_step": stop}, track
        self.steps_done = stop or 10 * (n - 1)

    def curvature(self):
        return self.probe


def test_spikes_are_stretches_above_the_running_minimum():
    loss = [1.0, 0.8, 0.6, 0.5, 0.9, 1.2, 0.7, 0.45, 0.4, 0.7, 0.5]
    # 0.9 > 1.5·0.5 opens a spike at step 40 (peak 1.2 at 50); 0.7 < 0.75 closes it at 60; 0.7 > 0.6 = 1.5·0.4 again
    assert loss_spikes(np.arange(11) * 10, np.array(loss)) == [(40, 50, 60), (90, 90, 100)]
    assert loss_spikes(np.arange(4) * 10, np.array([1.0, 0.5, 0.9, math.inf])) == [(20, 20, -1)]


def test_a_spike_followed_by_flatter_ground_is_a_catapult_and_one_unmeasured_is_not_called_one():
    loss = [1.0, 0.8, 0.6, 0.5, 0.9, 1.2, 0.7, 0.45, 0.4, 0.35, 0.3]
    run = _Run(loss, [0, 30, 70, 100], lam=[1.0, 40.0, 12.0, 12.0], tr=[5.0, 90.0, 40.0, 40.0])
    (c,) = catapults(run)
    assert c["catapult"] is True and (c["start"], c["peak"], c["end"]) == (40, 50, 60)
    assert (c["measured_before"], c["measured_after"]) == (30, 70)
    flat = _Run(loss, [0, 30, 70, 100], lam=[1.0, 40.0, 39.0, 39.0], tr=[5.0, 90.0, 89.0, 89.0])
    assert catapults(flat)[0]["catapult"] is False  # λ_max and Tr within 10 %: not flatter
    blind = _Run(loss, [0, 100], lam=[1.0, 12.0], tr=[5.0, 40.0])
    assert catapults(blind)[0]["catapult"] is False  # the last value before it (step 0, lambda 1) was lower
    unseen = _Run(loss, [70, 100], lam=[12.0, 12.0], tr=[40.0, 40.0])
    assert catapults(unseen)[0]["catapult"] is None


def test_probe_grid_names_the_last_probe_before_a_divergence():
    run = _Run([1.0] * 68, [0, 100, 200, 300, 400, 500, 600], [1.0] * 7, [1.0] * 7, status="diverged", stop=670)
    g = probe_grid(run)
    assert g == {"probes": 7, "first": 0, "last": 600, "max_gap": 100, "median_gap": 100.0, "tracks": 0,
                 "last_probe_before_divergence": 600}
