#!/usr/bin/env python
"""Build data/fashion4.npz (docs/theory.md §6 recipe on Fashion-MNIST) from the full IDX files.

    python scripts/make_embedded_data.py            # rewrite data/fashion4.npz
    python scripts/make_embedded_data.py --check    # verify the committed file is reproduced exactly
    python scripts/make_embedded_data.py --out /tmp/f4.npz --source DIR

The selection rule and the byte-level determinism live in eos_probe/data/embedded.py (build_embedded),
which `eos-probe data make-embedded` calls too; data/README.md records provenance and the checksum.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from eos_probe.data import embedded, fashion  # noqa: E402
from eos_probe.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="directory with the Fashion-MNIST IDX .gz files")
    parser.add_argument("--out", default=None, help="output file (default: data/fashion4.npz)")
    parser.add_argument("--check", action="store_true", help="verify the committed file instead of writing")
    args = parser.parse_args(argv)
    try:
        if args.check:
            ok, report = embedded.check_embedded(args.out, args.source)
            print(report, file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
        out = args.out or fashion.embedded_candidates()[0]
        info = embedded.build_embedded(out, args.source)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['path']}: {info['bytes']} bytes, sha256 {info['sha256']}")
    if not info["matches_recorded"]:
        print("note: differs from EMBEDDED_SHA256 in eos_probe/data/fashion.py; update it and data/README.md",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
