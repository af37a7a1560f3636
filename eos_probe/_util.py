"""Small helpers shared across the package (one home each, no package imports)."""
from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA is asynchronous), so a wall-clock timer measures it.

    Args:
        device: the device whose work is timed; a no-op for anything but CUDA.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
