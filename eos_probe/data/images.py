"""Image subsets (docs/theory.md §6): the first `n_per_class` training images of each chosen class in dataset
order, all test images of those classes, labels re-indexed to 0..k-1 in the order the classes were given,
pixels scaled to [0, 1] and standardised per channel. Shared by the Fashion-MNIST and CIFAR-10 loaders.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from .dataset import Dataset

#: docs/theory.md §6: the first 4 classes, the first 250 training images of each
DEFAULT_CLASSES: tuple[int, ...] = (0, 1, 2, 3)
DEFAULT_N_PER_CLASS = 250


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
