"""CIFAR-10 from the standard python-pickle directory ``cifar-10-batches-py`` (docs/theory.md §6 setup).

The subset is the first ``n_per_class`` training images of each chosen class in dataset order
(data_batch_1, then 2, ...), all test images of those classes, labels re-indexed to 0..k-1 in the
order of ``classes``, and the usual fixed per-channel standardisation of [0, 1] pixels.

The batches are python pickles. They are read with an unpickler that only admits the numpy names an
array needs, so a tampered file cannot run code.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from .dataset import Dataset, cache_dir, check_extra_kw, file_digest, positive_int
from .images import DEFAULT_N_PER_CLASS, first_per_class, make_image_dataset, resolve_classes

ENV_DIR = "EOS_PROBE_CIFAR_DIR"
BASE_FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
SOURCE = "CIFAR-10 (Krizhevsky 2009), https://www.cs.toronto.edu/~kriz/cifar.html"
LICENCE = "no licence stated by the authors; cite Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009"
#: md5 of each file of the official archive (as listed by the authors' mirrors and torchvision)
FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
#: docs/theory.md §6: per-channel statistics of the CIFAR-10 training set on [0, 1] pixels
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays (py2 and py3 pickles)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core."):  # numpy 2 renamed numpy.core; skip its deprecation shim
            try:
                return super().find_class("numpy._core." + module[len("numpy.core."):], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"missing CIFAR-10 file {path}; run `eos-probe data download cifar10`") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise UserError(f"cannot read CIFAR-10 file {path} ({e}); the file is damaged, download it again") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR-10 file {path} does not hold a dict; the file is damaged or not CIFAR-10")
    # py2 pickles read with latin1 give str keys; files written from python 3 may use bytes keys
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _get(d: dict, key: str, path: Path) -> Any:
    if key not in d:
        raise UserError(f"CIFAR-10 file {path} has no {key!r} entry; the file is damaged or not CIFAR-10")
    return d[key]


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 images (n, 3, 32, 32), int64 labels (n,))."""
    d = _unpickle(path)
    data = np.asarray(_get(d, "data", path))
    labels = np.asarray(_get(d, "labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"CIFAR-10 file {path}: 'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
    if labels.shape != (data.shape[0],):
        raise UserError(f"CIFAR-10 file {path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise UserError(f"CIFAR-10 file {path}: labels outside 0..9")
    # each row is 1024 red, 1024 green, 1024 blue values, row-major 32x32
    return data.reshape(-1, 3, 32, 32), labels


def read_label_names(directory: Path) -> list[str]:
    """The ten class names from batches.meta."""
    path = directory / "batches.meta"
    names = _get(_unpickle(path), "label_names", path)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) != NUM_CLASSES:
        raise UserError(f"CIFAR-10 file {path} lists {len(names)} class names, expected {NUM_CLASSES}")
    return names


def _batches_dir(d: Path) -> Path | None:
    """``d`` itself or ``d/cifar-10-batches-py``, whichever holds the batches."""
    for cand in (d, d / BASE_FOLDER):
        if (cand / "batches.meta").is_file() or (cand / "test_batch").is_file():
            return cand
    return None


def cifar_search_path() -> list[str]:
    """Where ``cifar10`` looks when no data_dir is given, in order."""
    if os.environ.get(ENV_DIR):  # an explicit setting replaces the default
        return [f"{os.environ[ENV_DIR]} (from ${ENV_DIR})"]
    return [str(cache_dir() / BASE_FOLDER)]


def resolve_cifar_dir(data_dir: str | os.PathLike | None) -> Path:
    """The cifar-10-batches-py directory: data_dir (the directory or its parent), else $EOS_PROBE_CIFAR_DIR,
    else the download cache."""
    if data_dir is not None:
        d, how = Path(data_dir).expanduser(), "data_dir"
    elif os.environ.get(ENV_DIR):
        d, how = Path(os.environ[ENV_DIR]).expanduser(), f"${ENV_DIR}"
    else:
        d, how = cache_dir(), "the download cache"
    if not d.is_dir():
        raise UserError(
            f"CIFAR-10 directory {d} ({how}) does not exist; run `eos-probe data download cifar10` "
            f"or point data_dir / ${ENV_DIR} at a {BASE_FOLDER} directory"
        )
    found = _batches_dir(d)
    if found is None:
        raise UserError(
            f"no CIFAR-10 batches in {d} ({how}): expected {BASE_FOLDER}/ with data_batch_1..5, test_batch, "
            "batches.meta; run `eos-probe data download cifar10`"
        )
    return found


def _read_training(directory: Path, cls: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The training batches in order, read only until every class has its n images: (x, y, batches read)."""
    xs, ys, used = [], [], []
    for batch in TRAIN_BATCHES:
        x, y = read_batch(directory / batch)
        xs.append(x)
        ys.append(y)
        used.append(batch)
        counts = np.bincount(np.concatenate(ys), minlength=NUM_CLASSES)
        if all(counts[c] >= n for c in cls):
            break
    return np.concatenate(xs), np.concatenate(ys), used


def _checked_files(directory: Path, names: list[str]) -> dict[str, dict]:
    """md5 of each file read, against the official release's; a warning names those that differ."""
    files = {}
    for fname in names:
        digest = file_digest(directory / fname, "md5")
        files[fname] = {"md5": digest, "matches_official": digest == FILE_MD5[fname]}
    bad = [f for f, info in files.items() if not info["matches_official"]]
    if bad:
        warnings.warn(f"CIFAR-10 files in {directory} differ from the official release ({', '.join(bad)}); "
                      "results may not be comparable", UserWarning, stacklevel=4)
    return files


def load_cifar10(
    *,
    data_dir: str | os.PathLike | None = None,
    classes: Sequence[int] | None = None,
    n_per_class: int | None = None,
    n_test_per_class: int | None = None,
    **kw: Any,
) -> Dataset:
    """CIFAR-10 subset, docs/theory.md §6 defaults: classes 0..3, 250 training images each, all their test
    images, standardised with the fixed CIFAR-10 mean/std."""
    check_extra_kw("cifar10", kw, ["n_test_per_class"])
    directory = resolve_cifar_dir(data_dir)
    names = read_label_names(directory)
    cls = resolve_classes(classes, names, "CIFAR-10")
    n = positive_int(DEFAULT_N_PER_CLASS if n_per_class is None else n_per_class, "n_per_class")
    n_test = positive_int(n_test_per_class, "n_test_per_class", allow_none=True)

    x_all, y_all, used = _read_training(directory, cls, n)
    tr = first_per_class(y_all, cls, n, "training")
    x_test_all, y_test_all = read_batch(directory / "test_batch")
    te = first_per_class(y_test_all, cls, n_test, "test")
    files = _checked_files(directory, [*used, "test_batch", "batches.meta"])
    return make_image_dataset(
        "cifar10",
        x_train=x_all[tr],
        labels_train=y_all[tr],
        x_test=x_test_all[te],
        labels_test=y_test_all[te],
        classes=cls,
        class_names=names,
        mean=MEAN,
        std=STD,
        stats_from="fixed CIFAR-10 training-set statistics (docs/theory.md §6)",
        meta={
            "source": SOURCE,
            "licence": LICENCE,
            "directory": str(directory),
            "files": files,
            "selection": (
                f"training: first {n} images of each chosen class in dataset order "
                "(data_batch_1..5 concatenated); test: "
                + ("all images" if n_test is None else f"first {n_test} images")
                + " of the chosen classes in test_batch"
            ),
            "n_per_class": n,
            "n_test_per_class": n_test,
            "batches_read": used,
        },
    )
