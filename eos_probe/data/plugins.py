"""Data plug-ins: `--data path/to/file.npz` or an entry point of the group ``eos_probe.datasets``.

An .npz file holds arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``. Integer ``y`` is classification
(labels 0..C−1, C = max + 1 unless ``num_classes`` is stored too); float ``y`` is regression (``mse`` on
targets of the output's shape; a 1-D ``y`` becomes (n, 1)). Float ``x`` is used as given (no normalisation);
integer ``x`` is token input. An entry point is a function ``(**data_args) -> Dataset`` or one returning a
mapping of the .npz arrays. The run file records the .npz file's SHA-256 (`eos_probe.provenance`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..provenance import entry_point, sha256_file
from .dataset import Dataset

DATASET_GROUP = "eos_probe.datasets"


def is_data_plugin(name: str) -> bool:
    """Whether --data names a plug-in (an .npz path or a registered entry point)."""
    return name.endswith(".npz") or entry_point(DATASET_GROUP, name) is not None


def load_npz(path: str | Path, name: str | None = None, arrays: dict | None = None, **kw: Any) -> Dataset:
    """A :class:`~eos_probe.data.dataset.Dataset` from an .npz file (or from ``arrays``) as the module says."""
    meta: dict[str, Any] = {"dataset": name or str(path), "format": "npz"}
    if arrays is None:
        arrays = _read_npz(Path(path), meta)
    if kw:
        raise UserError(f"dataset {meta['dataset']!r} takes no options, got {', '.join(sorted(kw))}")
    x, y, xt, yt = _split_arrays(arrays, meta["dataset"])

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


def _read_npz(p: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of an .npz file; its path and SHA-256 go into `meta`."""
    if not p.is_file():
        raise UserError(f"data file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file
        raise UserError(f"data file {p} is not a readable .npz archive ({type(e).__name__}: {e})") from None
    meta.update(path=str(p.resolve()), sha256=sha256_file(p))
    return arrays


def _split_arrays(arrays: dict, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, x_test, y_test), checked to agree in examples and shapes (no test split: empty arrays)."""
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise UserError(f"data {name}: missing array(s) {', '.join(missing)} "
                        f"(has {', '.join(sorted(arrays)) or 'none'}); expected x, y and optionally x_test, y_test")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UserError(f"data {name}: give both x_test and y_test, or neither")
    x, y = np.asarray(arrays["x"]), np.asarray(arrays["y"])
    xt, yt = np.asarray(arrays.get("x_test", x[:0])), np.asarray(arrays.get("y_test", y[:0]))
    for a, b, split in ((x, y, "x/y"), (xt, yt, "x_test/y_test")):
        if a.shape[:1] != b.shape[:1]:
            raise UserError(f"data {name}: {split} have {a.shape[0]} and {b.shape[0]} examples")
    if x.shape[0] == 0:
        raise UserError(f"data {name}: x is empty")
    if xt.shape[1:] != x.shape[1:] and xt.shape[0]:
        raise UserError(f"data {name}: x_test has examples of shape {xt.shape[1:]}, x of {x.shape[1:]}")
    return x, y, xt, yt


def load_data_plugin(name: str, **kw: Any) -> Dataset:
    """A dataset from an .npz path or an ``eos_probe.datasets`` entry point."""
    if name.endswith(".npz"):
        return load_npz(name, **kw)
    ep = entry_point(DATASET_GROUP, name)
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
