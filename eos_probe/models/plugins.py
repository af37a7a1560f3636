"""Model plug-ins: `--model path/to/file.py:factory`, `--model package.module:factory` or an entry point.

``factory(input_shape, num_outputs, **model_args) -> nn.Module`` (``:factory`` defaults to ``build``) is
called under the run seed. Packages register names under the entry-point group ``eos_probe.models``. The run
file records the plug-in with the SHA-256 of its source, and `--resume` refuses a changed one
(`eos_probe.provenance.check_unchanged`).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UserError
from ..provenance import entry_point, sha256_file

MODEL_GROUP = "eos_probe.models"


def is_model_plugin(name: str) -> bool:
    """Whether --model names a plug-in (file or module path, or a registered entry point)."""
    return ":" in name or name.endswith(".py") or entry_point(MODEL_GROUP, name) is not None


def model_factory(spec: str) -> tuple[Callable[..., torch.nn.Module], dict[str, Any]]:
    """The factory named by ``spec`` and its provenance {"spec", "source", "sha256"} (see the module doc)."""
    ep = entry_point(MODEL_GROUP, spec) if ":" not in spec and not spec.endswith(".py") else None
    if ep is not None:
        try:
            fn = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in package is reported in one line
            raise UserError(f"model entry point {spec!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from None
        module = sys.modules.get(fn.__module__)
        return _callable(fn, spec), _provenance(spec, module, entry_point=ep.value)
    target, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "build")
    attr = attr or "build"
    if target.endswith(".py") or "/" in target or Path(target).suffix == ".py":
        module = _module_from_file(target, "model")
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise UserError(f"--model {spec}: cannot import module {target!r} ({e}); use path/to/file.py:factory "
                            "or package.module:factory") from None
        except Exception as e:  # noqa: BLE001
            raise UserError(f"--model {spec}: importing {target!r} failed: {type(e).__name__}: {e}") from None
    if not hasattr(module, attr):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
        raise UserError(f"--model {spec}: {target} has no {attr!r}; callables defined there: "
                        f"{', '.join(found) or 'none'}")
    return _callable(getattr(module, attr), spec), _provenance(spec, module)


def _callable(fn, spec: str) -> Callable[..., torch.nn.Module]:
    if not callable(fn):
        raise UserError(f"--model {spec}: {fn!r} is not callable; it must be factory(input_shape, num_outputs, **args)")
    return fn


def _module_from_file(path: str, what: str):
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file {p} does not exist")
    name = f"_eos_probe_plugin_{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        del sys.modules[name]
        raise UserError(f"{what} file {p} failed to import: {type(e).__name__}: {e}") from None
    return module


def _provenance(spec: str, module, entry_point: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"spec": spec}
    if entry_point:
        out["entry_point"] = entry_point
    try:
        src = inspect.getsourcefile(module) if module is not None else None
    except TypeError:
        src = None
    if src and Path(src).is_file():
        out["source"] = str(Path(src).resolve())
        out["sha256"] = sha256_file(src)
    pkg = (module.__name__.split(".")[0] if module is not None else "")
    try:
        from importlib.metadata import version

        out["version"] = version(pkg) if pkg and not pkg.startswith("_eos_probe_plugin") else ""
    except Exception:  # noqa: BLE001 - not an installed distribution
        pass
    return out


def build_plugin_model(spec: str, *, input_shape: tuple, num_outputs: int, seed: int, dtype: torch.dtype,
                       **model_args: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Call the factory under the run seed (global RNG restored afterwards); check it returned a module."""
    factory, prov = model_factory(spec)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        try:
            model = factory(tuple(input_shape), int(num_outputs), **model_args)
        except TypeError as e:
            raise UserError(f"--model {spec}: factory(input_shape={tuple(input_shape)}, num_outputs={num_outputs}"
                            f"{''.join(f', {k}={v!r}' for k, v in model_args.items())}) failed: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    prov["model_args"] = dict(model_args)
    return model.to(dtype), prov
