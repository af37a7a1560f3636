"""Datasets for eos-probe: real image subsets (Fashion-MNIST, CIFAR-10) and the synthetic sorting task.

Everything goes through :func:`load_dataset`, which returns a :class:`Dataset` of CPU tensors holding the
*whole* split (training is full-batch). Image subsets follow docs/theory.md §6: the first ``n_per_class``
training images of each chosen class in dataset order, all test images of those classes, labels
re-indexed to ``0..k-1`` in the order the classes were given, pixels scaled to [0, 1] and standardised
per channel. Nothing is downloaded at run time: ``fashion4`` ships with the repository, the others read
local files (``eos-probe data download`` fetches them once).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError, did_you_mean

__all__ = ["DATASETS", "Dataset", "load_dataset", "dataset_sources", "cache_dir"]

#: name -> one-line description (for --help and error messages)
DATASETS: dict[str, str] = {
    "fashion4": "Fashion-MNIST classes 0-3, first 250 training images each + their 4,000 test images, "
    "shipped with eos-probe (default; docs/theory.md §6 recipe offline)",
    "fashion-mnist": "Fashion-MNIST subset read from the full IDX files (data_dir, $EOS_PROBE_FASHION_DIR, "
    "the Debian package dataset-fashion-mnist, or `eos-probe data download fashion-mnist`)",
    "cifar10": "CIFAR-10 subset read from a cifar-10-batches-py directory (data_dir, $EOS_PROBE_CIFAR_DIR, "
    "or `eos-probe data download cifar10`); docs/theory.md §6 reference setup",
    "sort": "synthetic sorting task (minGPT demo): next-token prediction of the sorted half of "
    "[unsorted, sorted]",
}

#: docs/theory.md §6: the first 4 classes, the first 250 training images of each
DEFAULT_CLASSES: tuple[int, ...] = (0, 1, 2, 3)
DEFAULT_N_PER_CLASS = 250


@dataclass
class Dataset:
    """A whole dataset held in memory.

    Images: ``x`` float32 ``(n, C, H, W)`` standardised, ``y`` int64 class labels ``(n,)``.
    Sequences: ``x`` int64 tokens ``(n, L)``, ``y`` int64 next tokens ``(n, L)`` with ``-1`` marking
    positions that are not in the loss. ``num_classes`` is the number of classes (images) or the
    vocabulary size, i.e. the output size per position (sequences). ``meta`` is JSON-serialisable
    provenance: source, licence, checksums, subset rule, normalisation.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple
    kind: str
    meta: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:  # the default repr would print every tensor
        return (
            f"Dataset({self.name!r}, kind={self.kind!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes})"
        )


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    n_per_class: int | None = None,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    **kw: Any,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) as CPU tensors.

    Image datasets: ``classes`` (default 0..3) and ``n_per_class`` (default 250) select the training
    subset; ``n_test_per_class=`` (keyword, default all) caps the test images per class. The selection
    is deterministic, so ``seed`` is not used for images. ``sort``: ``seed`` drives the generator and
    ``length``, ``vocab``, ``n_train``, ``n_test`` may be given as keywords.
    Every user mistake raises :class:`~eos_probe.errors.UserError`.
    """
    if name not in DATASETS:
        from ..plugins import is_data_plugin, load_data_plugin

        if is_data_plugin(name):  # path/to/file.npz or an `eos_probe.datasets` entry point
            if data_dir is not None or classes is not None or n_per_class is not None:
                raise UserError(f"dataset {name!r} is used as given: drop --data-dir, --classes and --n-per-class")
            return load_data_plugin(name, **kw)
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, or path/to/file.npz"
                        + did_you_mean(name, DATASETS))
    if name == "fashion4":
        if data_dir is not None:
            raise UserError(
                "dataset 'fashion4' is shipped with eos-probe and takes no data_dir; "
                "use 'fashion-mnist' to read IDX files from a directory"
            )
        from .fashion import load_fashion4

        return load_fashion4(classes=classes, n_per_class=n_per_class, **kw)
    if name == "fashion-mnist":
        from .fashion import load_fashion_mnist

        return load_fashion_mnist(data_dir=data_dir, classes=classes, n_per_class=n_per_class, **kw)
    if name == "cifar10":
        from .cifar import load_cifar10

        return load_cifar10(data_dir=data_dir, classes=classes, n_per_class=n_per_class, **kw)
    # name == "sort"
    if classes is not None or n_per_class is not None:
        raise UserError("dataset 'sort' has no classes; drop classes/n_per_class (use n_train, n_test)")
    if data_dir is not None:
        raise UserError("dataset 'sort' is generated and takes no data_dir")
    from .sorting import make_sort_dataset

    return make_sort_dataset(seed=seed, **kw)


def dataset_sources() -> list[tuple[str, str, list[str]]]:
    """For each dataset: (name, description, places it looks for files, in order)."""
    from .cifar import cifar_search_path
    from .fashion import embedded_candidates, fashion_search_path

    return [
        ("fashion4", DATASETS["fashion4"], [str(p) for p in embedded_candidates()]),
        ("fashion-mnist", DATASETS["fashion-mnist"], fashion_search_path()),
        ("cifar10", DATASETS["cifar10"], cifar_search_path()),
        ("sort", DATASETS["sort"], ["(generated from the seed, no files)"]),
    ]


# --------------------------------------------------------------------------------------------------
# helpers shared by the image loaders


def cache_dir() -> Path:
    """Where downloads go by default: ``$XDG_CACHE_HOME/eos-probe`` or ``~/.cache/eos-probe``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "eos-probe"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_extra_kw(name: str, kw: dict, allowed: Sequence[str]) -> None:
    """Reject keyword options a loader does not know, naming the ones it does."""
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        ok = ", ".join(allowed) if allowed else "none"
        raise UserError(f"dataset {name!r} got unknown option(s) {', '.join(unknown)}; accepted: {ok}"
                        + did_you_mean(unknown[0], allowed))


