"""One-time downloads of CIFAR-10 and Fashion-MNIST (``eos-probe data download``).

Training never downloads; this module fetches the official files once, checks them against the
published checksums, and puts them where the loaders look. Every file is written under a temporary
name in the destination and renamed only after its checksum matched, so an interrupted or corrupt
download leaves nothing behind that a loader could mistake for data.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

from ..errors import UserError
from .dataset import cache_dir, file_digest
from . import cifar, fashion

#: datasets that can be downloaded
DOWNLOADABLE = ("cifar10", "fashion-mnist")
_CHUNK = 1 << 16


def default_dest(name: str) -> Path:
    """Default destination: the directory the loader searches last (so a plain download just works)."""
    _check_name(name)
    return cache_dir() if name == "cifar10" else cache_dir() / "fashion-mnist"


def _check_name(name: str) -> None:
    if name not in DOWNLOADABLE:
        raise UserError(f"cannot download {name!r}; downloadable datasets: {', '.join(DOWNLOADABLE)}")


def _algorithm(checksum: str) -> str:
    """md5 or sha256, told apart by length."""
    if not re.fullmatch(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}", checksum or ""):
        raise UserError(f"checksum {checksum!r} is neither an md5 (32 hex digits) nor a sha256 (64 hex digits)")
    return "md5" if len(checksum) == 32 else "sha256"


def fetch(
    url: str, target: str | os.PathLike, *, checksum: str, progress: bool = True, timeout: float = 60.0
) -> str:
    """Download ``url`` to ``target`` if and only if its md5/sha256 equals ``checksum``.

    The bytes go to a hidden ``.part`` file next to ``target`` and are renamed over it after the check;
    on any failure the partial file is removed and UserError says what went wrong. Returns the digest.
    """
    algo = _algorithm(checksum)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    h = hashlib.new(algo)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                from tqdm.auto import tqdm

                request = urllib.request.Request(url, headers={"User-Agent": "eos-probe"})
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    size = resp.headers.get("Content-Length")
                    total = int(size) if size and size.isdigit() else None
                    with tqdm(
                        total=total, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=target.name, disable=not progress, leave=False,
                    ) as bar:
                        while chunk := resp.read(_CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            bar.update(len(chunk))
            except urllib.error.HTTPError as e:
                raise UserError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
            except urllib.error.URLError as e:
                raise UserError(
                    f"download of {url} failed ({e.reason}); check the network, or pass --url to a mirror"
                ) from None
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise UserError(f"download of {url} failed ({type(e).__name__}: {e})") from None
        digest = h.hexdigest()
        if digest != checksum.lower():
            raise UserError(
                f"checksum mismatch for {url}: {algo} {digest}, expected {checksum.lower()}; "
                "the download is corrupt or not the expected file, nothing was kept"
            )
        os.replace(tmp, target)
        return digest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _extract_cifar(archive: Path, out: Path) -> Path:
    """Unpack the ``cifar-10-batches-py/`` members of ``archive`` into ``out``; return that folder."""
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = []
            for m in tf.getmembers():
                parts = PurePosixPath(m.name).parts
                safe = parts and parts[0] == cifar.BASE_FOLDER and ".." not in parts and not m.name.startswith("/")
                if safe and (m.isfile() or m.isdir()):
                    members.append(m)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(out, members=members, filter="data")
            else:  # older pythons: the members were vetted above
                tf.extractall(out, members=members)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise UserError(f"cannot unpack {archive.name} ({e}); the archive is damaged") from None
    folder = out / cifar.BASE_FOLDER
    missing = [f for f in cifar.FILE_MD5 if not (folder / f).is_file()]
    if missing:
        raise UserError(f"the archive lacks {cifar.BASE_FOLDER}/{', '.join(missing)}; it is not CIFAR-10 (python)")
    return folder


def _cifar_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in cifar.FILE_MD5)


def download(
    name: str,
    dest: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    checksum: str | Mapping[str, str] | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Fetch ``name`` ('cifar10' or 'fashion-mnist') into ``dest`` and return the data directory.

    cifar10: ``url`` is the archive (default the official tarball), ``checksum`` its md5/sha256; the
    result is ``dest/cifar-10-batches-py``. fashion-mnist: ``url`` is the base the four ``*.gz`` file
    names are appended to, ``checksum`` maps file names to md5/sha256 (others keep the official md5);
    the files land directly in ``dest``. Data already present is kept unless ``force``.
    """
    _check_name(name)
    dest = Path(dest).expanduser() if dest is not None else default_dest(name)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"destination {dest} exists and is not a directory")
    if name == "cifar10":
        return _download_cifar(dest, url, checksum, force, progress, timeout, log)
    return _download_fashion(dest, url, checksum, force, progress, timeout, log)


def _download_cifar(dest, url, checksum, force, progress, timeout, log) -> Path:
    if checksum is not None and not isinstance(checksum, str):
        raise UserError("cifar10 is one archive: give a single checksum (md5 or sha256 hex)")
    final = dest / cifar.BASE_FOLDER
    if _cifar_complete(final) and not force:
        log(f"CIFAR-10 already present in {final} (use --force to download again)")
        return final
    url = url or cifar.URL
    dest.mkdir(parents=True, exist_ok=True)
    # work inside dest so that the final rename stays on one file system
    with tempfile.TemporaryDirectory(prefix=".eos-probe-cifar-", dir=dest) as work:
        archive = Path(work) / "cifar-10-python.tar.gz"
        fetch(url, archive, checksum=checksum or cifar.ARCHIVE_MD5, progress=progress, timeout=timeout)
        folder = _extract_cifar(archive, Path(work) / "unpacked")
        if final.exists():
            final.rename(Path(work) / "previous")  # removed with the temporary directory
        folder.rename(final)
    log(f"CIFAR-10 ready in {final}")
    return final


def _download_fashion(dest, url, checksum, force, progress, timeout, log) -> Path:
    sums = dict(fashion.GZ_MD5)
    if checksum is not None:
        if isinstance(checksum, str):
            raise UserError(
                "fashion-mnist has four files: give checksums as FILE=HEX, FILE one of " + ", ".join(sums)
            )
        unknown = sorted(set(checksum) - set(sums))
        if unknown:
            raise UserError(f"no Fashion-MNIST file named {', '.join(unknown)}; files: {', '.join(sums)}")
        sums.update(checksum)
    base = (url or fashion.URL).rstrip("/") + "/"
    dest.mkdir(parents=True, exist_ok=True)
    for fname, expected in sums.items():
        target = dest / fname
        if not force and target.is_file() and file_digest(target, _algorithm(expected)) == expected.lower():
            log(f"{fname} already present and verified")
            continue
        fetch(base + fname, target, checksum=expected, progress=progress, timeout=timeout)
        log(f"{fname} downloaded and verified")
    log(f"Fashion-MNIST ready in {dest}")
    return dest

