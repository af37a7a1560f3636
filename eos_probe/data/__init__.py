"""Datasets for eos-probe: real image subsets (Fashion-MNIST, CIFAR-10) and the synthetic sorting task.

`DATASETS` is the registry: name -> `DatasetSpec` (its loader, kind, one-line description, where it looks for
files, which of `data_dir`, `classes`, `n_per_class` it takes). Everything goes through :func:`load_dataset`,
which returns a `eos_probe.data.dataset.Dataset` of CPU tensors holding the *whole* split (training is
full-batch). Image subsets follow docs/theory.md §6 (`eos_probe.data.images`). Nothing is downloaded at run
time: ``fashion4`` ships with the repository, the others read local files (``eos-probe data download``
fetches them once). Any other name is a plug-in (`eos_probe.data.plugins`): an .npz file or an entry point.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import UserError, did_you_mean
from . import cifar, fashion, sorting
from .dataset import Dataset
from .plugins import is_data_plugin, load_data_plugin

__all__ = ["DATASETS", "DatasetSpec", "dataset_sources", "default_dataset", "load_dataset"]

#: the options `load_dataset` may pass a loader besides its dataset keywords
SUBSET_OPTIONS = ("data_dir", "classes", "n_per_class")


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    Attributes:
        description: one line for --help, error messages and `eos-probe data list`.
        kind: ``"image"`` or ``"sequence"`` (which models take it).
        load: the loader, called with the `takes` options that were given, `seed` if it `seeded`, and the
            dataset keywords (``--data-arg``).
        takes: which of `SUBSET_OPTIONS` it accepts.
        refuses: why it takes no other option (completes "dataset X ...").
        sources: where it looks for its files, in order.
        seeded: it is generated from the run seed.
    """

    description: str
    kind: str
    load: Callable[..., Dataset]
    takes: tuple[str, ...]
    refuses: str
    sources: Callable[[], list[str]]
    seeded: bool = False


DATASETS: dict[str, DatasetSpec] = {
    "fashion4": DatasetSpec(
        "Fashion-MNIST classes 0-3, first 250 training images each + their 4,000 test images, shipped with "
        "eos-probe (default for image models; docs/theory.md §6 recipe offline)", "image", fashion.load_fashion4,
        ("classes", "n_per_class"), "is shipped with eos-probe (use 'fashion-mnist' to read IDX files from a "
        "directory)", lambda: [str(p) for p in fashion.embedded_candidates()]),
    "fashion4-halves": DatasetSpec(
        "fashion4 with task-disjoint inputs: classes 0,1 keep the left half of each image, 2,3 the right half "
        "(x right_scale, default 3); for forgetting tests where the new task moves weights the old one cannot feel",
        "image", fashion.load_fashion4_halves, ("classes", "n_per_class"), "is built from the shipped fashion4",
        lambda: [str(p) for p in fashion.embedded_candidates()]),
    "fashion-mnist": DatasetSpec(
        "Fashion-MNIST subset read from the full IDX files (data_dir, $EOS_PROBE_FASHION_DIR, the Debian package "
        "dataset-fashion-mnist, or `eos-probe data download fashion-mnist`)", "image", fashion.load_fashion_mnist,
        SUBSET_OPTIONS, "", fashion.fashion_search_path),
    "cifar10": DatasetSpec(
        "CIFAR-10 subset read from a cifar-10-batches-py directory (data_dir, $EOS_PROBE_CIFAR_DIR, or "
        "`eos-probe data download cifar10`); docs/theory.md §6 reference setup", "image", cifar.load_cifar10,
        SUBSET_OPTIONS, "", cifar.cifar_search_path),
    "sort": DatasetSpec(
        "synthetic sorting task (minGPT demo): next-token prediction of the sorted half of [unsorted, sorted] "
        "(default for sequence models)", "sequence", sorting.make_sort_dataset, (),
        "is generated (no files, no classes: use n_train, n_test)", lambda: ["(generated from the seed, no files)"],
        seeded=True),
}


def default_dataset(kind: str | None) -> str:
    """The dataset a model of `kind` trains on when none is named: the first registered of that kind (fashion4
    for image models and plug-ins, sort for sequence models)."""
    return next(n for n, s in DATASETS.items() if s.kind == (kind or "image"))


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    n_per_class: int | None = None,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    **kw: Any,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`, or a plug-in) as CPU tensors.

    Image datasets: ``classes`` (default 0..3) and ``n_per_class`` (default 250) select the training
    subset; ``n_test_per_class=`` (keyword, default all) caps the test images per class. The selection
    is deterministic, so ``seed`` is not used for images. ``sort``: ``seed`` drives the generator and
    ``length``, ``vocab``, ``n_train``, ``n_test`` may be given as keywords.
    Every user mistake raises :class:`~eos_probe.errors.UserError`.
    """
    given = {k: v for k, v in (("data_dir", data_dir), ("classes", classes), ("n_per_class", n_per_class))
             if v is not None}
    spec = DATASETS.get(name)
    if spec is None:
        if is_data_plugin(name):  # path/to/file.npz or an `eos_probe.datasets` entry point
            if given:
                raise UserError(f"dataset {name!r} is used as given: drop --data-dir, --classes and --n-per-class")
            return load_data_plugin(name, **kw)
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, or path/to/file.npz"
                        + did_you_mean(name, DATASETS))
    refused = [k for k in given if k not in spec.takes]
    if refused:
        raise UserError(f"dataset {name!r} {spec.refuses} and takes no {', '.join(refused)}")
    return spec.load(**given, **({"seed": seed} if spec.seeded else {}), **kw)


def dataset_sources() -> list[tuple[str, str, list[str]]]:
    """For each dataset: (name, description, places it looks for files, in order)."""
    return [(name, spec.description, spec.sources()) for name, spec in DATASETS.items()]
