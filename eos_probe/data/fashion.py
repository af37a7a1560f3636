"""Fashion-MNIST: the embedded ``fashion4`` subset and subsets of the full IDX files.

``fashion4`` is docs/theory.md §6's reference recipe on Fashion-MNIST, shipped as ``data/fashion4.npz``:
classes 0-3 (T-shirt/top, Trouser, Pullover, Dress), the first 250 training images of each in dataset
order (1,000), and all 4,000 test images of those classes, as raw uint8 pixels. The file is written
byte-for-byte reproducibly by `eos_probe.data.embedded.build_embedded` (``scripts/make_embedded_data.py``) and verified
against :data:`EMBEDDED_SHA256` every time it is loaded.

Fashion-MNIST is (c) 2017 Zalando SE, MIT licence, https://github.com/zalandoresearch/fashion-mnist.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import sys
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from .dataset import Dataset, cache_dir, check_extra_kw, positive_int
from .images import (DEFAULT_CLASSES, DEFAULT_N_PER_CLASS, channel_stats, first_per_class, make_image_dataset,
                     resolve_classes)

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SOURCE = "Fashion-MNIST (Zalando Research), https://github.com/zalandoresearch/fashion-mnist"
LICENCE = "MIT, Copyright (c) 2017 Zalando SE"

ENV_DIR = "EOS_PROBE_FASHION_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: official download location (README of the upstream repository)
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

#: the four files, by role
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: md5 of the official .gz files as published in the upstream README (what a download must match)
GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
#: sha256 of the *decompressed* IDX content, computed from the Debian package (which recompresses the
#: upstream files, so its .gz md5s differ from GZ_MD5 while the content is the same dataset)
IDX_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

EMBEDDED_NAME = "fashion4.npz"
#: sha256 of the committed data/fashion4.npz; rebuild with `eos-probe data make-embedded`
EMBEDDED_SHA256 = "3914e8d2ef5e6b5b23760b62113695a9b368f97ab09219384ff951b45e99ff79"
EMBEDDED_CLASSES = DEFAULT_CLASSES
EMBEDDED_N_PER_CLASS = DEFAULT_N_PER_CLASS
EMBEDDED_RULE = (
    "training: for each class 0,1,2,3 the first 250 images of train-images-idx3-ubyte in file order, "
    "stored in file order (classes interleaved); test: every image of classes 0-3 in "
    "t10k-images-idx3-ubyte (1,000 each), in file order; raw uint8 pixels, original labels, and the "
    "indices into the original files (train_index, test_index)"
)
_EMBEDDED_KEYS = ("x_train", "y_train", "x_test", "y_test", "train_index", "test_index")


# --------------------------------------------------------------------------------------------------
# IDX files


def read_idx(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Parse an IDX file of unsigned bytes (gzip-compressed if the name ends in .gz).

    Returns the array and the sha256 of the decompressed content. A damaged file raises UserError.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"missing Fashion-MNIST file {path}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path} ({e}); the file is damaged, download it again") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] == 0:
        raise UserError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated (header cut short)")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise UserError(f"{path} is truncated or damaged: {len(raw)} bytes, the header promises {expected}")
    arr = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    return arr, hashlib.sha256(raw).hexdigest()


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def has_fashion_files(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds all four IDX files (gzipped or not)."""
    d = Path(directory)
    return d.is_dir() and all(_find_file(d, stem) for stem in FILES.values())


def fashion_search_path() -> list[str]:
    """Where ``fashion-mnist`` looks when no data_dir is given, in order."""
    if os.environ.get(ENV_DIR):  # an explicit setting replaces the defaults
        return [f"{os.environ[ENV_DIR]} (from ${ENV_DIR})"]
    return [str(DEBIAN_DIR), str(cache_dir() / "fashion-mnist")]


def resolve_fashion_dir(data_dir: str | os.PathLike | None) -> Path:
    """The directory to read: data_dir if given, else $EOS_PROBE_FASHION_DIR, else the first default that
    has the files. A directory that was named explicitly but lacks the files is an error, not skipped."""
    if data_dir is not None:
        named, how = [Path(data_dir).expanduser()], "data_dir"
    elif os.environ.get(ENV_DIR):
        named, how = [Path(os.environ[ENV_DIR]).expanduser()], f"${ENV_DIR}"
    else:
        named, how = [DEBIAN_DIR, cache_dir() / "fashion-mnist"], None
    for d in named:
        if has_fashion_files(d):
            return d
    if how is not None:
        d = named[0]
        if not d.is_dir():
            raise UserError(f"Fashion-MNIST directory {d} (from {how}) does not exist")
        missing = [s for s in FILES.values() if _find_file(d, s) is None]
        raise UserError(
            f"Fashion-MNIST directory {d} (from {how}) lacks {', '.join(m + '[.gz]' for m in missing)}; "
            "run `eos-probe data download fashion-mnist --dest DIR`"
        )
    raise UserError(
        f"Fashion-MNIST files not found in {' or '.join(map(str, named))}; install the Debian package "
        f"dataset-fashion-mnist, run `eos-probe data download fashion-mnist`, or set ${ENV_DIR}"
    )


