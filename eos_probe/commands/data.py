"""`eos-probe data`: list the datasets, download CIFAR-10 / Fashion-MNIST once, rebuild the embedded subset."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError


@click.group("data")
def command() -> None:
    """Datasets: where they are read from, one-time downloads, the embedded Fashion-MNIST subset."""


@command.command("list")
def list_command() -> None:
    """List the datasets and the places each one is read from, in order (first found wins)."""
    from ..data import dataset_sources

    for name, description, places in dataset_sources():
        click.echo(f"{name}\n  {description}")
        for place in places:
            path = Path(place.split(" (from $")[0])
            mark = "found" if path.exists() else "absent"
            click.echo(f"  - {place}" + ("" if name == "sort" else f"  [{mark}]"))


@command.command("download")
@click.argument("name", type=click.Choice(["cifar10", "fashion-mnist"]))
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Directory to put the data in (default: the cache directory the loader searches, "
                   "see `eos-probe data list`).")
@click.option("--url", default=None,
              help="Mirror: the archive URL (cifar10) or the base URL of the four .gz files (fashion-mnist).")
@click.option("--checksum", "checksums", multiple=True, metavar="HEX | FILE=HEX",
              help="Expected md5/sha256 instead of the official one (cifar10: HEX; fashion-mnist: FILE=HEX, "
                   "repeatable).")
@click.option("--force", is_flag=True, help="Download again even if the data is already present.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def download_command(name: str, dest: str | None, url: str | None, checksums: tuple[str, ...],
                     force: bool, quiet: bool) -> None:
    """Download NAME once and verify it against the published checksums."""
    from ..data.download import download

    checksum: str | dict[str, str] | None = None
    if checksums:
        if name == "cifar10":
            if len(checksums) != 1 or "=" in checksums[0]:
                raise UserError("cifar10 takes one --checksum HEX (the archive's md5 or sha256)")
            checksum = checksums[0]
        else:
            bad = [c for c in checksums if "=" not in c]
            if bad:
                raise UserError(f"fashion-mnist checksums are FILE=HEX, got {bad[0]!r}")
            checksum = dict(c.split("=", 1) for c in checksums)
    path = download(name, dest, url=url, checksum=checksum, force=force, progress=not quiet,
                    log=lambda msg: click.echo(msg, err=True))
    click.echo(str(path))


@command.command("make-embedded")
@click.option("--source", type=click.Path(file_okay=False), default=None,
              help="Directory with the Fashion-MNIST IDX files (default: $EOS_PROBE_FASHION_DIR, then "
                   "/usr/share/datasets/fashion-mnist).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the file (default: the committed data/fashion4.npz).")
@click.option("--check", is_flag=True,
              help="Do not write: rebuild in memory and verify the committed file is reproduced byte for byte.")
@click.pass_context
def make_embedded_command(ctx: click.Context, source: str | None, out: str | None, check: bool) -> None:
    """Build data/fashion4.npz from the full Fashion-MNIST files (deterministic, see data/README.md)."""
    from ..data import embedded, fashion

    if check:
        ok, report = embedded.check_embedded(out, source)
        click.echo(report, err=not ok)
        if not ok:
            ctx.exit(1)
        return
    target = out if out is not None else fashion.embedded_candidates()[0]
    info = embedded.build_embedded(target, source)
    click.echo(f"wrote {info['path']}: {info['bytes']} bytes, sha256 {info['sha256']}")
    if not info["matches_recorded"]:
        click.echo(
            "note: this differs from EMBEDDED_SHA256 in eos_probe/data/fashion.py; update it and "
            "data/README.md if the new file is meant to replace the committed one",
            err=True,
        )
