"""The built-in losses by name, with the convention each records in a run file (``loss_convention``).

The registry of loss names: the config's check, the CLI's choices and help and the docs read it here, torch-free;
`eos_probe.losses` implements them.
"""
from __future__ import annotations

#: built-in loss name -> its convention, as recorded in every run file and shown by ``--help``
LOSS_CONVENTIONS = {
    "mse": "0.5*sum_outputs(f-onehot)^2, mean over loss terms (lambda_max = C/2 x nn.MSELoss mean)",
    "ce": "cross-entropy, mean over loss terms",
}
#: the built-in loss names (``Objective(loss=...)``, the ``loss`` config key); the first is the default
LOSSES = tuple(LOSS_CONVENTIONS)