def read_fashion_dir(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Read and cross-check the four files; returns arrays by role and per-file provenance."""
    arrays, files = {}, {}
    for role, stem in FILES.items():
        path = _find_file(directory, stem)
        if path is None:
            raise UserError(f"missing Fashion-MNIST file {directory / stem}[.gz]")
        arr, digest = read_idx(path)
        want_ndim = 3 if role.endswith("images") else 1
        if arr.ndim != want_ndim or (want_ndim == 3 and arr.shape[1:] != (28, 28)):
            raise UserError(f"{path} has shape {arr.shape}; expected Fashion-MNIST {role.replace('_', ' ')}")
        arrays[role] = arr
        files[path.name] = {"content_sha256": digest, "matches_reference": digest == IDX_SHA256[stem]}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise UserError(f"Fashion-MNIST {split} files disagree: {n_img} images but {n_lab} labels")
        if n_lab and arrays[f"{split}_labels"].max() >= len(CLASS_NAMES):
            raise UserError(f"Fashion-MNIST {split} labels outside 0..9 in {directory}; the file is damaged")
    return arrays, files


def load_fashion_mnist(
    *,
    data_dir: str | os.PathLike | None = None,
    classes: Sequence[int] | None = None,
    n_per_class: int | None = None,
    n_test_per_class: int | None = None,
    **kw: Any,
) -> Dataset:
    """Subset of the full Fashion-MNIST IDX files (same rule as CIFAR-10 and fashion4).

    Standardisation uses the mean/std of the selected training images, so the defaults reproduce
    ``fashion4`` exactly.
    """
    check_extra_kw("fashion-mnist", kw, ["n_test_per_class"])
    cls = resolve_classes(classes, CLASS_NAMES, "Fashion-MNIST")
    n = positive_int(DEFAULT_N_PER_CLASS if n_per_class is None else n_per_class, "n_per_class")
    n_test = positive_int(n_test_per_class, "n_test_per_class", allow_none=True)
    directory = resolve_fashion_dir(data_dir)
    arrays, files = read_fashion_dir(directory)
    bad = [name for name, info in files.items() if not info["matches_reference"]]
    if bad:
        warnings.warn(
            f"Fashion-MNIST files in {directory} differ from the reference content ({', '.join(bad)}); "
            "results may not be comparable",
            UserWarning,
            stacklevel=3,
        )
    return _subset("fashion-mnist", arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                   arrays["test_labels"], cls, n, n_test,
                   {"source": SOURCE, "licence": LICENCE, "directory": str(directory), "files": files})


def _subset(name: str, x_train, y_train, x_test, y_test, cls, n: int, n_test: int | None, meta: dict,
            extra_meta: dict | None = None) -> Dataset:
    """The first n (n_test) images of each chosen class in file order, standardised by the selected training
    images' mean/std: the one selection rule of both Fashion-MNIST sources."""
    tr = first_per_class(y_train, cls, n, "training")
    te = first_per_class(y_test, cls, n_test, "test")
    x_tr = x_train[tr][:, None]
    mean, std = channel_stats(x_tr)
    selection = (f"training: first {n} images of each chosen class in file order; test: "
                 + ("all images" if n_test is None else f"first {n_test} images")
                 + " of the chosen classes in file order")
    return make_image_dataset(
        name, x_train=x_tr, labels_train=y_train[tr], x_test=x_test[te][:, None], labels_test=y_test[te],
        classes=cls, class_names=CLASS_NAMES, mean=mean, std=std,
        stats_from=f"the {len(tr)} selected training images",
        meta={**meta, "selection": selection, "n_per_class": n, "n_test_per_class": n_test, **(extra_meta or {})},
    )


# --------------------------------------------------------------------------------------------------
# the embedded subset


def embedded_candidates() -> list[Path]:
    """Where the embedded file may live: the repository's data/ (source checkout or editable install),
    then ``<prefix>/share/eos-probe`` (where a wheel would install it)."""
    return [
        Path(__file__).resolve().parents[2] / "data" / EMBEDDED_NAME,
        Path(sys.prefix) / "share" / "eos-probe" / EMBEDDED_NAME,
    ]


def embedded_path() -> Path:
    """The embedded data file (first existing candidate)."""
    for p in embedded_candidates():
        if p.is_file():
            return p
    raise UserError(
        f"embedded data file {EMBEDDED_NAME} not found (looked in {', '.join(map(str, embedded_candidates()))}); "
        "restore it with `git checkout data/fashion4.npz` or rebuild it with `eos-probe data make-embedded`"
    )


def read_embedded(path: str | os.PathLike | None = None, *, verify: bool = True) -> dict[str, np.ndarray]:
    """The raw arrays of the embedded file, after checking its sha256 against :data:`EMBEDDED_SHA256`."""
    path = embedded_path() if path is None else Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read embedded data file {path}: {e.strerror or e}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if verify and digest != EMBEDDED_SHA256:
        raise UserError(
            f"{path} does not match its recorded sha256 (got {digest[:12]}…, expected {EMBEDDED_SHA256[:12]}…); "
            "the file is damaged or was changed: restore it with `git checkout data/fashion4.npz`"
        )
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in _EMBEDDED_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path} is not a valid embedded data file ({e})") from None
    return arrays


