"""Bring your own model and data to `eos-probe train`: plug-in factories, .npz datasets, entry points.

* ``--model path/to/file.py:factory`` or ``--model package.module:factory`` (``:factory`` defaults to
  ``build``): ``factory(input_shape, num_outputs, **model_args) -> nn.Module``, called under the run seed.
* ``--data path/to/file.npz``: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``. Integer ``y`` is
  classification (labels 0..C−1, C = max + 1 unless ``num_classes`` is stored too); float ``y`` is
  regression (``mse`` on targets of the output's shape; a 1-D ``y`` becomes (n, 1)). Float ``x`` is used as
  given (no normalisation); integer ``x`` is token input.
* Packages register names under the entry-point groups ``eos_probe.models`` (a factory as above) and
  ``eos_probe.datasets`` (a function ``(**data_args) -> Dataset`` or a mapping of the .npz arrays).

Every plug-in is recorded in the run file with the SHA-256 of its source (the model file or module, the
.npz file), and `--resume` refuses to continue when the content changed.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import UserError

MODEL_GROUP = "eos_probe.models"
DATASET_GROUP = "eos_probe.datasets"


def _entry_point(group: str, name: str):
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        if ep.name == name:
            return ep
    return None


def entry_point_names(group: str) -> list[str]:
    """Names registered by installed packages under an entry-point group."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=group)})


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_model_plugin(name: str) -> bool:
    """Whether --model names a plug-in (file or module path, or a registered entry point)."""
    return ":" in name or name.endswith(".py") or _entry_point(MODEL_GROUP, name) is not None


def model_factory(spec: str) -> tuple[Callable[..., torch.nn.Module], dict[str, Any]]:
    """The factory named by ``spec`` and its provenance {"spec", "source", "sha256"} (see the module doc)."""
    ep = _entry_point(MODEL_GROUP, spec) if ":" not in spec and not spec.endswith(".py") else None
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
        out["sha256"] = _sha256(src)
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


# ------------------------------------------------------------------------------------------------ data
def is_data_plugin(name: str) -> bool:
    return name.endswith(".npz") or _entry_point(DATASET_GROUP, name) is not None


def load_npz(path: str | Path, name: str | None = None, arrays: dict | None = None, **kw: Any):
    """A :class:`~eos_probe.data.Dataset` from an .npz file (or from ``arrays``) as described above."""
    from .data import Dataset

    meta: dict[str, Any] = {"dataset": name or str(path), "format": "npz"}
    if arrays is None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"data file {p} does not exist")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file
            raise UserError(f"data file {p} is not a readable .npz archive ({type(e).__name__}: {e})") from None
        meta.update(path=str(p.resolve()), sha256=_sha256(p))
    if kw:
        raise UserError(f"dataset {meta['dataset']!r} takes no options, got {', '.join(sorted(kw))}")
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise UserError(f"data {meta['dataset']}: missing array(s) {', '.join(missing)} "
                        f"(has {', '.join(sorted(arrays)) or 'none'}); expected x, y and optionally x_test, y_test")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UserError(f"data {meta['dataset']}: give both x_test and y_test, or neither")
    x = np.asarray(arrays["x"])
    y = np.asarray(arrays["y"])
    xt = np.asarray(arrays.get("x_test", x[:0]))
    yt = np.asarray(arrays.get("y_test", y[:0]))
    for a, b, split in ((x, y, "x/y"), (xt, yt, "x_test/y_test")):
        if a.shape[:1] != b.shape[:1]:
            raise UserError(f"data {meta['dataset']}: {split} have {a.shape[0]} and {b.shape[0]} examples")
    if x.shape[0] == 0:
        raise UserError(f"data {meta['dataset']}: x is empty")
    if xt.shape[1:] != x.shape[1:] and xt.shape[0]:
        raise UserError(f"data {meta['dataset']}: x_test has examples of shape {xt.shape[1:]}, x of {x.shape[1:]}")

    def as_x(a: np.ndarray) -> torch.Tensor:
        if np.issubdtype(a.dtype, np.floating):
            return torch.from_numpy(a.astype(np.float32))
        if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
            return torch.from_numpy(a.astype(np.int64))
        raise UserError(f"data {meta['dataset']}: x has dtype {a.dtype}; use floats (features) or integers (tokens)")

    regression = np.issubdtype(y.dtype, np.floating)
    if regression:
        if y.ndim == 1:
            y, yt = y[:, None], yt.reshape(-1, 1)
        to_y = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
        n_out = int(np.prod(y.shape[1:]))
        if y.ndim != 2:
            raise UserError(f"data {meta['dataset']}: regression targets must be (n,) or (n, outputs), got {y.shape}")
    elif np.issubdtype(y.dtype, np.integer):
        to_y = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
        labels = np.concatenate([y.reshape(-1), yt.reshape(-1)])
        labels = labels[labels >= 0]
        n_out = int(arrays["num_classes"]) if "num_classes" in arrays else int(labels.max()) + 1
        if labels.size and (labels.min() < 0 or labels.max() >= n_out):
            raise UserError(f"data {meta['dataset']}: labels must lie in 0..{n_out - 1}")
    else:
        raise UserError(f"data {meta['dataset']}: y has dtype {y.dtype}; use integers (class labels) or floats "
                        "(regression targets)")
    x_t = as_x(x)
    kind = "sequence" if not x_t.is_floating_point() and not regression and y.ndim == 2 else "image"
    meta.update(task="regression" if regression else "classification", n_train=int(x.shape[0]),
                n_test=int(xt.shape[0]), num_outputs=n_out, x_shape=list(x.shape), y_shape=list(y.shape))
    return Dataset(name=meta["dataset"], x_train=x_t, y_train=to_y(y), x_test=as_x(xt), y_test=to_y(yt),
                   num_classes=n_out, input_shape=tuple(int(s) for s in x.shape[1:]), kind=kind, meta=meta)


def load_data_plugin(name: str, **kw: Any):
    """A dataset from an .npz path or an ``eos_probe.datasets`` entry point."""
    if name.endswith(".npz"):
        return load_npz(name, **kw)
    from .data import Dataset

    ep = _entry_point(DATASET_GROUP, name)
    try:
        fn = ep.load()
        out = fn(**kw)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"dataset entry point {name!r} ({ep.value}) failed: {type(e).__name__}: {e}") from None
    if isinstance(out, Dataset):
        out.meta = {**out.meta, "entry_point": ep.value}
        return out
    if isinstance(out, dict):
        ds = load_npz(name, name=name, arrays=out)
        ds.meta["entry_point"] = ep.value
        return ds
    raise UserError(f"dataset entry point {name!r} returned {type(out).__name__}; expected a Dataset or a dict "
                    "of arrays x, y[, x_test, y_test]")


def check_unchanged(stored: dict[str, Any] | None, current: dict[str, Any] | None, what: str) -> None:
    """Refuse to resume a run whose plug-in file changed since it started (the run would not be one run)."""
    if not stored or not current:
        return
    old, new = stored.get("sha256"), current.get("sha256")
    if old and new and old != new:
        src = current.get("source") or current.get("path") or current.get("spec")
        raise UserError(f"{what} {src} changed since the run started (sha256 {old[:12]}… now {new[:12]}…); "
                        "restore it, or start a new run")
