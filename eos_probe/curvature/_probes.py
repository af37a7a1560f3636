"""Random probe vectors drawn from an explicit generator (the caller seeds it; default seed 0)."""
from __future__ import annotations

import torch
from torch import Tensor


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """The generator to use: the caller's, or a fresh one seeded with 0 (reproducible by default)."""
    return generator if generator is not None else torch.Generator().manual_seed(0)


def rademacher(m: int, d: int, generator: torch.Generator | None, dtype: torch.dtype,
               device: torch.device) -> Tensor:
    """(m, d) i.i.d. ±1 entries, drawn on the generator's device and moved to ``device``."""
    g = default_generator(generator)
    z = torch.randint(0, 2, (m, d), generator=g, device=g.device, dtype=torch.int8)
    return (z.to(device=device, dtype=dtype) * 2 - 1)


def gaussian(m: int, d: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(m, d) i.i.d. N(0, 1) entries, drawn on the generator's device and moved to ``device``."""
    g = default_generator(generator)
    return torch.randn((m, d), generator=g, device=g.device, dtype=dtype).to(device)
