"""Parameter groups: names of a model's parameter sets mapped to index sets of the flat θ.

A group is named by the model (`eos_probe.models.param_groups`: ``head``, ``body``, and ``adapter`` on a
ViT with adapters) or, failing that, by an `fnmatch` pattern over parameter names (``"layers.0.*"``).
Hybrid optimizers (docs/theory.md §5b) and the hybrid bands read the groups from here.
"""
from __future__ import annotations

import fnmatch
import math

import torch
from torch import Tensor, nn

from .errors import UserError
from .models import param_groups


def group_names(model: nn.Module, name: str) -> list[str]:
    """Parameter names of group ``name``: a named group of the model, else an fnmatch pattern.

    Raises:
        UserError: the name matches no parameter ("group 'x' matches no parameter; named groups: ...").
    """
    named = param_groups(model)
    if name in named and named[name]:
        return list(named[name])
    matched = [n for n, _ in model.named_parameters() if fnmatch.fnmatchcase(n, name)]
    if not matched:
        raise UserError(f"group {name!r} matches no parameter; named groups: {', '.join(k for k, v in named.items() if v)}"
                        " (or give an fnmatch pattern over parameter names, see --list-groups)")
    return matched


def group_index(model: nn.Module, names: list[str], device: torch.device | str = "cpu") -> Tensor:
    """The sorted flat-θ indices (int64) of the parameters `names` (flat order of `named_parameters`)."""
    wanted = set(names)
    parts, offset = [], 0
    for n, p in model.named_parameters():
        if n in wanted:
            parts.append(torch.arange(offset, offset + p.numel(), device=device))
        offset += p.numel()
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=device)


def resolve_groups(model: nn.Module, names: list[str], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Each group name -> its flat-θ index tensor; groups must not overlap.

    Raises:
        UserError: a name matching no parameter, or two groups sharing a parameter.
    """
    out: dict[str, Tensor] = {}
    owner: dict[str, str] = {}
    for name in names:
        params = group_names(model, name)
        for p in params:
            if p in owner:
                raise UserError(f"parameter {p!r} is in both group {owner[p]!r} and group {name!r}; groups must not overlap")
            owner[p] = name
        out[name] = group_index(model, params, device)
    return out


def describe_groups(model: nn.Module) -> list[tuple[str, int, list[str]]]:
    """(group, parameter count, parameter names) for each named group of the model (`--list-groups`)."""
    shapes = {n: p.shape for n, p in model.named_parameters()}
    return [(g, sum(math.prod(shapes[n]) for n in ns), list(ns)) for g, ns in param_groups(model).items()]