def load_fashion4(
    *,
    classes: Sequence[int] | None = None,
    n_per_class: int | None = None,
    n_test_per_class: int | None = None,
    path: str | os.PathLike | None = None,
    **kw: Any,
) -> Dataset:
    """The embedded Fashion-MNIST subset (default dataset). ``classes`` ⊆ {0,1,2,3} and
    ``n_per_class`` ≤ 250 take a smaller subset by the same first-in-file-order rule."""
    check_extra_kw("fashion4", kw, ["n_test_per_class"])
    cls = resolve_classes(classes, CLASS_NAMES, "Fashion-MNIST")
    outside = [c for c in cls if c not in EMBEDDED_CLASSES]
    if outside:
        raise UserError(
            f"fashion4 only holds classes 0-3 (asked for {outside}); use dataset 'fashion-mnist' for others"
        )
    n = positive_int(DEFAULT_N_PER_CLASS if n_per_class is None else n_per_class, "n_per_class")
    if n > EMBEDDED_N_PER_CLASS:
        raise UserError(
            f"fashion4 holds {EMBEDDED_N_PER_CLASS} training images per class (asked for {n}); "
            "use dataset 'fashion-mnist' for more"
        )
    n_test = positive_int(n_test_per_class, "n_test_per_class", allow_none=True)
    arrays = read_embedded(path)
    return _subset("fashion4", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], cls, n, n_test,
                   {"source": SOURCE, "licence": LICENCE, "file": f"data/{EMBEDDED_NAME}", "sha256": EMBEDDED_SHA256,
                    "embedded_rule": EMBEDDED_RULE},
                   {"train_index": "indices into train-images-idx3-ubyte are stored in the file (train_index)"})


#: classes whose images keep the left half in ``fashion4-halves`` (the others keep the right half)
HALVES_LEFT = (0, 1)


def load_fashion4_halves(*, classes: Sequence[int] | None = None, n_per_class: int | None = None,
                         right_scale: float = 3.0, **kw: Any) -> Dataset:
    """``fashion4`` with task-disjoint inputs (docs/continual.md, curvature excess of both signs): classes 0
    and 1 keep the left half of each image (columns 0-13), classes 2 and 3 the right half (14-27) times
    ``right_scale``; the other half is 0, the standardised mean. Task "0,1" then cannot feel the first-layer
    weights that task "2,3" moves, so the new task's gradient can lie where the old loss is flat (e_r < 0).
    The scale makes those weights' share of the gradient large enough: measured on the MLP of
    recipes/forgetting-halves.toml, e_r < 0 at no probe with scale 1 and at most probes with 3."""
    scale = float(right_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise UserError(f"fashion4-halves: right_scale must be a positive number, got {right_scale!r}")
    d = load_fashion4(classes=classes, n_per_class=n_per_class, **kw)
    w = d.x_train.shape[-1]

    def split(x, y):
        x = x.clone()
        left = np.isin(y.numpy(), HALVES_LEFT)
        x[left, ..., w // 2:] = 0.0
        x[~left, ..., : w // 2] = 0.0
        x[~left] *= scale
        return x

    d.x_train, d.x_test = split(d.x_train, d.y_train), split(d.x_test, d.y_test)
    d.name = "fashion4-halves"
    d.meta = {**d.meta, "dataset": "fashion4-halves", "halves": f"classes {list(HALVES_LEFT)}: left half; others: "
              f"right half x {scale:g}; the other half 0", "right_scale": scale}
    return d
