#!/usr/bin/env python
"""Run the gallery recipes (recipes/paper/*.toml) and write figures/: PNG + PDF per recipe, README.md, gallery.json.

    python scripts/make_figures.py                      # every recipe; finished run files are skipped
    python scripts/make_figures.py --only zo-gd-cnn     # one figure
    python scripts/make_figures.py --no-train           # redraw from the run files already there
    python scripts/make_figures.py --device cuda        # on a GPU (each recipe's comments give its paper scale)

Runs go to runs/paper/<recipe>/ (one file per point, the sweep driver's idempotent re-runs: finished and
diverged files are skipped, killed ones resumed). Numbers in figures/README.md are read from those files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from eos_probe.errors import EosProbeError
    from eos_probe.gallery import make_gallery

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe_dir", nargs="?", default="recipes/paper", help="directory of recipe TOML files")
    ap.add_argument("--runs", default="runs/paper", help="where the run files go (one folder per recipe)")
    ap.add_argument("--out", default="figures", help="where the figures, README.md and gallery.json go")
    ap.add_argument("--only", action="append", help="recipe name (file stem); repeat for several")
    ap.add_argument("--workers", type=int, default=None, help="parallel sweep workers (default: automatic)")
    ap.add_argument("--no-train", action="store_true", help="only draw from existing run files")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                    help="device of every run (default: the recipes' own, i.e. auto: CUDA when present)")
    a = ap.parse_args(argv)
    try:
        make_gallery(a.recipe_dir, a.runs, a.out, only=a.only, workers=a.workers, train=not a.no_train,
                     device=a.device)
    except EosProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished run files are kept; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
