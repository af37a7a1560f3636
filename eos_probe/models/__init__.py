"""Model families and their registry.

Every model is a plain ``nn.Module`` built from smooth ops that support ``torch.func.functional_call``,
forward-mode AD over reverse mode, double backward and vmap (no BatchNorm, no fused kernels, no hidden
state). Image models map float (n, C, H, W) to logits (n, classes); sequence models map int64 tokens (n, L)
to causal logits (n, L, vocab), where ``num_classes`` is the vocabulary size.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError, did_you_mean
from . import cnn, lstm, mamba, mlp, resnet, vit
from .plugins import build_plugin_model, is_model_plugin

KINDS = ("image", "sequence")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its input kind, builder(input_shape, num_classes, **options), default options."""

    kind: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("image", mlp.build, mlp.DEFAULTS, "fully connected net on flattened images, GELU"),
    "cnn": ModelSpec("image", cnn.build, cnn.DEFAULTS,
                     "2×[conv3×3–GELU–AvgPool2]–Linear–GELU–Linear (reference CNN, 544k params on CIFAR/4)"),
    "resnet": ModelSpec("image", resnet.build, resnet.DEFAULTS,
                        "ResNet width 16, stages (3,3,3), GroupNorm, GELU, branches ×1/3, zero head (293k on CIFAR)"),
    "vit": ModelSpec("image", vit.build, vit.DEFAULTS,
                     "SimpleViT patch 4, dim 64, depth 3, 8 heads, MLP 256, sincos positions, mean pool, zero head"),
    "lstm": ModelSpec("sequence", lstm.build, lstm.DEFAULTS,
                      "embedding 48 + 2 hand-written LSTM cells (hidden 48) + linear head"),
    "mamba": ModelSpec("sequence", mamba.build, mamba.DEFAULTS,
                       "Mamba d_model 64, 2 blocks, d_state 16, expand 2, d_conv 4, sequential scan, head ×0.1"),
}


def model_names(kind: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one kind ("image" or "sequence")."""
    if kind is not None and kind not in KINDS:
        raise UserError(f"unknown model kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return [name for name, spec in MODELS.items() if kind is None or spec.kind == kind]


def build_model(name: str, *, input_shape: tuple, num_classes: int, seed: int = 0,
                dtype: torch.dtype = torch.float32, **overrides: Any) -> nn.Module:
    """Build model ``name`` with its defaults updated by ``overrides``, initialised from ``seed``.

    The global RNG is left untouched: initialisation draws from the CPU generator inside
    ``torch.random.fork_rng``, so the same (name, shape, classes, options, seed) gives the same weights
    whatever ran before, and (under torch's default dtype float32) the weights of a float64 model are
    those of the float32 one, upcast.
    Raises ``UserError`` for an unknown name, an unknown option or an invalid value.
    """
    spec = MODELS.get(name)
    if spec is None:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}" + did_you_mean(name, MODELS))
    unknown = sorted(set(overrides) - set(spec.defaults))
    if unknown:
        raise UserError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
                        f"valid options: {', '.join(spec.defaults)}" + did_you_mean(unknown[0], spec.defaults))
    if isinstance(input_shape, (int, str)) or not hasattr(input_shape, "__len__"):
        raise UserError(f"model {name!r}: input_shape must be a tuple, got {input_shape!r}")
    input_shape = tuple(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        what = "vocabulary size" if spec.kind == "sequence" else "number of classes"
        raise UserError(f"model {name!r}: num_classes (the {what}) must be a positive integer, got {num_classes!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserError(f"model {name!r}: dtype must be a floating torch dtype, got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"model {name!r}: seed must be an integer, got {seed!r}")
    options = {**spec.defaults, **overrides}
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also reseed (and not restore) CUDA generators
        torch.default_generator.manual_seed(seed)
        model = spec.builder(input_shape, num_classes, **options)
    return model.to(dtype)


def num_params(model: nn.Module) -> int:
    """Number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def model_kind(name: str) -> str | None:
    """The input kind of model `name` ("image" or "sequence"), None for a plug-in (it takes any data).

    Raises:
        UserError: neither a registered model nor a plug-in spec (the message lists the models).
    """
    if name in MODELS:
        return MODELS[name].kind
    if is_model_plugin(name):
        return None
    raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, path/to/file.py:factory or "
                    "package.module:factory" + did_you_mean(name, MODELS))


def make_model(name: str, *, input_shape: tuple, num_outputs: int, seed: int = 0,
               dtype: torch.dtype = torch.float32, **model_args: Any) -> tuple[nn.Module, dict | None]:
    """A registered model (`build_model`) or a plug-in (`eos_probe.models.plugins`), and the plug-in's
    provenance for the run file (None for registered models)."""
    if model_kind(name) is None:
        return build_plugin_model(name, input_shape=input_shape, num_outputs=num_outputs, seed=seed, dtype=dtype,
                                  **model_args)
    return build_model(name, input_shape=input_shape, num_classes=num_outputs, seed=seed, dtype=dtype,
                       **model_args), None


__all__ = ["KINDS", "MODELS", "ModelSpec", "build_model", "make_model", "model_kind", "model_names", "num_params"]


def param_groups(model: nn.Module) -> dict[str, list[str]]:
    """Named parameter groups of a model: name -> parameter names (in `named_parameters` order).

    A model may define its own ``param_groups()`` (the ViT with adapters: ``adapter``, ``head``, ``body``).
    Otherwise ``head`` is the last layer (the module owning the last parameter, e.g. ``head`` or
    ``net.9``) and ``body`` everything else. Every parameter is in exactly one group.
    """
    own = getattr(model, "param_groups", None)
    if callable(own):
        return own()
    names = [n for n, _ in model.named_parameters()]
    if not names:
        return {}
    last = names[-1].rsplit(".", 1)[0] if "." in names[-1] else names[-1]
    head = [n for n in names if n == last or n.startswith(last + ".")]
    return {"body": [n for n in names if n not in head], "head": head}