def positive_int(value: Any, what: str, *, allow_none: bool = False) -> int | None:
    """``value`` as an int > 0 (bools and non-integral numbers rejected)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    if value <= 0:
        raise UserError(f"{what} must be a positive integer, got {value}")
    return int(value)


def resolve_classes(classes: Sequence[int] | None, class_names: Sequence[str], dataset: str) -> tuple[int, ...]:
    """Validate the requested class indices against ``class_names``; default docs/theory.md §6's 0..3."""
    k = len(class_names)
    if classes is None:
        return DEFAULT_CLASSES
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise UserError(f"classes must be a list of class indices 0..{k - 1}, got {classes!r}")
    out = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k:
            raise UserError(f"{dataset} has classes 0..{k - 1}; {c!r} is not one of them")
        out.append(int(c))
    if not out:
        raise UserError("classes is empty; give at least one class index")
    if len(set(out)) != len(out):
        raise UserError(f"classes lists a class twice: {out}")
    return tuple(out)


def first_per_class(labels: np.ndarray, classes: Sequence[int], n: int | None, split: str) -> np.ndarray:
    """Indices (ascending, i.e. dataset order) of the first ``n`` examples of each class (all if None)."""
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if n is not None:
            if len(idx) < n:
                raise UserError(
                    f"class {c} has only {len(idx)} {split} images; ask for at most {len(idx)} per class"
                )
            idx = idx[:n]
        picked.append(idx)
    return np.sort(np.concatenate(picked))


def relabel(labels: np.ndarray, classes: Sequence[int]) -> torch.Tensor:
    """Map original labels to their position in ``classes`` (int64); every label must be in ``classes``."""
    table = np.full(int(max(max(classes), labels.max(initial=0))) + 1, -1, dtype=np.int64)
    table[list(classes)] = np.arange(len(classes))
    out = table[labels.astype(np.int64)]
    assert (out >= 0).all(), "relabel got a label outside the chosen classes"
    return torch.from_numpy(out)


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images ``(n, C, H, W)`` on the [0, 1] scale."""
    xf = x.astype(np.float64) / 255.0
    mean = xf.mean(axis=(0, 2, 3))
    std = xf.std(axis=(0, 2, 3))
    if (std <= 0).any():
        raise UserError("the selected training images have a constant channel; cannot standardise them")
    return [float(m) for m in mean], [float(s) for s in std]


def standardize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(n, C, H, W)`` -> float32 ``(x/255 - mean_c) / std_c``, computed in float64."""
    m = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    return torch.from_numpy(((x.astype(np.float64) / 255.0 - m) / s).astype(np.float32))


def make_image_dataset(
    name: str,
    *,
    x_train: np.ndarray,
    labels_train: np.ndarray,
    x_test: np.ndarray,
    labels_test: np.ndarray,
    classes: Sequence[int],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    stats_from: str,
    meta: dict,
) -> Dataset:
    """Assemble an image :class:`Dataset` from already-selected uint8 arrays ``(n, C, H, W)``."""
    y_train = relabel(labels_train, classes)
    y_test = relabel(labels_test, classes)
    meta = dict(meta)
    meta.update(
        {
            "dataset": name,
            "classes": [int(c) for c in classes],
            "class_names": [class_names[c] for c in classes],
            "label_map": {str(int(c)): i for i, c in enumerate(classes)},
            "n_train": int(len(y_train)),
            "n_test": int(len(y_test)),
            "train_per_class": [int((y_train == i).sum()) for i in range(len(classes))],
            "test_per_class": [int((y_test == i).sum()) for i in range(len(classes))],
            "order": "dataset order (classes interleaved as in the source files)",
            "normalisation": {
                "pixels": "uint8 / 255 -> [0, 1]",
                "method": "per-channel standardisation (x - mean_c) / std_c",
                "mean": [float(v) for v in mean],
                "std": [float(v) for v in std],
                "stats_from": stats_from,
            },
        }
    )
    return Dataset(
        name=name,
        x_train=standardize(x_train, mean, std),
        y_train=y_train,
        x_test=standardize(x_test, mean, std),
        y_test=y_test,
        num_classes=len(classes),
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        kind="image",
        meta=meta,
    )
