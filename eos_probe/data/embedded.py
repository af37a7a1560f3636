"""Building the embedded ``fashion4`` file byte for byte reproducibly from the full Fashion-MNIST IDX files
(`eos-probe data make-embedded`, ``scripts/make_embedded_data.py``), and checking the committed one."""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .dataset import file_digest
from .fashion import (EMBEDDED_CLASSES, EMBEDDED_N_PER_CLASS, EMBEDDED_SHA256, embedded_path, read_embedded,
                      read_fashion_dir, resolve_fashion_dir)
from .images import first_per_class

#: zip entries carry this timestamp so that rebuilding gives the same bytes
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def embedded_arrays(source_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Select the embedded subset from the full IDX files (which must be the reference content)."""
    directory = resolve_fashion_dir(source_dir)
    arrays, files = read_fashion_dir(directory)
    bad = [name for name, info in files.items() if not info["matches_reference"]]
    if bad:
        raise UserError(
            f"Fashion-MNIST files in {directory} differ from the reference content ({', '.join(bad)}); "
            "refusing to build the embedded subset from them"
        )
    tr = first_per_class(arrays["train_labels"], EMBEDDED_CLASSES, EMBEDDED_N_PER_CLASS, "training")
    te = first_per_class(arrays["test_labels"], EMBEDDED_CLASSES, None, "test")
    return {
        "x_train": arrays["train_images"][tr],
        "y_train": arrays["train_labels"][tr],
        "x_test": arrays["test_images"][te],
        "y_test": arrays["test_labels"][te],
        "train_index": tr.astype("<u2"),
        "test_index": te.astype("<u2"),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A .npz archive (readable by np.load) whose bytes depend only on the arrays.

    np.savez_compressed stamps entries with the current time and cannot use LZMA; here every entry
    has a fixed date, mode and system, and LZMA keeps 1,000 + 4,000 images under 2 MB (deflate: 2.2 MB).
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_LZMA
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zf.writestr(info, buf.getvalue())
    return out.getvalue()


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes: equal contents ⇔ equal digests."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def build_embedded(out: str | os.PathLike, source_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the embedded subset to ``out`` (atomically) and return its size and digests."""
    out = Path(out)
    arrays = embedded_arrays(source_dir)
    blob = npz_bytes(arrays)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": str(out),
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "content_sha256": content_sha256(arrays),
        "matches_recorded": hashlib.sha256(blob).hexdigest() == EMBEDDED_SHA256,
    }


def check_embedded(
    committed: str | os.PathLike | None = None, source_dir: str | os.PathLike | None = None
) -> tuple[bool, str]:
    """Rebuild in memory and compare with the committed file; returns (reproduced, one-line report)."""
    committed = embedded_path() if committed is None else Path(committed)
    blob = npz_bytes(embedded_arrays(source_dir))
    new = hashlib.sha256(blob).hexdigest()
    old = file_digest(committed)
    if new == old == EMBEDDED_SHA256:
        return True, f"{committed} reproduced byte for byte (sha256 {new}, {len(blob)} bytes)"
    if new == old:
        return False, f"{committed} is reproduced but EMBEDDED_SHA256 in fashion.py is stale: set it to {new}"
    try:
        same_content = content_sha256(read_embedded(committed, verify=False)) == content_sha256(
            embedded_arrays(source_dir)
        )
    except UserError:
        same_content = False
    why = (
        "same arrays, different compressed bytes (another liblzma/numpy version?)"
        if same_content
        else "the arrays differ"
    )
    return False, f"{committed} is NOT reproduced: sha256 {old[:12]}… vs rebuilt {new[:12]}… — {why}"
